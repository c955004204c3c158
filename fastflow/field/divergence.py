"""Green's-function quantities of the empirical field: the normalised log-density and the exact divergence
(docs/math.md, "The divergence and the normalisers").

**Normalisers.** The engine's log-weight l(s, tau) drops every factor of the kernel p_t(x | x0) that does not depend
on the reference index, so p_t(x | x0_j) = K(tau) exp(l(s_j, tau)) with, for the kinds of :mod:`.logweights`,

=========  ======================================================================================================
kind       log K(tau), d dimensions
=========  ======================================================================================================
POISSON    lgamma(p) - lgamma(p - d/2) - (d/2) log pi + (2p - d) log tau   (Student-t, nu = 2p - d, scale tau/sqrt(nu))
GAUSSIAN   -(d/2) log(2 pi) - d log tau                                     (N(a x0, tau^2 I); p = 1/2)
TANH, EXP  lgamma(d/2) - log 2 - (d/2) log pi - log tau                     (Psi'(r/tau) / (tau r^(d-1) |S^(d-1)|))
=========  ======================================================================================================

so log p_t(x) = log_norm + log K - log R, log_norm = logsumexp_j l_j (:class:`fastflow.FieldStats`).

**Divergence.** With u_j = x - a ref_j, s_j = |u_j|^2 and c_j = 2 dl/ds (s_j) (:func:`coefficient`), the
Jacobian of the posterior mean is dxbar/dx = sum_j w_j (ref_j - xbar) (c_j u_j)^T (w normalised), so

    tr dxbar/dx = sum_j w_j c_j (ref_j - xbar) . u_j.

:func:`divergence_torch` streams it in one pass: per chunk one distance GEMM, then one GEMM of the stacked
weights [w; w c] against the chunk, with the online rescale of the field (gap forms of :mod:`.logweights`), carrying
sum w, sum w c, the gap sum G1 = sum w c (s_j - s*) and the (B, d) sums sum w ref_j and sum w c ref_j. The row's
smallest distance s* is recomputed by a direct difference against the running arg-min point y* (so c_j, singular
in s for the radial kinds, sees an accurate s_j = s* + gap), and the end combines the sums pivoted on y*:

    tr = -G1 / a - u* . (P + C0 db) + a db . P,      u* = x - a y*,  P = sum w c (ref_j - y*),  db = xbar - y*,

(C0 = sum w c), from a^2 |ref_j - y*|^2 = (s_j - s*) + 2 a u* . (ref_j - y*). A point that dominates the weights
contributes exactly 0 there (as it does to tr), where e . sum w c u_j - sum w c s_j would leave a rounding error
of order c* s*, and nothing cancels in proportion to |ref|^2 as in sum w |ref|^2 - |xbar|^2. At a = 0 (rectified
flow at t = 1) the weights do not depend on x and tr = 0.
"""
from __future__ import annotations

import math

import torch

from .._core import dispatch
from .logweights import EXP, GAUSSIAN, POISSON, TANH, TINY, gap_log_weight, log_weight, sphere_log_area

__all__ = ["evaluate", "log_kernel_constant", "coefficient", "divergence_torch", "divergence_reference"]

LOG_PI = math.log(math.pi)


def log_kernel_constant(kind: int, p: float, q: float, d: int, tau: torch.Tensor) -> torch.Tensor:
    """log K(tau) of the kernel p_t(x | x0) = K(tau) exp(l(s, tau)) (module docstring), in tau's dtype.

    Args:
        kind, p, q: the log-weight (:mod:`.logweights`).  d: the dimension.  tau: (B,) the noise scale.

    Returns:
        (B,) tensor like tau.
    """
    log_tau = torch.log(tau)
    if kind == POISSON:
        nu = 2.0 * p - d
        const = math.lgamma(p) - math.lgamma(nu / 2.0) - 0.5 * d * LOG_PI
        return const + nu * log_tau
    if kind == GAUSSIAN:
        if p != 0.5:
            raise NotImplementedError(f"the Gaussian normaliser is written for p = 1/2, got p = {p}")
        return -0.5 * d * math.log(2.0 * math.pi) - d * log_tau
    if kind in (TANH, EXP):
        return -sphere_log_area(d) - log_tau
    raise NotImplementedError(f"no normaliser for log-weight kind {kind}")


