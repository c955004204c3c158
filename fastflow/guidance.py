"""Classifier-free guidance (Ho & Salimans 2022) for any model a fastflow sampler integrates: :func:`guided`."""
from __future__ import annotations

import numbers
from collections.abc import Callable

import torch

__all__ = ["guided"]


def guided(model: Callable[..., torch.Tensor], scale: float, null_kwargs: dict) -> Callable[..., torch.Tensor]:
    """The classifier-free-guided model v_u + w (v_c - v_u), in one call of ``model`` on a doubled batch.

    ``guided(model, w, null_kwargs)(x, t, **kwargs)`` calls ``model(cat(x, x), cat(t, t), **doubled)`` once, where
    each key of ``null_kwargs`` takes the conditional value ``kwargs[key]`` in the first half and the null value
    (broadcast to its shape: e.g. a 0-d "no label" class, or an all-zero conditioning image) in the second; other
    per-sample tensors (first dimension n) are repeated, other values passed as they are. v_c is the first half of
    the output, v_u the second. w = 1 is the conditional model, w = 0 the unconditional one. Use it as the model
    of any sampler, with the conditions in the sampler's ``model_kwargs``; with ``fastflow.Oracle(fam, ref,
    labels=...)`` and ``null_kwargs={"labels": -1}`` it is the exact guided field. Works for models returning a
    tensor or a tuple of tensors (PFGM's (v_x, v_z)), each guided alike.

    Args:
        model: ``model(x, t, **kwargs)`` -> (n, ...) or a tuple of such.
        scale: the guidance weight w (a real number).
        null_kwargs: the unconditional inputs, one entry per conditioning keyword (non-empty).

    Returns:
        a callable ``(x, t, **kwargs)`` with the model's signature.
    """
    if not callable(model):
        raise TypeError(f"model must be callable as model(x, t, **kwargs), got {type(model).__name__}")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number (the guidance weight w), got {type(scale).__name__}")
    if not null_kwargs or not isinstance(null_kwargs, dict):
        raise ValueError("null_kwargs must be a non-empty dict of the unconditional inputs (e.g. {'labels': -1}): "
                         "guidance mixes a conditional and an unconditional evaluation")
    w = float(scale)
    null = dict(null_kwargs)

    def guided_model(x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        n = x.shape[0]
        missing = [k for k in null if k not in kwargs]
        if missing:
            raise ValueError(f"guided model called without the conditions {missing} of null_kwargs: pass them in "
                             "the sampler's model_kwargs")
        doubled = {}
        for k, v in kwargs.items():
            if k in null:
                v = torch.as_tensor(v, device=x.device)
                v = v.expand(n) if v.dim() == 0 else v
                nv = torch.broadcast_to(torch.as_tensor(null[k], dtype=v.dtype, device=v.device), v.shape)
                doubled[k] = torch.cat((v, nv))
            elif isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == n:
                doubled[k] = torch.cat((v, v))
            else:
                doubled[k] = v
        tt = t if isinstance(t, torch.Tensor) and t.dim() == 1 else torch.as_tensor(t, device=x.device).expand(n)
        out = model(torch.cat((x, x)), torch.cat((tt, tt)), **doubled)

        def mix(o):
            vc, vu = o[:n], o[n:]
            return vu + w * (vc - vu)

        return tuple(mix(o) for o in out) if isinstance(out, (tuple, list)) else mix(out)

    return guided_model
