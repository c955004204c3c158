"""Reference step updates of the Runge-Kutta solvers, in plain torch (the specification of the fused paths).

Short and obviously correct, one stage at a time; the tests run them in float64 and hold the fused paths
(:mod:`fastflow.ode.step_triton`, :mod:`fastflow.ode.step_torch`) to them. ``FASTFLOW_BACKEND=reference``
makes the solvers use them.

Shapes: y, y_new (B, ...) state; K (S, B, ...) stage derivatives, K[j] = f at stage j; h (B,) per-sample step
in the time dtype (cast here).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def combine_reference(y: torch.Tensor, K: torch.Tensor, h: torch.Tensor, coeffs: Sequence[float], *,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """out = y + h * sum_j coeffs[j] K[j]  (j < len(coeffs); zero coefficients skipped), in y's dtype."""
    acc = None
    for j, c in enumerate(coeffs):
        if c == 0.0:
            continue
        acc = K[j] * c if acc is None else acc.add_(K[j], alpha=c)
    hh = h.to(y.dtype).reshape(-1, *([1] * (y.dim() - 1)))
    res = y.clone() if acc is None else torch.addcmul(y, hh, acc)
    if out is None:
        return res
    return out.copy_(res)


def error_norm_reference(y: torch.Tensor, y_new: torch.Tensor, K: torch.Tensor, h: torch.Tensor,
                         e_coeffs: Sequence[float], rtol: float, atol: float) -> torch.Tensor:
    """norm_i = sqrt(mean_d (err / sc)^2), err = h sum_j e_coeffs[j] K[j], sc = atol + rtol max(|y|, |y_new|).

    Returns (B,) in float32 for float32/16 states, float64 for float64 states.
    """
    cdt = torch.float64 if y.dtype == torch.float64 else torch.float32
    err = None
    for j, c in enumerate(e_coeffs):
        if c == 0.0:
            continue
        kj = K[j].to(cdt)
        err = kj * c if err is None else err.add_(kj, alpha=c)
    B = y.shape[0]
    if err is None:
        return torch.zeros(B, dtype=cdt, device=y.device)
    err = err * h.to(cdt).reshape(-1, *([1] * (y.dim() - 1)))
    sc = torch.maximum(y.to(cdt).abs(), y_new.to(cdt).abs()).mul_(rtol).add_(atol)
    return torch.sqrt(torch.mean((err / sc).reshape(B, -1) ** 2, dim=1))
