"""The field of a user's radial CDF: two online log-sum-exps in one streaming pass (docs/math.md, "Any radial CDF").

For psi_t(r) given as a callable (:class:`fastflow.radial.UserPsi`) the density weight phi_j and the flux weight
phi~_j differ, and

    xbar = sum_j phi_j x0_j / sum_j phi_j,        f = sum_j phi~_j (x - x0_j) / sum_j phi_j.

Per chunk of reference rows: one distance GEMM, the log-weights from autograd of psi in float64 (the epilogue,
O(B*C) against the GEMMs' O(B*C*d)), an online log-sum-exp of log phi, and for the velocity an online signed
log-sum-exp of log |phi~| (phi~ may change sign when the seed's lam_t is given) with one weighted-sum GEMM of the
phi~ weights; the posterior mean takes the phi weights instead. No B x R x d tensor exists.

Backends: "reference" (direct differences, float64, for tests); every other choice runs the torch code here,
on any device (the Triton kernels know the closed-form kinds only).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._core import dispatch
from .torch_backend import centring, chunk, chunk_rows

__all__ = ["FluxOutput", "flux_torch", "flux_reference"]

_F64 = torch.float64


@dataclass(frozen=True)
class FluxOutput:
    """(B, d) / (B,) results in the compute dtype: ``xbar`` (phi-mean, or None), ``flux`` (the velocity
    sum_j phi~_j (x - x0_j) / sum_j phi_j, or None), ``log_norm`` (logsumexp_j log phi_j), ``ess``, ``div`` (the
    divergence of ``flux``, (B,), or None)."""

    xbar: torch.Tensor | None
    flux: torch.Tensor | None
    log_norm: torch.Tensor
    ess: torch.Tensor
    div: torch.Tensor | None = None


def _rescale(run_max: torch.Tensor, new_max: torch.Tensor):
    """(exp(old max - new max), the new max made finite): a row whose weights are all 0 so far (max -inf) has
    factor 0 and offset 0, so that exp(l - offset) stays 0 instead of NaN."""
    finite_new = torch.where(torch.isneginf(new_max), torch.zeros_like(new_max), new_max)
    alpha = torch.where(torch.isneginf(run_max), torch.zeros_like(run_max), torch.exp(run_max - finite_new))
    return alpha, finite_new


class _SignedSum:
    """A running sum_j sign_j e^(log|w_j|) relative to a running maximum (an online signed log-sum-exp), and with
    ``gemm`` the weighted sum of the chunk rows sum_j sign_j e^(log|w_j| - max) y_j by one GEMM per chunk."""

    def __init__(self, B: int, device, gemm: bool, cdt) -> None:
        # exp of a log-weight far below the row's maximum would be a subnormal (or 0) and take the CPU's slow
        # path, ~20x an ordinary exp (and again when cast to float32): floor the gap where the result is still
        # a normal number of the GEMM's dtype. A weight of e^-87 (float32) or e^-700 (float64) beside the row's
        # largest, 1, changes no sum (R e^-87 ~ 1e-32 R).
        self.floor = -87.0 if cdt == torch.float32 else -700.0
        self.max = torch.full((B,), float("-inf"), dtype=_F64, device=device)
        self.sum = torch.zeros(B, dtype=_F64, device=device)
        self.acc = None
        self.gemm, self.cdt = gemm, cdt

    def add(self, log_abs, sign, yq, grad: bool):
        """Fold in a chunk: log|w| (B, C) float64 (consumed unless ``grad``), sign (B, C) or None (positive)."""
        new = torch.maximum(self.max, log_abs.max(dim=1).values)
        alpha, off = _rescale(self.max, new)
        if grad:
            w = torch.exp((log_abs - off[:, None]).clamp_min(self.floor))
            w = w if sign is None else w * sign
        else:
            w = log_abs.sub_(off[:, None]).clamp_min_(self.floor).exp_()
            if sign is not None:
                w.mul_(sign)
        self.sum = self.sum * alpha + w.sum(dim=1)
        if self.gemm:
            part = torch.mm(w.to(yq.dtype), yq).to(self.cdt)
            self.acc = part if self.acc is None else self.acc * alpha.to(self.cdt)[:, None] + part
        self.max = new
        return w, alpha

    def moment(self, xc, scale, grad: bool):
        """scale * sum_j w_j (x - y_j) / e^max = scale (sum x_c - acc) in the centred frame, (B, d) in the compute
        dtype (scale (B,) float64). One (B, d) buffer (in place on acc unless ``grad``): on a CPU, (B, d) passes
        over fresh memory cost about as much as the epilogue's (B, C) ones at CIFAR sizes."""
        s, k = self.sum.to(self.cdt)[:, None], scale.to(self.cdt)[:, None]
        if grad:
            return k * (s * xc - self.acc)
        return torch.addcmul(self.acc.neg_(), xc, s).mul_(k)

    def ratio(self, other: _SignedSum):
        """e^(max - other.max) / other.sum (0 where this sum has no weight), (B,) float64."""
        return torch.where(torch.isneginf(self.max), torch.zeros_like(self.max),
                           torch.exp(self.max - other.max) / other.sum)


