"""What a training loop draws besides the data: training times, and the matching loss weights.

- :func:`timesteps`: n training times, "uniform" on (0, 1), "logit_normal" (SD3's t = sigmoid(N(mean, std))), or
  "lognormal" (EDM's sigma = exp(N(P_mean, P_std)), a noise level in (0, inf), not a time in (0, 1)).
- :func:`edm_loss_weight`: EDM's lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.
- :func:`logit_normal_weight`: the logit-normal density, the weight that makes a loss over uniform t equal in
  expectation to one over logit-normal t.
"""
from __future__ import annotations

import math

import torch

from ._core import validate as V
from ._core.types import DeviceLike

__all__ = ["timesteps", "TIMESTEP_KINDS", "edm_loss_weight", "logit_normal_weight"]

TIMESTEP_KINDS = ("uniform", "logit_normal", "lognormal")


def timesteps(n: int, kind: str = "uniform", *, mean: float = 0.0, std: float = 1.0, P_mean: float = -1.2,
              P_std: float = 1.2, generator: torch.Generator | None = None, device: DeviceLike = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """n training times of the given law, drawn in float64 and rounded once to ``dtype``.

    Args:
        n: how many (>= 0).
        kind: "uniform": t ~ U(0, 1), never exactly 0 or 1 (U is drawn on the open interval);
            "logit_normal": t = sigmoid(mean + std g), g ~ N(0, 1) (Esser et al. 2024, SD3);
            "lognormal": EDM's noise level sigma = exp(P_mean + P_std g) (Karras et al. 2022), > 0.
        mean, std: the logit-normal's parameters (std > 0).  P_mean, P_std: the lognormal's (P_std > 0).
        generator: a torch.Generator on ``device``, or None.  device: None: the generator's, else the default.
        dtype: a floating dtype (float64 keeps every drawn bit; float32 may round a t within 6e-8 of 1 to 1).

    Returns:
        (n,) tensor of ``dtype``.
    """
    n = V.count("n", n)
    V.choice("kind", kind, TIMESTEP_KINDS)
    dtype = V.float_dtype("dtype", dtype)
    device = V.sample_device(device, generator)
    V.generator("generator", generator, device)
    f64 = dict(generator=generator, device=device, dtype=torch.float64)
    if kind == "uniform":
        # (k + 0.5) / 2^53 for k uniform in [0, 2^53): the open interval, symmetric about 1/2
        u = torch.rand(n, **f64)
        t = u + 2.0 ** -54
    elif kind == "logit_normal":
        mean = V.number("mean", mean, lower=-math.inf)
        std = V.number("std", std)
        t = torch.sigmoid(mean + std * torch.randn(n, **f64))
    else:
        P_mean = V.number("P_mean", P_mean, lower=-math.inf)
        P_std = V.number("P_std", P_std)
        t = torch.exp(P_mean + P_std * torch.randn(n, **f64))
    return t.to(dtype)


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """EDM's loss weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, shaped like sigma.

    With EDM's preconditioning it makes the effective weight of the network's own loss 1 at every sigma. Written
    as 1 / sigma_data^2 + (1 / sigma)^2; a weight beyond the dtype's range (sigma < 1e-19 in float32) raises
    FloatingPointError rather than returning inf.
    """
    sigma_data = V.number("sigma_data", sigma_data)
    sigma = V.tensor("sigma", sigma, min_dim=0)
    w = 1.0 / sigma_data ** 2 + (1.0 / sigma) ** 2
    V.require_finite(w, lambda: FloatingPointError(
        f"edm_loss_weight overflows {w.dtype} (sigma too small, or <= 0): pass float64 sigma"))
    return w


def logit_normal_weight(t: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """The logit-normal density at t in (0, 1): exp(-(logit t - mean)^2 / (2 std^2)) / (std sqrt(2 pi) t (1 - t)).

    Weighting a loss over t ~ U(0, 1) by it gives, in expectation, the loss over logit-normal t (SD3). Computed
    in the log domain; 0 at t = 0 and t = 1.
    """
    mean = V.number("mean", mean, lower=-math.inf)
    std = V.number("std", std)
    t = V.tensor("t", t, min_dim=0)
    logit = torch.log(t) - torch.log1p(-t)
    log_pdf = -0.5 * ((logit - mean) / std) ** 2 - math.log(std * math.sqrt(2 * math.pi)) - torch.log(t) \
        - torch.log1p(-t)
    return torch.where((t > 0) & (t < 1), torch.exp(log_pdf), torch.zeros_like(t))
