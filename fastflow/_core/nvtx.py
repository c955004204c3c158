"""NVTX ranges around fastflow's public operations, for Nsight Systems users (domain ``fastflow``).

The ``nvtx`` package is optional: without it (or with ``FASTFLOW_NVTX=0``) a decorated function only pays one
attribute check a call. Under ``torch.compile`` the ranges are skipped, so that the traced graph stays whole
(``fullgraph=True``). Use::

    nsys profile -t cuda,nvtx python train.py          # ranges named fastflow.pfgm.target, fastflow.odeint, ...
"""
from __future__ import annotations

import functools

import torch

from . import config

DOMAIN = "fastflow"


def _load():
    if not config.nvtx():
        return None
    try:
        import nvtx
    except ImportError:
        return None
    return nvtx


#: the nvtx module, or None (ranges off); tests may swap in a recorder with an ``annotate(message, domain=)``
module = _load()


def annotate(name: str):
    """Decorator: run the function inside the NVTX range ``name`` when nvtx is available."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            mod = module
            if mod is None or torch.compiler.is_compiling():
                return fn(*args, **kwargs)
            with mod.annotate(name, domain=DOMAIN):
                return fn(*args, **kwargs)

        return wrapped

    return deco
