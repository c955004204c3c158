"""The ``torch`` backend of the field engine: streams over the reference set with an online log-sum-exp.

Per chunk of C reference rows it does one GEMM for the distances, one fused epilogue (log-weights, running
max, running sums, probabilities: the C++ op ``fastflow::field_step_`` when ``fastflow._C`` is built, else
:func:`online_step_torch`) and one GEMM for the weighted sum. Peak extra memory is O(B*C + (B + R)*d): the
B x R x d difference tensor never exists, and C comes from a memory budget.
"""
from __future__ import annotations

import torch

from .._core import config, dispatch
from .._core import validate as V
from .logweights import gap_log_weight, log_weight, split_distance


def online_step_torch(dots, xn, yn, t, a, mmin, jmin, l, l2, offset: int, kind: int, p: float, q: float):
    """One streaming step of the field, in plain torch (the specification of ``fastflow::field_step_``).

    The squared distance is s_ij = xn_i + m_ij with m_ij = a_i^2 yn_j - 2 a_i dots_ij; s itself is never
    rounded (:func:`~fastflow.field.logweights.split_distance`). The running state is the row's smallest m
    (whose log-weight is the row's largest, every kind being decreasing in s) and the sums of exp(l_ij - l*)
    and exp(2 (l_ij - l*)), l* = l(xn + m*).

    Args:
        dots: (B, C) x_c . y_c for this chunk; overwritten with w_ij = exp(l(s_ij) - l(s*_new)).
        xn: (B,) ||x_i - a_i c||^2.   yn: (C,) ||y_j - c||^2.   t, a: (B,) time and path scale.
        mmin, l, l2: (B,) running m*, sum w and sum w^2; updated in place (start from inf, 0, 0).
        jmin: (B,) int64 index of m*'s reference point (``offset`` + column), updated in place.
        kind, p, q: the log-weight (see :mod:`fastflow.field.logweights`).

    Returns:
        alpha: (B,) exp(l(s*_old) - l(s*_new)), the factor that rescales the running weighted sum.
    """
    m = torch.addcmul((a * a)[:, None] * yn[None, :], a[:, None], dots, value=-2.0)
    m_chunk, j_chunk = m.min(dim=1)
    m_new = torch.minimum(mmin, m_chunk)
    torch.where(m_chunk < mmin, j_chunk + offset, jmin, out=jmin)
    g_old, s0 = split_distance(xn, mmin, m_new)
    alpha = torch.where(torch.isinf(mmin), torch.zeros_like(mmin),
                        torch.exp(gap_log_weight(g_old, s0, t, kind, p, q)))
    g, _ = split_distance(xn[:, None], m, m_new[:, None])
    torch.exp(gap_log_weight(g, s0[:, None], t[:, None], kind, p, q), out=dots)
    l.mul_(alpha).add_(dots.sum(dim=1))
    l2.mul_(alpha * alpha).add_((dots * dots).sum(dim=1))
    mmin.copy_(m_new)
    return alpha


def _step(dots, xn, yn, t, a, mmin, jmin, l, l2, offset, kind, p, q, use_ext: bool):
    if use_ext and dispatch.has_C():
        return torch.ops.fastflow.field_step_(dots, xn, yn, t, a, mmin, jmin, l, l2, offset, kind, p, q)
    return online_step_torch(dots, xn, yn, t, a, mmin, jmin, l, l2, offset, kind, p, q)


def exact_log_norm(x, ref, t, a, jmin, l, kind, p, q):
    """log sum_j w_j = l(s*) + log(sum_j w_j / w*), with s* recomputed by a direct difference.

    The GEMM form of s* carries an absolute error ~eps ||x - c||^2, which at small t (s* ~ t^2) would swamp
    l(s*); one (B, d) difference against the arg-min point fixes that for O(B d). It reads no value on the host,
    so a registered op's traced body may call it.
    """
    # one (B, d) buffer, two passes: these vectors are large exactly when the GEMMs are cheap (d = 196608)
    diff = ref.index_select(0, jmin).to(l.dtype)
    diff.mul_(a.unsqueeze(1))  # even where a == 1: testing a would be a host read (B*d work, ~1/(4R) of the GEMMs)
    torch.sub(x.to(l.dtype), diff, out=diff)
    s_exact = torch.linalg.vector_norm(diff, dim=1).square_()
    return log_weight(s_exact, t, kind, p, q) + torch.log(l)


