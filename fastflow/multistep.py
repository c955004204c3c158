"""DPM-Solver++(2M) for a velocity model of any affine path (Lu et al. 2022, "DPM-Solver++", Algorithm 2).

For x_t = alpha_t x0 + sigma_t x1 the model's velocity v = alpha'_t x0 + sigma'_t x1 at (x, t) gives the data
prediction

    D(x, t) = (sigma'_t x - sigma_t v) / (sigma'_t alpha_t - sigma_t alpha'_t)      (x - t v for CondOT),

and the solver steps in lambda = log(alpha / sigma): with h_i = lambda_i - lambda_{i-1},

    x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i (e^(-h_i) - 1) D',
    D' = D_{i-1} (first step, and wherever the previous step was infinite), else
    D' = (1 + 1 / (2 r)) D_{i-1} - D_{i-2} / (2 r),   r = h_{i-1} / h_i,

one model evaluation per step (k-diffusion's ``sample_dpmpp_2m`` is the EDM case alpha = 1, sigma = sigma). The
ends of a flow path are exact limits: at the noise end (alpha = 0) lambda = -inf and the step's e^(-h) is 0; at
the data end (sigma = 0) the step returns alpha D.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._core import validate as V

__all__ = ["dpmpp_2m_path"]


def _lam(alpha: float, sigma: float) -> float:
    if alpha <= 0.0:
        return -math.inf
    if sigma <= 0.0:
        return math.inf
    return math.log(alpha) - math.log(sigma)


def dpmpp_2m_path(velocity: Callable, x: torch.Tensor, grid: torch.Tensor, scheduler,
                  model_kwargs: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Integrate x (B, *shape) over ``grid`` (G,) float64 from the noise end towards the data with DPM-Solver++(2M).

    Returns:
        (x at grid[-1], the states at every grid time, x first).
    """
    B = x.shape[0]
    c = scheduler(grid)
    alpha, sigma, d_alpha, d_sigma = (v.tolist() for v in (c.alpha, c.sigma, c.d_alpha, c.d_sigma))
    lam = [_lam(a, s) for a, s in zip(alpha, sigma)]
    states = [x]
    d_prev, h_prev = None, None
    for i in range(len(grid) - 1):
        t = torch.full((B,), float(grid[i]), dtype=x.dtype, device=x.device)
        v = velocity(x, t, **model_kwargs)
        v = V.f_output(v, tuple(x.shape), " (the velocity model)").to(x.dtype)
        den = d_sigma[i] * alpha[i] - sigma[i] * d_alpha[i]
        if den == 0.0:
            raise ValueError(f"the path cannot be inverted for x0 at t = {float(grid[i])} (sigma' alpha - sigma "
                             "alpha' = 0)")
        d = (d_sigma[i] * x - sigma[i] * v) / den
        h = lam[i + 1] - lam[i]
        if d_prev is None or not math.isfinite(h_prev) or not math.isfinite(h):
            d_star = d
        else:
            r = h_prev / h
            d_star = (1.0 + 1.0 / (2.0 * r)) * d - d_prev / (2.0 * r)
        # e^(-h) - 1, exact at the ends: h = +inf (the data end) gives -1, and a start at the noise end likewise
        em1 = -1.0 if h == math.inf else math.expm1(-h)
        ratio = sigma[i + 1] / sigma[i] if sigma[i] > 0 else 0.0
        x = ratio * x - alpha[i + 1] * em1 * d_star
        states.append(x)
        d_prev, h_prev = d, h
    return x, states
