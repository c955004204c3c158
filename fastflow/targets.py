"""Denoiser targets with a reference batch: PFGM++ (Xu et al. 2023) and STF (Xu et al. 2023, stable target field)."""
from __future__ import annotations

import math

import torch

from . import _validate as V
from .families import Gaussian, Poisson


def pfgmpp_target(x, sigma, ref, *, D, backend=None, precision="ieee", chunk_size=None) -> torch.Tensor:
    """PFGM++ target: the posterior mean xbar under Poisson(D) weights at radius r = sigma * sqrt(D).

    Args:
        x: (B, *shape) perturbed points.  sigma: float or (B,) tensor > 0 (EDM's sigma = r / sqrt(D)).
        ref: (R, *shape) reference batch.  D: augmented dimensions (>= 1).

    Returns:
        (B, *shape) xbar, the regression target of a denoiser network trained on x0.
    """
    fam = Poisson(D=D)
    if isinstance(sigma, torch.Tensor):
        r = sigma * math.sqrt(D)
    else:
        V.times("sigma", sigma, 1, dtype=torch.float64, device=torch.device("cpu"))
        r = float(sigma) * math.sqrt(D)
    return fam.posterior_mean(x, r, ref, backend=backend, precision=precision, chunk_size=chunk_size)


def stf_target(x, sigma, ref, *, backend=None, precision="ieee", chunk_size=None) -> torch.Tensor:
    """STF target: the posterior mean xbar under Gaussian weights exp(-||x - ref_j||^2 / (2 sigma^2)).

    Args:
        x: (B, *shape) perturbed points.  sigma: float or (B,) tensor > 0.  ref: (R, *shape) reference batch.

    Returns:
        (B, *shape) xbar.
    """
    return Gaussian().posterior_mean(x, sigma, ref, backend=backend, precision=precision, chunk_size=chunk_size)