def _exact_nearest(s, x, ref, start: int, cdt, grad: bool):
    """s (B, C) with each row's smallest entry replaced by the exact squared distance, by a direct difference.

    The GEMM form of s carries an absolute error ~eps ||x - c|| ||y - c||, which swamps s itself for a query that
    sits on a reference point (s ~ 1e-4 against an error ~1e-4 in float32 at d = 3072). The closed-form kinds
    do not care (their velocity (x - xbar) / t barely depends on that weight), but a user psi's does: phi ~
    r^-(d-1) and phi~ ~ r^-d put 1/r of the nearest point into f. One (B, d) difference per chunk fixes it.
    """
    j = s.argmin(dim=1)
    diff = ref.index_select(0, j + start).to(cdt)
    diff = x.to(cdt) - diff if grad else torch.sub(x.to(cdt), diff, out=diff)
    s_near = torch.linalg.vector_norm(diff, dim=1, dtype=_F64).square()[:, None]
    return s.scatter(1, j[:, None], s_near) if grad else s.scatter_(1, j[:, None], s_near)


def flux_torch(x, ref, t, psi, *, mean: bool, flux: bool, div: bool = False, precision: str = "ieee",
               chunk_size: int | None = None) -> FluxOutput:
    """Streaming phi-mean and/or velocity (and with ``div`` its divergence) of ``psi`` (a
    :class:`fastflow.radial.UserPsi`).

    Args:
        x: (B, d), ref: (R, d) in the compute dtype's family; t: (B,) in the compute dtype. (No path scale: a
            radial CDF perturbs x0 itself.)
        mean / flux: which weighted sums to form (one GEMM each per chunk); ``div`` implies ``flux`` and adds one
            GEMM (:meth:`fastflow.radial.UserPsi.divergence_weights`).

    Returns:
        :class:`FluxOutput` in the compute dtype.
    """
    flux = flux or div
    B, d = x.shape
    R = ref.shape[0]
    cdt = torch.float64 if x.dtype == _F64 else torch.float32
    c, xc, xn, yn_raw = centring(x, ref, torch.ones_like(t), cdt)
    t64 = t.to(_F64)[:, None]
    # under autograd (x or t requires grad) the same ops out of place: the backward is autograd's through this
    # stream, holding O(B R) weights and the centred chunks, never a B x R x d tensor
    grad = torch.is_grad_enabled() and (x.requires_grad or t.requires_grad)
    if grad and div:
        raise NotImplementedError("the divergence of a user psi's field is not differentiable; call it under "
                                  "torch.no_grad() or on inputs that do not require grad")
    if grad:
        xn = (xc * xc).sum(dim=1)
    xn64 = xn.to(_F64)[:, None]
    dlam = psi.d_lam(t.to(_F64))[:, None] if flux else None
    dev = x.device
    jmax = torch.zeros(B, dtype=torch.int64, device=dev)
    l2 = torch.zeros(B, dtype=_F64, device=dev)
    phi = _SignedSum(B, dev, mean, cdt)
    fl = _SignedSum(B, dev, True, cdt) if flux else None
    q = _SignedSum(B, dev, True, cdt) if div else None
    h = _SignedSum(B, dev, False, cdt) if div else None
    # the float64 epilogue keeps about twice the built-in kinds' (B, C) temporaries: budget them as 16-byte items
    C = chunk_size or chunk_rows(B, d, 24 if div else 16)
    mm_dtype = torch.bfloat16 if precision == "bf16" and cdt == torch.float32 else cdt
    xq = xc.to(mm_dtype)
    with dispatch.fp32_matmul_precision(precision, dev):
        for start in range(0, R, C):
            yc, yn = chunk(ref, start, C, c, yn_raw, cdt)
            yq = yc.to(mm_dtype)
            # s = ||x||^2 + ||y||^2 - 2 x.y in float64, in place on the GEMM's (converted) output
            dots = torch.mm(xq, yq.t()).to(_F64)
            if grad:
                s = (xn64 + yn.to(_F64)[None, :] - 2.0 * dots).clamp_min(0.0)
            else:
                s = dots.mul_(-2.0).add_(xn64).add_(yn.to(_F64)[None, :]).clamp_min_(0.0)
            s = _exact_nearest(s, x, ref, start, cdt, grad)
            if div:
                log_phi, (log_fl, sign), (log_q, sign_q), (log_h, sign_h) = psi.divergence_weights(s, t64, dlam, d)
            else:
                log_phi, log_fl, sign = psi.log_weights(s, t64, dlam, d, flux)
            chunk_max, chunk_arg = log_phi.max(dim=1)
            jmax = torch.where(chunk_max > phi.max, chunk_arg + start, jmax)
            w, alpha = phi.add(log_phi, None, yq, grad)
            l2 = l2 * (alpha * alpha) + torch.linalg.vector_norm(w, dim=1).square()
            if flux:
                fl.add(log_fl, sign, yq, grad)
            if div:
                q.add(log_q, sign_q, yq, grad)
                h.add(log_h, sign_h, yq, grad)
    l = phi.sum
    if mean:
        # log sum phi = log phi(s*) + log l, with s* of the arg-max point by a direct difference (the GEMM form of
        # s carries ~eps ||x - c||^2, which would swamp log phi at small t); the velocity needs no log_norm
        diff = ref.index_select(0, jmax).to(cdt)
        diff = x.to(cdt) - diff if grad else torch.sub(x.to(cdt), diff, out=diff)
        s_exact = torch.linalg.vector_norm(diff, dim=1, dtype=_F64).square()[:, None]
        log_norm = (psi.log_weights(s_exact, t64, None, d, False)[0][:, 0] + torch.log(l)).to(cdt)
    else:
        log_norm = (phi.max + torch.log(l)).to(cdt)
    xbar = None
    if mean:
        xbar = phi.acc / l.to(cdt)[:, None]
        if c is not None:
            xbar = xbar + c
    out_flux = out_div = None
    if flux:
        # f = sum_j phi~_j (x - x0_j) / sum_j phi_j, both sums relative to their own running maxima
        out_flux = fl.moment(xc, fl.ratio(phi), grad)
    if div:
        # div f = sum_j h_j / Z - f . sum_j q_j (x - x0_j) / Z  (fastflow.radial.UserPsi.divergence_weights)
        dot = (out_flux * q.moment(xc, q.ratio(phi), grad)).sum(dim=1, dtype=_F64)
        out_div = (h.ratio(phi) * h.sum - dot).to(cdt)
    return FluxOutput(xbar, out_flux, log_norm, (l * l / l2).to(cdt), out_div)