def chunk_rows(B: int, d: int, itemsize: int, budget_mb: float | None = None) -> int:
    """Reference rows per chunk so that the chunk's temporaries (C*d + 3*B*C elements) fit the budget."""
    if budget_mb is None:
        budget_mb = config.field_budget_mb()
    per_row = itemsize * (d + 3 * max(B, 1))
    return max(16, int(budget_mb * 2**20) // per_row)


def centring(x, ref, a, cdt):
    """(c, xc, xn, yn) of the streaming passes: the centre c (None where the data need none), x - a c, its squared
    row norms, and (uncentred only) the reference rows' squared norms (else None).

    ||x||^2 + ||y||^2 - 2 x.y cancels in proportion to ||x||^2: centring on the reference mean c (distances are
    unchanged) helps when the data sit away from the origin. It costs a pass writing (y - c) per chunk, ~30% of
    the two GEMMs on a CPU, so where a host read is free (the CPU) it is skipped when ||c||^2 is under 10% of the
    spread E||y - c||^2 (then it would remove less than 10% of the error), e.g. for pixels in [-1, 1]. On CUDA
    that test would be a host read (a stall) and always centring costs less than one.
    """
    c = torch.mean(ref, dim=0, dtype=cdt)
    yn_raw = None
    if V.reads_are_free(x.device):
        yn_raw = torch.linalg.vector_norm(ref, dim=1, dtype=cdt).square_()
        cc = float(c @ c)
        centre = cc > 0.1 * max(float(yn_raw.mean()) - cc, 0.0)
    else:
        centre = True
    xc = x.to(cdt) - a[:, None] * c if centre else x.to(cdt)
    return (c if centre else None), xc, torch.linalg.vector_norm(xc, dim=1).square_(), (None if centre else yn_raw)


def chunk(ref, start: int, C: int, c, yn_raw, cdt):
    """(yc, yn): reference rows start..start+C in the compute dtype, centred on c (unless c is None), and their
    squared norms (from ``yn_raw`` when uncentred): see :func:`centring`."""
    if c is not None:
        yc = ref[start:start + C].to(cdt) - c
        return yc, torch.linalg.vector_norm(yc, dim=1).square_()
    return ref[start:start + C].to(cdt), yn_raw[start:start + C]


def field_torch(x, ref, t, a, kind, p, q, *, precision="ieee", chunk_size=None, use_ext=True, mean=True):
    """Streaming posterior mean. x: (B, d), ref: (R, d), t, a: (B,) in the compute dtype.

    Returns (xbar (B, d), log_norm (B,), ess (B,)) in the compute dtype (float64 for float64 input, else float32);
    with ``mean`` False, xbar is None and the weighted-sum GEMM is skipped (log_norm and ess only).
    """
    B, d = x.shape
    R = ref.shape[0]
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    c, xc, xn, yn_raw = centring(x, ref, a, cdt)
    acc = None  # (B, d) running weighted sum, created by the first chunk's GEMM (no zero-fill pass)
    mmin = torch.full((B,), float("inf"), dtype=cdt, device=x.device)
    jmin = torch.zeros(B, dtype=torch.int64, device=x.device)
    l = torch.zeros(B, dtype=cdt, device=x.device)
    l2 = torch.zeros(B, dtype=cdt, device=x.device)
    C = chunk_size or chunk_rows(B, d, torch.finfo(cdt).bits // 8)
    mm_dtype = torch.bfloat16 if precision == "bf16" and cdt == torch.float32 else cdt
    xq = xc.to(mm_dtype)
    with dispatch.fp32_matmul_precision(precision, x.device):
        for start in range(0, R, C):
            yc, yn = chunk(ref, start, C, c, yn_raw, cdt)
            yq = yc.to(mm_dtype)
            dots = torch.mm(xq, yq.t()).to(cdt)
            alpha = _step(dots, xn, yn, t, a, mmin, jmin, l, l2, start, kind, p, q, use_ext)
            if not mean:
                continue
            wsum = torch.mm(dots.to(mm_dtype), yq).to(cdt) if mm_dtype != cdt else None
            if acc is None:
                acc = wsum if wsum is not None else torch.mm(dots, yc)
            elif wsum is None:
                acc.mul_(alpha[:, None]).addmm_(dots, yc)
            else:
                acc.mul_(alpha[:, None]).add_(wsum)
    log_norm = exact_log_norm(x, ref, t, a, jmin, l, kind, p, q)
    if not mean:
        return None, log_norm, l * l / l2
    xbar = acc.div_(l[:, None])
    if c is not None:
        xbar += c
    return xbar, log_norm, l * l / l2
