"""Autograd for the fast field backends: the forward is the engine itself, the backward streams like it.

The fast backends (``torch``, ``triton``) write into buffers (``out=``, in-place C++ / Triton kernels), which
autograd cannot go through. :func:`field_grad` wraps them in one :class:`torch.autograd.Function`: its forward
runs the engine unchanged (no graph), and its backward streams over chunks of the reference set again, in
O(B*C + (B + R)*d) memory like the forward. The B x R x d difference tensor, and the full B x R weight matrix,
never exist. The engine calls it only when an input requires grad and grad mode is on (:func:`needs_grad`);
otherwise nothing here runs.

Differentiable outputs: xbar (B, d) and log_norm (B,) = log sum_j exp(l_j); ess is not differentiable. Inputs:
x (B, d), the noise scale t (B,) the log-weight sees, the path scale a (B,) and the reference set (R, d), each
where it requires grad (t and a are torch functions of the user's time, so autograd chains through
``law.noise_scale`` / ``law.path_scale``, the schedulers and the targets' sqrt(D)).

With s_j = ||x - a y_j||^2, l_j = l(s_j, t), w_j the normalised weights, c_j = 2 dl/ds (s_j) and upstream
gradients G (B, d) on xbar and g (B,) on log_norm:

    beta_j = w_j [G . (y_j - xbar) + g]                      (the gradient on l_j)
    grad_x = sum_j beta_j c_j (x - a y_j)                    = S1 x_c - a V
    grad_t = sum_j beta_j dl/dt (s_j)
    grad_a = sum_j beta_j c_j (-y_j . (x - a y_j))            = -c . grad_x - V . x_c + a S2
    grad_y_j = sum_i w_ij G_i - a_i beta_ij c_ij (x_i - a_i y_j)

in coordinates centred on the reference mean c (y_j = c + y~_j, x_c = x - a c; distances are unchanged):
S1 = sum_j beta_j c_j, V = sum_j beta_j c_j y~_j (a GEMM), S2 = sum_j beta_j c_j ||y~_j||^2. The closed forms
of dl/ds and dl/dt per kind are in :func:`log_weight_derivatives`.

The weights are recomputed chunk by chunk with the engine's own step (``fastflow::field_step_`` or
:func:`~fastflow.field.torch_backend.online_step_torch`): the gap l(s) - l(s*) from the j-dependent part of the
distance, never l itself, and an online rescaling of the running sums whenever the row's smallest distance
drops (the sums are linear in the unnormalised weights, so they rescale like the forward's). s_j itself, which
dl/ds and dl/dt need, is s* + gap with s* by a direct difference against the row's arg-min point (as the
forward's log_norm takes it).

Two passes (the default in float32): beta_j needs G . (y_j - xbar), a small difference of two large numbers
where one point carries nearly all the weight. The first pass (a distance GEMM and a G y~^T GEMM per chunk)
finds each row's M = sum_j w_j G . y~_j from the very numbers G . y~_j that the second pass subtracts it from, so
the difference is exact where w_j = 1, as in plain autograd through a softmax; taking M = G . (xbar - c) from the
forward's xbar instead (one pass, the float64 default) leaves an error ~eps |G| |y~| there, 7x plain float32
autograd's at d = 192 in the tests, harmless in float64. Per chunk: five GEMMs in two passes, three in one.
Gradients with respect to ``ref`` need the final normalisation inside each chunk (the sum over the queries
mixes rows): the second pass then starts from the first pass's smallest distances and normalisers, and adds two
GEMMs per chunk.

Everything is computed in the compute dtype (float64 for float64 inputs, else float32), with IEEE dot products
whatever ``precision`` the forward used; the gradients are returned in each input's dtype. Double backward is
not supported (``once_differentiable``).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.autograd.function import once_differentiable

from .._core import config, dispatch
from .logweights import EXP, GAUSSIAN, POISSON, TANH, TINY, split_distance
from .torch_backend import _step

__all__ = ["needs_grad", "field_grad", "field_backward", "log_weight_derivatives"]


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd must see the field: grad mode on and one of the inputs requiring grad (a Python
    attribute test: no work, no host read on the path where nothing does)."""
    return torch.is_grad_enabled() and any(v.requires_grad for v in tensors)


