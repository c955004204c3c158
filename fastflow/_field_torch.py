"""The ``torch`` backend of the field engine: streams over the reference set with an online log-sum-exp.

Per chunk of C reference rows it does one GEMM for the distances, one fused epilogue (log-weights, running
max, running sums, probabilities: the C++ op ``fastflow::field_step_`` when ``fastflow._C`` is built, else
:func:`online_step_torch`) and one GEMM for the weighted sum. Peak extra memory is O(B*C + (B + R)*d): the
B x R x d difference tensor never exists, and C comes from a memory budget.
"""
from __future__ import annotations

import contextlib
import os

import torch

from . import _loader
from ._logweights import log_weight, rel_log_weight

#: default memory budget (MiB) for one chunk's temporaries; FASTFLOW_FIELD_BUDGET_MB overrides it.
DEFAULT_BUDGET_MB = 256


@contextlib.contextmanager
def fp32_matmul_precision(precision: str):
    """Make CUDA float32 matmuls IEEE (``"ieee"``) or tf32 (``"tf32"``) inside the block, then restore."""
    m = torch.backends.cuda.matmul
    if hasattr(m, "fp32_precision"):  # torch >= 2.9
        prev = m.fp32_precision
        m.fp32_precision = "tf32" if precision == "tf32" else "ieee"
        try:
            yield
        finally:
            m.fp32_precision = prev
    else:  # pragma: no cover - older torch
        prev = m.allow_tf32
        m.allow_tf32 = precision == "tf32"
        try:
            yield
        finally:
            m.allow_tf32 = prev


def online_step_torch(dots, xn, yn, t, a, smin, jmin, l, l2, offset: int, kind: int, p: float, q: float):
    """One streaming step of the field, in plain torch (the specification of ``fastflow::field_step_``).

    The running state is the row's smallest squared distance s* (whose log-weight is the row's largest, every
    kind being decreasing in s) and the sums of exp(l_ij - l(s*)) and exp(2 (l_ij - l(s*))).

    Args:
        dots: (B, C) x_c . y_c for this chunk; overwritten with w_ij = exp(l(s_ij) - l(s*_new)).
        xn: (B,) ||x_i - a_i c||^2.   yn: (C,) ||y_j - c||^2.   t, a: (B,) time and path scale.
        smin, l, l2: (B,) running s*, sum w and sum w^2; updated in place (start from inf, 0, 0).
        jmin: (B,) int64 index of s*'s reference point (``offset`` + column), updated in place.
        kind, p, q: the log-weight (see :mod:`fastflow._logweights`).

    Returns:
        alpha: (B,) exp(l(s*_old) - l(s*_new)), the factor that rescales the running weighted sum.
    """
    s = torch.addcmul(xn[:, None] + (a * a)[:, None] * yn[None, :], a[:, None], dots, value=-2.0).clamp_min_(0.0)
    s_chunk, j_chunk = s.min(dim=1)
    s_new = torch.minimum(smin, s_chunk)
    torch.where(s_chunk < smin, j_chunk + offset, jmin, out=jmin)
    alpha = torch.where(torch.isinf(smin), torch.zeros_like(smin),
                        torch.exp(rel_log_weight(smin, s_new, t, kind, p, q)))
    torch.exp(rel_log_weight(s, s_new[:, None], t[:, None], kind, p, q), out=dots)
    l.mul_(alpha).add_(dots.sum(dim=1))
    l2.mul_(alpha * alpha).add_((dots * dots).sum(dim=1))
    smin.copy_(s_new)
    return alpha


def _step(dots, xn, yn, t, a, smin, jmin, l, l2, offset, kind, p, q, use_ext: bool):
    if use_ext and _loader.has_C():
        return torch.ops.fastflow.field_step_(dots, xn, yn, t, a, smin, jmin, l, l2, offset, kind, p, q)
    return online_step_torch(dots, xn, yn, t, a, smin, jmin, l, l2, offset, kind, p, q)


def exact_log_norm(x, ref, t, a, jmin, l, kind, p, q):
    """log sum_j w_j = l(s*) + log(sum_j w_j / w*), with s* recomputed by a direct difference.

    The GEMM form of s* carries an absolute error ~eps ||x - c||^2, which at small t (s* ~ t^2) would swamp
    l(s*); one (B, d) difference against the arg-min point fixes that for O(B d).
    """
    diff = x.to(l.dtype) - a[:, None] * ref.index_select(0, jmin).to(l.dtype)
    s_exact = (diff * diff).sum(dim=1)
    return log_weight(s_exact, t, kind, p, q) + torch.log(l)


def chunk_rows(B: int, d: int, itemsize: int, budget_mb: float | None = None) -> int:
    """Reference rows per chunk so that the chunk's temporaries (C*d + 3*B*C elements) fit the budget."""
    if budget_mb is None:
        budget_mb = float(os.environ.get("FASTFLOW_FIELD_BUDGET_MB", DEFAULT_BUDGET_MB))
    per_row = itemsize * (d + 3 * max(B, 1))
    return max(16, int(budget_mb * 2**20) // per_row)


def field_torch(x, ref, t, a, kind, p, q, *, precision="ieee", chunk_size=None, use_ext=True):
    """Streaming posterior mean. x: (B, d), ref: (R, d), t, a: (B,) in the compute dtype.

    Returns (xbar (B, d), log_norm (B,), ess (B,)) in the compute dtype (float64 for float64 input, else float32).
    """
    B, d = x.shape
    R = ref.shape[0]
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    # Centre on the reference mean: distances are unchanged, ||x||^2 + ||y||^2 - 2 x.y cancels less.
    c = torch.mean(ref, dim=0, dtype=cdt)
    xc = x.to(cdt) - a[:, None] * c
    xn = (xc * xc).sum(dim=1)
    acc = torch.zeros(B, d, dtype=cdt, device=x.device)
    smin = torch.full((B,), float("inf"), dtype=cdt, device=x.device)
    jmin = torch.zeros(B, dtype=torch.int64, device=x.device)
    l = torch.zeros(B, dtype=cdt, device=x.device)
    l2 = torch.zeros(B, dtype=cdt, device=x.device)
    C = chunk_size or chunk_rows(B, d, torch.finfo(cdt).bits // 8)
    mm_dtype = torch.bfloat16 if precision == "bf16" and cdt == torch.float32 else cdt
    xq = xc.to(mm_dtype)
    with fp32_matmul_precision(precision):
        for start in range(0, R, C):
            yc = ref[start:start + C].to(cdt) - c
            yn = (yc * yc).sum(dim=1)
            yq = yc.to(mm_dtype)
            dots = torch.mm(xq, yq.t()).to(cdt)
            alpha = _step(dots, xn, yn, t, a, smin, jmin, l, l2, start, kind, p, q, use_ext)
            acc.mul_(alpha[:, None])
            if mm_dtype == cdt:
                acc.addmm_(dots, yc)
            else:
                acc.add_(torch.mm(dots.to(mm_dtype), yq).to(cdt))
    xbar = acc / l[:, None] + c
    return xbar, exact_log_norm(x, ref, t, a, jmin, l, kind, p, q), l * l / l2