def coefficient(s: torch.Tensor, tau: torch.Tensor, kind: int, p: float, q: float) -> torch.Tensor:
    """c = 2 dl/ds at s >= 0 (broadcasting with tau), so that the gradient of l(|x - a y|^2) in x is c (x - a y).

    POISSON -2p / (tau^2 + s);  GAUSSIAN -2p / tau^2;  TANH -2 tanh(r/tau) / (tau r) - 2q / s;
    EXP -1 / (tau r) - 2q / s  (r = sqrt(s)). Below s = TINY, where the engine clamps s inside log s (its
    log-weight is flat there), the -2q/s term is 0, TANH's first term takes its limit -2 / tau^2 and EXP's (the
    cusp of e^(-r/tau) at r = 0) is 0: a coincident point gives a finite c, never NaN.
    """
    if kind == POISSON:
        return (-2.0 * p) / (tau * tau + s).clamp_min(TINY)
    if kind == GAUSSIAN:
        return ((-2.0 * p) / tau) / tau  # broadcasts against s
    hit = s < TINY
    r = torch.sqrt(s)
    if kind == TANH:
        u = r / tau
        ratio = torch.where(u > 0, torch.tanh(u) / torch.where(u > 0, u, torch.ones_like(u)), torch.ones_like(u))
        c = -2.0 * (ratio / tau) / tau
    elif kind == EXP:
        c = torch.where(hit, torch.zeros_like(s), -1.0 / (tau * torch.where(hit, torch.ones_like(r), r)))
    else:
        raise NotImplementedError(f"no divergence for log-weight kind {kind}")
    if q != 0:
        c = c + torch.where(hit, torch.zeros_like(s), (-2.0 * q) / torch.where(hit, torch.ones_like(s), s))
    return c


def _pivot(x, ref, a, jmin, c, cdt):
    """(u*, y*_c, s*): u* = x - a y* by a direct difference against the row's arg-min point y* = ref[jmin], y*
    in the centred frame (c None: uncentred), and s* = |u*|^2; (B, d), (B, d), (B,) in cdt."""
    ystar = ref.index_select(0, jmin).to(cdt)
    ustar = torch.addcmul(x.to(cdt), a.unsqueeze(1), ystar, value=-1.0)
    if c is not None:
        ystar -= c
    return ustar, ystar, torch.linalg.vector_norm(ustar, dim=1).square_()


def _combine(xbar_c, y1, c0, g1, ustar, ystar_c, a):
    """tr dxbar/dx from the normalised sums (module docstring), pivoted on the arg-min point y*: with
    P = sum w c (y_j - y*), db = xbar - y* and the accurate gap sum G1 = sum w c (s_j - s*),

        tr = -G1 / a - u* . (P + C0 db) + a db . P,        C0 = sum w c,

    (from a^2 |y_j - y*|^2 = (s_j - s*) + 2 a u* . (y_j - y*)), in which a dominating point contributes exactly
    0 (P = db = G1 = 0 when its weight is 1 and the others 0) instead of a rounding error of size c* s*. At
    a = 0 the weights do not depend on x (all s_j = |x|^2): tr = 0 there."""
    P = torch.addcmul(y1, c0[:, None], ystar_c, value=-1.0)
    db = xbar_c.sub(ystar_c)
    nz = a != 0
    a_safe = torch.where(nz, a, torch.ones_like(a))
    tr = -g1 / a_safe - _rowdot(ustar, torch.addcmul(P, c0[:, None], db)) + a * _rowdot(db, P)
    return torch.where(nz, tr, torch.zeros_like(tr))


def _rowdot(u, v):
    """(B,) row-wise dot products of two (B, n) tensors, as one batched GEMM."""
    return torch.bmm(u.unsqueeze(1), v.unsqueeze(2)).view(u.shape[0])