def log_weight_derivatives(s: torch.Tensor, t: torch.Tensor, kind: int, p: float, q: float):
    """(2 dl/ds, dl/dt) of :func:`fastflow.field.logweights.log_weight` at s >= 0, t > 0 (broadcasting).

    POISSON  l = -p log(t^2 + s):      dl/ds = -p / (t^2 + s),              dl/dt = -2 p t / (t^2 + s)
    GAUSSIAN l = -p s / t^2:           dl/ds = -p / t^2,                    dl/dt = 2 p s / t^3
    TANH     l = log sech^2 u - q log s, u = r / t:
                                       dl/ds = -tanh(u) / (t r) - q / s,     dl/dt = 2 tanh(u) u / t
    EXP      l = -u - q log s:         dl/ds = -1 / (2 r t) - q / s,         dl/dt = u / t

    Written so that nothing over- or underflows where l itself does not: t^2 + s as m^2 (1 + (n/m)^2) with
    m = max(t, r), n = min(t, r); 1/t^2 as (1/t)/t; tanh(u)/u -> 1 at u = 0. Below the clamp s < TINY of
    ``log max(s, TINY)`` the -q/s term is 0 (its derivative there), and the exp kind's cusp at r = 0 gets 0:
    a coincident point gives a finite gradient, never NaN.
    """
    if kind == POISSON:
        r = torch.sqrt(s)
        m, n = torch.maximum(t, r), torch.minimum(t, r)
        inv = 1.0 / (m * (1.0 + (n / m) ** 2))  # m / (t^2 + s)
        return (-2.0 * p) * (inv / m), (-2.0 * p) * ((t / m) * inv)
    if kind == GAUSSIAN:
        inv_t = 1.0 / t
        return (-2.0 * p) * (inv_t * inv_t), (2.0 * p) * ((s * inv_t) * inv_t) * inv_t  # c: shaped like t
    r = torch.sqrt(s)
    u = r / t
    if kind == TANH:
        th = torch.tanh(u)
        ratio = torch.where(u > 0, th / u, torch.ones_like(u))  # tanh(u) / u, 1 at u = 0
        c = -2.0 * (ratio / t) / t
        dt = 2.0 * (th * u) / t
    elif kind == EXP:
        c = torch.where(r > 0, -1.0 / (r * t), torch.zeros_like(r))
        dt = u / t
    else:
        raise ValueError(f"unknown log-weight kind {kind}")
    if q != 0:
        c = c - torch.where(s >= TINY, (2.0 * q) / s.clamp_min(TINY), torch.zeros_like(s))
    return c, dt


