"""Denoiser targets with a reference batch: PFGM++ (Xu et al. 2023) and STF (Xu et al. 2023, stable target field)."""
from __future__ import annotations

import math

import torch

from ._core import nvtx
from ._core import validate as V
from ._core.types import Time
from .families import Gaussian, Poisson
from .field import evaluate


def _sigma(sigma, x):
    """sigma checked under its own name: a float, or a (B,) tensor in float64 (scaled by sqrt(D) next)."""
    B = x.shape[0] if isinstance(x, torch.Tensor) and x.dim() >= 1 else 1
    device = x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
    s = V.times("sigma", sigma, B, dtype=torch.float64, device=device)
    return s if isinstance(sigma, torch.Tensor) else float(sigma)


@nvtx.annotate("fastflow.pfgmpp_target")
@V.checked
def pfgmpp_target(x: torch.Tensor, sigma: Time, ref: torch.Tensor, *, D: float, backend: str | None = None,
                  precision: str = "ieee", chunk_size: int | None = None) -> torch.Tensor:
    """PFGM++ target: the posterior mean xbar under Poisson(D) weights at radius r = sigma * sqrt(D).

    Args:
        x: (B, *shape) perturbed points.  sigma: float or (B,) tensor > 0 (EDM's sigma = r / sqrt(D)).
        ref: (R, *shape) reference batch.  D: augmented dimensions (>= 1).

    Returns:
        (B, *shape) xbar, the regression target of a denoiser network trained on x0; differentiable in x, sigma
        and ref (streamed backward, :mod:`fastflow.field.autograd`).
    """
    res = evaluate(Poisson(D=D), x, _sigma(sigma, x) * math.sqrt(D), ref, t_name="sigma * sqrt(D)",
                   backend=backend, precision=precision, chunk_size=chunk_size)
    return res.output(res.xbar)


@nvtx.annotate("fastflow.stf_target")
@V.checked
def stf_target(x: torch.Tensor, sigma: Time, ref: torch.Tensor, *, backend: str | None = None,
               precision: str = "ieee", chunk_size: int | None = None) -> torch.Tensor:
    """STF target: the posterior mean xbar under Gaussian weights exp(-||x - ref_j||^2 / (2 sigma^2)).

    Args:
        x: (B, *shape) perturbed points.  sigma: float or (B,) tensor > 0.  ref: (R, *shape) reference batch.

    Returns:
        (B, *shape) xbar; differentiable in x, sigma and ref (as :func:`pfgmpp_target`).
    """
    res = evaluate(Gaussian(), x, sigma, ref, t_name="sigma", backend=backend, precision=precision,
                   chunk_size=chunk_size)
    return res.output(res.xbar)