def flux_reference(x, ref, t, psi, *, div: bool = False, block_elems: int = 1 << 24) -> FluxOutput:
    """The same by direct (b, R, d) differences, float64 in, float64 out: the check of :func:`flux_torch`. With
    ``div``, div f = sum_j h_j / Z - f . sum_j q_j (x - x0_j) / Z by the same direct sums."""
    B, d = x.shape
    R = ref.shape[0]
    rows = max(1, block_elems // max(1, R * d))
    xbar, fl, log_norm, ess, dv = [], [], [], [], []
    dlam_all = psi.d_lam(t)
    for i in range(0, B, rows):
        xi, ti = x[i:i + rows], t[i:i + rows, None]
        diff = xi[:, None, :] - ref[None, :, :]                           # (b, R, d)
        s = (diff * diff).sum(dim=-1)
        dl = dlam_all[i:i + rows, None]
        if div:
            log_phi, (log_fl, sign), (log_q, sign_q), (log_h, sign_h) = psi.divergence_weights(s, ti, dl, d)
        else:
            log_phi, log_fl, sign = psi.log_weights(s, ti, dl, d, True)
        lse = torch.logsumexp(log_phi, dim=1)
        w = torch.exp(log_phi - lse[:, None])
        xbar.append(w @ ref)
        wf = sign * torch.exp(log_fl - lse[:, None])                        # phi~_j / sum_k phi_k
        f = (wf[:, :, None] * diff).sum(dim=1)
        fl.append(f)
        log_norm.append(lse)
        ess.append(1.0 / (w * w).sum(dim=1))
        if div:
            qz = sign_q * torch.exp(log_q - lse[:, None])
            hz = sign_h * torch.exp(log_h - lse[:, None])
            dv.append(hz.sum(dim=1) - (f * (qz[:, :, None] * diff).sum(dim=1)).sum(dim=1))
    return FluxOutput(torch.cat(xbar), torch.cat(fl), torch.cat(log_norm), torch.cat(ess),
                      torch.cat(dv) if div else None)


def evaluate(law, psi, x, t, ref, *, mean: bool, flux: bool, div: bool = False, backend: str | None = None,
             precision: str = "ieee", chunk_size: int | None = None):
    """:func:`fastflow.field.evaluate` for a user's radial CDF ``psi``: a FieldResult whose ``xbar`` is the
    phi-mean (with ``mean``; else None), whose ``velocity`` is the flux field (with ``flux`` or ``div``; else
    None) and whose ``divergence`` is its divergence (with ``div``)."""
    from . import check_finite, prepare

    pre = prepare(law, x, t, ref, precision=precision, chunk_size=chunk_size)
    if pre.B == 0:
        return pre.empty(velocity=True, divergence=True)
    x2, ref2, tt, cdt, chunk_size = pre.x2, pre.ref2, pre.t, pre.cdt, pre.chunk_size
    if dispatch.select_backend(x2.device, backend) == "reference":
        out = flux_reference(x2.to(_F64), ref2.to(_F64), tt.to(_F64), psi, div=div)
        out = FluxOutput(*(None if v is None else v.to(cdt) for v in (out.xbar if mean else None,
                                                                       out.flux if flux or div else None,
                                                                       out.log_norm, out.ess, out.div)))
    else:
        out = flux_torch(x2, ref2, tt, psi, mean=mean, flux=flux, div=div, precision=precision,
                         chunk_size=chunk_size)
    check_finite(f"{law!r}", *(v for v in (out.xbar, out.flux, out.log_norm, out.div) if v is not None))
    return pre.result(out.xbar, out.log_norm, out.ess, velocity=out.flux, divergence=out.div)