def _chunk_rows(B: int, d: int, itemsize: int) -> int:
    """Reference rows per chunk of the backward: its temporaries are C*d + about 6*B*C elements."""
    per_row = itemsize * (d + 6 * max(B, 1))
    return max(16, int(config.field_budget_mb() * 2**20) // per_row)


def _row_stats(xc, xn, G, ref, c, t, a, kind, p, q, C):
    """The first pass of the two-pass backward: per row the smallest j-dependent distance part m*, its reference
    index, the normaliser Z = sum_j exp(l_j - l(s*)) and M = sum_j w_j G . y~_j (the distance GEMM, the engine's
    step and the GEMM G y~^T per chunk, online like the forward)."""
    B = xc.shape[0]
    cdt = xc.dtype
    mmin = torch.full((B,), float("inf"), dtype=cdt, device=xc.device)
    jmin = torch.zeros(B, dtype=torch.int64, device=xc.device)
    l = torch.zeros(B, dtype=cdt, device=xc.device)
    l2 = torch.zeros(B, dtype=cdt, device=xc.device)
    M = torch.zeros(B, dtype=cdt, device=xc.device)
    for start in range(0, ref.shape[0], C):
        yc = ref[start:start + C].to(cdt) - c
        yn = torch.linalg.vector_norm(yc, dim=1).square_()
        dots = torch.mm(xc, yc.t())
        gd = torch.mm(G, yc.t())
        alpha = _step(dots, xn, yn, t, a, mmin, jmin, l, l2, start, kind, p, q, True)
        M.mul_(alpha).add_((dots * gd).sum(dim=1))
    return mmin, jmin, l, M / l


def _nearest_distance(x, ref, a, jmin):
    """(B,) ||x_i - a_i ref_jmin_i||^2 by a direct difference (x in the compute dtype), as the forward's
    :func:`~fastflow.field.torch_backend.exact_log_norm` takes it."""
    diff = ref.index_select(0, jmin).to(x.dtype)
    diff.mul_(a.unsqueeze(1))
    torch.sub(x, diff, out=diff)
    return torch.linalg.vector_norm(diff, dim=1).square_()


def field_backward(x, ref, t, a, xbar, G, g, kind, p, q, *, chunk_size=None, need_t=True, need_a=True,
                   need_ref=False, two_pass=None):
    """The streamed vector-Jacobian product of (xbar, log_norm) at (x, t, a, ref) (module docstring).

    Args:
        x: (B, d), ref: (R, d) (any floating dtype); t, a: (B,) in the compute dtype; xbar: (B, d) the forward's
            posterior mean (compute dtype); G: (B, d) and g: (B,) the upstream gradients of xbar and log_norm.
        kind, p, q: the log-weight.  chunk_size: reference rows per step (default: from the memory budget).
        need_t, need_a, need_ref: which gradients to form (x's always is).
        two_pass: first find each row's final normaliser and M = sum_j w_j G . y~_j (one GEMM pair per chunk
            more), then form the gradients with the final weights; None: for float32 compute and for ``need_ref``.
            One pass takes G . (xbar - c) from the forward's xbar instead of M: the same number, but not from the
            same rounded G . y~_j, so where one point carries nearly all the weight beta_j's cancellation
            G . (y~_j - x~bar) leaves ~eps |G| |y~| instead of 0: harmless in float64 (eps 1e-16); in float32 it
            measured 3e-5 of the gradient at d = 192 (tests/test_field_grad.py), 7x plain float32 autograd's.

    Returns:
        (grad_x (B, d), grad_t (B,) or None, grad_a (B,) or None, grad_ref (R, d) or None), in the compute dtype.
    """
    B, d = x.shape
    R = ref.shape[0]
    cdt = xbar.dtype
    dev = x.device
    C = chunk_size or _chunk_rows(B, d, torch.finfo(cdt).bits // 8)
    G = G.to(cdt)
    g = g.to(cdt)
    c = torch.mean(ref, dim=0, dtype=cdt)  # always centred: no host read, and the gradients cancel like xbar
    xd = x.to(cdt)
    xc = xd - a[:, None] * c
    xn = torch.linalg.vector_norm(xc, dim=1).square_()
    if two_pass is None:
        two_pass = need_ref or cdt != torch.float64
    two_pass = two_pass or need_ref  # grad_ref needs every chunk's final weights (the sum over i mixes rows)
    if two_pass:  # start from the final m* and normaliser: every chunk's weights are then final (alpha = 1)
        mmin, jmin, Z, M = _row_stats(xc, xn, G, ref, c, t, a, kind, p, q, C)
        base = g - M  # beta_j = w_j (G . y~_j - M + g), M from the same G . y~_j: exact where w_j = 1
        inv_Z = (1.0 / Z)[:, None] if need_ref else None
        grad_ref = torch.empty(R, d, dtype=cdt, device=dev) if need_ref else None
    else:
        base = g - (G * (xbar - c)).sum(dim=1)  # g - G . (xbar - c): beta_j = w_j (G . y~_j + base)
        mmin = torch.full((B,), float("inf"), dtype=cdt, device=dev)
        jmin = torch.zeros(B, dtype=torch.int64, device=dev)
    l = torch.zeros(B, dtype=cdt, device=dev)
    l2 = torch.zeros(B, dtype=cdt, device=dev)
    V = None  # (B, d) sum_j beta_j c_j y~_j, created by the first chunk's GEMM
    S1 = torch.zeros(B, dtype=cdt, device=dev)
    S2 = torch.zeros(B, dtype=cdt, device=dev) if need_a else None
    T = torch.zeros(B, dtype=cdt, device=dev) if need_t else None
    a2yn_scale = (a * a)[:, None]
    with dispatch.fp32_matmul_precision("ieee", dev):
        for start in range(0, R, C):
            yc = ref[start:start + C].to(cdt) - c
            yn = torch.linalg.vector_norm(yc, dim=1).square_()
            dots = torch.mm(xc, yc.t())
            gd = torch.mm(G, yc.t())
            m = torch.addcmul(a2yn_scale * yn[None, :], a[:, None], dots, value=-2.0)  # s_ij = xn_i + m_ij
            alpha = _step(dots, xn, yn, t, a, mmin, jmin, l, l2, start, kind, p, q, True)  # dots: exp(l - l*)
            # s_ij = s*_i + (m_ij - m*_i): the gap as the forward takes it, and s* by a direct difference against
            # the row's arg-min point (the GEMM form's absolute error ~eps ||x - a c||^2 would be a relative
            # error of ~1e-5 in the dominant point's dl/ds at t ~ 0.3 of the data scale; B*d work per chunk)
            s = split_distance(xn[:, None], m, mmin[:, None])[0].add_(_nearest_distance(xd, ref, a, jmin)[:, None])
            beta = gd.add_(base[:, None]).mul_(dots)  # unnormalised: the sums are divided by l at the end
            cs, dls_dt = log_weight_derivatives(s, t[:, None], kind, p, q)
            bc = cs.mul_(beta) if cs.shape == beta.shape else beta * cs  # cs is a fresh tensor (or t's shape)
            if T is not None:
                T.mul_(alpha).add_((beta * dls_dt).sum(dim=1))
            S1.mul_(alpha).add_(bc.sum(dim=1))
            if S2 is not None:
                S2.mul_(alpha).add_(bc @ yn)
            if V is None:
                V = torch.mm(bc, yc)
            else:
                V.mul_(alpha[:, None]).addmm_(bc, yc)
            if need_ref:  # with the final weights w_ij = dots_ij / Z_i (pass 1's Z; alpha is 1 up to rounding)
                gr = grad_ref[start:start + C]
                torch.mm(dots.mul_(inv_Z).t(), G, out=gr)              # sum_i w_ij G_i
                abc = bc * (a[:, None] * inv_Z)
                gr.addmm_(abc.t(), xc, alpha=-1.0)                  # - sum_i a_i beta_ij c_ij x_c,i
                gr.addcmul_(yc, (abc * a[:, None]).sum(dim=0)[:, None])  # + y~_j sum_i a_i^2 beta_ij c_ij
    # normalised by this pass's own sum of the weights it used: the C++ step may round the arg-min's m one ulp
    # apart from pass 1's, and the ratio stays exact where pass 1's Z would not
    S1 = S1 / l
    V = V / l[:, None]
    grad_x = S1[:, None] * xc - a[:, None] * V
    grad_t = T / l if need_t else None
    grad_a = None
    if need_a:
        grad_a = -(grad_x @ c) - (V * xc).sum(dim=1) + a * (S2 / l)
    return grad_x, grad_t, grad_a, (grad_ref if need_ref else None)


class _FieldFunction(torch.autograd.Function):
    """(xbar, log_norm, ess) of the fast engine, differentiable in x, t, ref and a (ess is not)."""

    @staticmethod
    def forward(ctx, x, t, ref, a, run, kind, p, q, chunk_size):
        xbar, log_norm, ess = run(x, t, ref, a)
        ctx.mark_non_differentiable(ess)
        ctx.save_for_backward(x, t, ref, a, xbar)
        ctx.params = (kind, p, q, chunk_size)
        return xbar, log_norm, ess

    @staticmethod
    @once_differentiable
    def backward(ctx, G, g, _ess):
        x, t, ref, a, xbar = ctx.saved_tensors
        kind, p, q, chunk_size = ctx.params
        need_x, need_t, need_ref, need_a = ctx.needs_input_grad[:4]
        if x.shape[0] == 0:
            gx, gt, ga, gr = torch.zeros_like(x), torch.zeros_like(t), torch.zeros_like(a), torch.zeros_like(ref)
        else:
            gx, gt, ga, gr = field_backward(x, ref, t, a, xbar, G, g, kind, p, q, chunk_size=chunk_size,
                                            need_t=need_t, need_a=need_a, need_ref=need_ref)
        return (gx.to(x.dtype) if need_x else None, gt.to(t.dtype) if need_t else None,
                gr.to(ref.dtype) if need_ref else None, ga.to(a.dtype) if need_a else None,
                None, None, None, None, None)


def field_grad(run: Callable, x, t, ref, a, kind: int, p: float, q: float, chunk_size: int | None = None):
    """``run(x, t, ref, a)`` -> (xbar, log_norm, ess) of a fast backend, made differentiable in x (B, d), t (B,),
    ref (R, d) and a (B,) by the streamed backward :func:`field_backward`."""
    return _FieldFunction.apply(x, t, ref, a, run, kind, p, q, chunk_size)
