"""Log-weights of the isotropic families as functions of the squared distance s = r^2 (docs/math.md).

Every backend evaluates the same closed forms, selected by an integer ``kind`` and two scalars ``p``, ``q``:

=========  ==========================================================  =======================
kind       log-weight l(s, t)                                           parameters
=========  ==========================================================  =======================
POISSON    -p * log(t^2 + s)                                            p = (d + D) / 2
GAUSSIAN   -p * s / t^2                                                 p = 1/2
TANH       log sech^2(r/t) - q * log s,  r = sqrt(s)                    q = (d - 1) / 2
EXP        -r/t - q * log s                                             q = (d - 1) / 2
=========  ==========================================================  =======================

Constants that do not depend on the reference index j (such as log(1/t) in the radial-CDF density) are left
out: they cancel in the softmax. ``FieldStats.log_norm`` is the log-sum-exp of exactly these log-weights.

Every l is decreasing in s, so the largest log-weight of a row belongs to its smallest distance s*. The fast
backends never round l itself, nor s: they carry the row's smallest s* and evaluate l(s) - l(s*) by
:func:`gap_log_weight` from the gap s - s* (:func:`split_distance`), whose forms (log1p of a relative gap) stay
accurate where l is large. At d = 3072, l = -1537 log(t^2 + s) is ~1e4 in size, and its fp32 rounding alone
(~1e-3) would perturb every weight by 0.1%.

The radial kinds clamp s at float32's smallest normal number (in every dtype) inside log s: a reference point
that coincides with the query has an infinite density (r^-(d-1)), and the clamp turns it into a finite,
dominating weight.
"""
from __future__ import annotations

import math

import torch

POISSON = 0
GAUSSIAN = 1
TANH = 2
EXP = 3

KIND_NAMES = {POISSON: "poisson", GAUSSIAN: "gaussian", TANH: "tanh", EXP: "exp"}
LOG2 = math.log(2.0)
#: s is clamped at float32's smallest normal number inside log s, in every dtype, so that float32 and float64
#: give the same finite weight to a reference point that coincides with the query.
TINY = 1.1754943508222875e-38


def sphere_log_area(d: int) -> float:
    """log |S^(d-1)| = log(2 pi^(d/2) / Gamma(d/2)), the area of the unit sphere in R^d (the radial kernels'
    normaliser: p_t(x | x0) = d_r psi_t(r) / (r^(d-1) |S^(d-1)|))."""
    return math.log(2.0) + 0.5 * d * math.log(math.pi) - math.lgamma(0.5 * d)


def log_weight(s: torch.Tensor, t: torch.Tensor, kind: int, p: float, q: float) -> torch.Tensor:
    """l(s, t) of ``kind`` for ``s`` >= 0 and ``t`` > 0 (broadcasting); used for the log-normaliser only."""
    if kind == POISSON:
        # log(t^2 + s) = 2 log m + log1p((n / m)^2), m = max(t, r), n = min(t, r): t^2 under- or overflows the
        # float range long before the log does (float32: t < 1e-19 or t > 1.8e19)
        r = torch.sqrt(s)
        m, n = torch.maximum(t, r), torch.minimum(t, r)
        return -p * (2.0 * torch.log(m) + torch.log1p((n / m) ** 2))
    if kind == GAUSSIAN:
        return -p * (s / t) / t  # not s / t^2: t^2 underflows at t = 1e-30 in float32 (0 / 0 for s = 0)
    u = torch.sqrt(s) / t
    if kind == TANH:
        # log sech^2(u) = -2 (u + log1p(exp(-2u)) - log 2): exact for every u >= 0, no overflow
        log_dpsi = -2.0 * (u + torch.log1p(torch.exp(-2.0 * u)) - LOG2)
    elif kind == EXP:
        log_dpsi = -u
    else:
        raise ValueError(f"unknown log-weight kind {kind}")
    return log_dpsi - q * torch.log(s.clamp_min(TINY))


def split_distance(xn: torch.Tensor, m: torch.Tensor, m0: torch.Tensor):
    """(g, s0) with s = xn + m = s0 + g, from the row constant ``xn`` and the j-dependent part ``m``.

    The fast backends write the squared distance as s_ij = xn_i + m_ij, m_ij = a_i^2 ||y_j||^2 - 2 a_i x_i . y_j,
    and carry the row's smallest m, ``m0`` (the smallest s, the largest log-weight). The gap g = m - m0 is
    formed without rounding s itself: xn is ~ t^2 d for a query far out at large t, and one rounding of s there
    (eps s) moves a log-weight by p eps (4e-4 at d = 12288 in float32), while m and the gap are far smaller.
    s0 = max(xn + m0, 0), and the clamp at 0 (a coincident point whose rounded s went negative) carries over to
    every s: g = max(m - m0 + min(xn + m0, 0), 0). NaN propagates.
    """
    s0_raw = xn + m0
    return (m - m0 + s0_raw.clamp_max(0.0)).clamp_min(0.0), s0_raw.clamp_min(0.0)


def gap_log_weight(g: torch.Tensor, s0: torch.Tensor, t: torch.Tensor, kind: int, p: float, q: float):
    """l(s0 + g, t) - l(s0, t) for g >= 0, never forming s0 + g's log-weight: <= 0, and -inf for g = inf.

    The C++ op and the Triton kernels transcribe these lines.
    """
    if kind == POISSON:
        # the denominator is floored at TINY: t^2 + s0 underflows to 0 for an exact hit (s0 = 0) at tiny t, and
        # the hit must keep weight exp(0) while the others get exp(-inf)
        return -p * torch.log1p(g / (t * t + s0).clamp_min(TINY))
    if kind == GAUSSIAN:
        return -p * (g / t) / t  # not / t^2, which underflows in float32 at t = 1e-30
    tiny = TINY
    s = s0 + g
    r, r0 = torch.sqrt(s), torch.sqrt(s0)
    u = r / t
    # u - u0 from the gap: at small t, u ~ 1e3 and the difference of the rounded u's would lose 3 digits
    r_sum = r + r0
    du = torch.where(r_sum > 0, g / (t * r_sum), torch.zeros_like(r_sum))
    if kind == TANH:
        d_log_dpsi = -2.0 * (du + torch.log1p(torch.exp(-2.0 * u)) - torch.log1p(torch.exp(-2.0 * (r0 / t))))
    elif kind == EXP:
        d_log_dpsi = -du
    else:
        raise ValueError(f"unknown log-weight kind {kind}")
    if q == 0:  # d = 1: no r^-(d-1) factor (and no 0 * inf when a far point meets an exact hit)
        return d_log_dpsi
    # log(max(s, TINY) / max(s0, TINY)) = log1p(gap / max(s0, TINY)); the gap is g unless s0 is clamped
    sc0 = s0.clamp_min(tiny)
    num = torch.where(s0 >= tiny, g, s.clamp_min(tiny) - tiny)
    return d_log_dpsi - q * torch.log1p(num / sc0)


def rel_log_weight(s: torch.Tensor, s0: torch.Tensor, t: torch.Tensor, kind: int, p: float, q: float):
    """l(s, t) - l(s0, t) for s >= s0: :func:`gap_log_weight` of the gap s - s0 (s = inf gives -inf)."""
    return gap_log_weight(s - s0, s0, t, kind, p, q)