def divergence_torch(x, ref, tau, a, kind, p, q, *, precision="ieee", chunk_size=None):
    """Streaming posterior mean and Jacobian trace. x: (B, d), ref: (R, d), tau, a: (B,) in the compute dtype.

    Returns (xbar (B, d), tr (B,) = tr dxbar/dx, log_norm (B,)) in the compute dtype.
    """
    from .torch_backend import centring, chunk, chunk_rows

    B, d = x.shape
    R = ref.shape[0]
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    dev = x.device
    c, xc, _, yn_raw = centring(x, ref, a, cdt)  # the same centring rule as field_torch
    mmin = torch.full((B,), float("inf"), dtype=cdt, device=dev)
    jmin = torch.zeros(B, dtype=torch.int64, device=dev)
    s_star = torch.zeros(B, dtype=cdt, device=dev)
    l, c0, g1 = (torch.zeros(B, dtype=cdt, device=dev) for _ in range(3))
    acc = None  # (2B, d): [sum w y; sum w c y], created by the first chunk's GEMM
    # 3 (B, C) temporaries plus the (2B, C) stack, against field_torch's 3: the same budget, a few more rows each
    C = chunk_size or max(16, chunk_rows(B, d, torch.finfo(cdt).bits // 8) * 3 // 5)
    mm_dtype = torch.bfloat16 if precision == "bf16" and cdt == torch.float32 else cdt
    xs = (xc * (-2.0 * a[:, None])).to(mm_dtype)  # m_ij = a^2 |y_j|^2 + (-2 a x_i) . y_j: one GEMM with its sum
    a2 = (a * a)[:, None]
    # Few, large operations: on a loaded CPU each parallel region can stall for a scheduler tick
    with dispatch.fp32_matmul_precision(precision, dev):
        for start in range(0, R, C):
            yc, yn = chunk(ref, start, C, c, yn_raw, cdt)
            n = yc.shape[0]
            yq = yc.to(mm_dtype)
            if mm_dtype == cdt:
                m = torch.addmm(a2 * yn[None, :], xs, yq.t())
            else:
                m = torch.mm(xs, yq.t()).to(cdt).add_(a2 * yn[None, :])
            m_chunk, j_chunk = m.min(dim=1)
            first = torch.isinf(mmin)
            m_new = torch.minimum(mmin, m_chunk)
            torch.where(m_chunk < mmin, j_chunk + start, jmin, out=jmin)
            # the row's smallest s by a direct difference (O(B d), ~1/C of the GEMMs): c_j needs s_j itself
            ustar, ystar_c, s_star = _pivot(x, ref, a, jmin, c, cdt)
            shift = torch.where(first, torch.zeros_like(mmin), mmin - m_new)  # s*_old - s*_new >= 0
            alpha = torch.where(first, torch.zeros_like(mmin),
                                torch.exp(gap_log_weight(shift, s_star, tau, kind, p, q)))
            g = m.sub_(m_new[:, None])  # s_j - s* >= 0 (m_new <= m exactly), from the j-dependent parts only
            lw = gap_log_weight(g, s_star[:, None], tau[:, None], kind, p, q)
            stack = torch.empty(2 * B, n, dtype=cdt, device=dev)
            w, wc = stack[:B], stack[B:]
            torch.exp(lw, out=w)
            torch.mul(w, coefficient(s_star[:, None] + g, tau[:, None], kind, p, q), out=wc)
            # running sums, rescaled to the new s*; the gap sum also moves its origin by the shift
            sums = stack.sum(dim=1)
            g1 = alpha * torch.where(first, torch.zeros_like(g1), g1 + shift * c0) + _rowdot(wc, g)
            l = alpha * l + sums[:B]
            c0 = alpha * c0 + sums[B:]
            mmin = m_new
            if mm_dtype != cdt:
                part = torch.mm(stack.to(mm_dtype), yq).to(cdt)
                acc = part if acc is None else acc.mul_(torch.cat((alpha, alpha))[:, None]).add_(part)
            elif acc is None:
                acc = torch.mm(stack, yc)
            else:
                acc.mul_(torch.cat((alpha, alpha))[:, None]).addmm_(stack, yc)
    acc.mul_(torch.cat((l, l)).reciprocal_()[:, None])
    xbar_c, y1 = acc[:B], acc[B:]
    tr = _combine(xbar_c, y1, c0 / l, g1 / l, ustar, ystar_c, a)
    log_norm = log_weight(s_star, tau, kind, p, q) + torch.log(l)
    xbar = xbar_c + c if c is not None else xbar_c
    return xbar, tr, log_norm


def divergence_reference(x, ref, tau, a, log_weight_fn, kind, p, q, *, block_elems: int = 1 << 24):
    """Direct differences (meant for float64): x (B, d), ref (R, d), tau, a (B,); ``log_weight_fn(r2, tau)`` the
    family's reference log-weight, ``coefficient`` of (kind, p, q) its 2 dl/ds.

    Returns (xbar (B, d), tr (B,) = sum_j w_j c_j (ref_j - xbar) . (x - a ref_j), log_norm (B,)) in x's dtype.
    """
    B, d = x.shape
    R = ref.shape[0]
    rows = max(1, block_elems // max(1, R * d))
    xbars, trs, lns = [], [], []
    for i in range(0, B, rows):
        xi, ti, ai = x[i:i + rows], tau[i:i + rows], a[i:i + rows]
        u = xi[:, None, :] - ai[:, None, None] * ref[None, :, :]          # (b, R, d)
        r2 = (u * u).sum(dim=-1)                                           # (b, R)
        ell = log_weight_fn(r2, ti[:, None])
        lse = torch.logsumexp(ell, dim=1)
        w = torch.exp(ell - lse[:, None])
        xbar = w @ ref
        cj = coefficient(r2, ti[:, None], kind, p, q)
        dev_ = ref[None, :, :] - xbar[:, None, :]                          # ref_j - xbar
        trs.append((w * cj * (dev_ * u).sum(dim=-1)).sum(dim=1))
        xbars.append(xbar)
        lns.append(lse)
    return torch.cat(xbars), torch.cat(trs), torch.cat(lns)


def evaluate(law, x, t, ref, *, t_name: str = "t", backend: str | None = None, precision: str = "ieee",
             chunk_size: int | None = None):
    """The posterior mean and tr dxbar/dx of ``law``'s weights at (x, t) over ``ref``, validated as
    :func:`fastflow.field.evaluate` validates (the same arguments and errors).

    ``backend="reference"`` runs :func:`divergence_reference` (direct differences, in the compute dtype); every
    other backend (``"torch"``, and ``"triton"``, which has no kernel for it) runs :func:`divergence_torch`.

    Returns:
        (FieldResult, tr): the :class:`fastflow.field.FieldResult` of the pass (its ``ess`` is NaN: not
        accumulated) and tr (B,) in the compute dtype.
    """
    from . import check_finite, prepare

    pre = prepare(law, x, t, ref, t_name=t_name, precision=precision, chunk_size=chunk_size)
    if pre.B == 0:
        return pre.empty(), pre.t[:0]
    x2, ref2, tt, cdt, d, chunk_size = pre.x2, pre.ref2, pre.t, pre.cdt, pre.d, pre.chunk_size
    tau, a = law.noise_scale(tt), law.path_scale(tt)
    kind, p, q = law.weight_params(d)
    name = dispatch.select_backend(x2.device, backend)
    if name == "reference":
        xbar, tr, log_norm = divergence_reference(x2.to(cdt), ref2.to(cdt), tau, a, law.reference_log_weight(d),
                                                  kind, p, q)
    else:
        xbar, tr, log_norm = divergence_torch(x2, ref2, tau, a, kind, p, q, precision=precision,
                                              chunk_size=chunk_size)
    check_finite(f"{law!r}", xbar, tr)
    ess = torch.full_like(log_norm, math.nan)
    return pre.result(xbar, log_norm, ess), tr
