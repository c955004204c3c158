"""Any radial CDF psi_t(r): the general reverse construction (docs/math.md, "Any radial CDF").

A user gives psi(r, t), the probability that the perturbation x_t - x0 lies within radius r, as elementwise torch
ops. The construction needs, per reference point at distance r,

    log phi   = log d_r psi_t(r) - (d - 1) log r                      (the density weight)
    log |phi~| = log |-d_t psi_t(r) - lam'_t| - d log r,  sign phi~    (the flux weight, lam the seed's free lam_t)

and the velocity f = sum_j phi~_j (x - x0_j) / sum_j phi_j. :class:`UserPsi` derives both partial derivatives by
autograd in float64 (one backward per streaming chunk), checks the seed's four conditions at construction, and
draws radii by inverting psi_t(r) = U with a bisection in log r of a fixed number of steps (no host read,
vectorised on the device, safe for any non-decreasing psi).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .field import logweights as LW

__all__ = ["UserPsi", "PSI_BUILTINS"]

#: the built-in radial CDFs as callables (for RadialCDF("tanh", lam=...), which needs the general construction),
#: in forms whose autograd derivatives keep full relative precision in the tail: tanh u = 1 - 2 sigmoid(-2u)
#: (torch.tanh's backward, 1 - tanh^2, cancels to 0 beyond u ~ 19) and 1 - exp(-u) (torch.expm1's backward,
#: expm1(-u) + 1, cancels to 0 beyond u ~ 37; exp's backward is its result, exact)
PSI_BUILTINS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "tanh": lambda r, t: 1.0 - 2.0 * torch.sigmoid(-2.0 * r / t),
    "exp": lambda r, t: 1.0 - torch.exp(-r / t),
}

#: the bisection's bracket in log r (float64's exp range) and its steps: 1400 / 2^64 < 1e-16, a float64 ulp of r
LOG_R_MIN, LOG_R_MAX, BISECTION_STEPS = -700.0, 700.0, 64

#: the spot-check grid of the construction checks
_CHECK_T = (1e-2, 0.1, 0.5, 1.0, 3.0, 10.0)
_CHECK_R = tuple(10.0 ** k for k in range(-6, 7)) + (0.3, 0.7, 1.5, 2.0, 5.0)


def _name(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


class UserPsi:
    """A user's radial CDF psi(r, t) and optional lam(t), with their derivatives by autograd.

    Args:
        psi: callable (r, t) -> Tensor, elementwise and differentiable in torch ops (r >= 0, t > 0 broadcast).
        lam: callable t -> Tensor, the seed's free function lam_t (None: 0).

    Raises:
        TypeError / ValueError at construction where a condition fails (see :meth:`check`).
    """

    def __init__(self, psi: Callable, lam: Callable | None = None) -> None:
        if not callable(psi):
            raise TypeError(f"psi must be 'tanh', 'exp' or a callable psi(r, t) -> Tensor, got {type(psi).__name__}")
        if lam is not None and not callable(lam):
            raise TypeError(f"lam must be a callable lam(t) -> Tensor or None, got {type(lam).__name__}")
        self.psi = psi
        self.lam = lam
        self.check()

    def __repr__(self) -> str:
        return _name(self.psi) + ("" if self.lam is None else f", lam={self.lam_name}")

    @property
    def lam_name(self) -> str:
        return "None" if self.lam is None else _name(self.lam)

    # -- evaluation ------------------------------------------------------------------------------------------------

    def _call(self, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self.psi(r, t)
        if not isinstance(out, torch.Tensor) or out.shape != torch.broadcast_shapes(r.shape, t.shape):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"psi(r, t) must return a tensor of the broadcast shape of r and t (elementwise torch "
                             f"ops), got {got} for r {tuple(r.shape)}, t {tuple(t.shape)}")
        return out

    def derivatives(self, r: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(psi, d_r psi, d_t psi) at (r, t), r (B, C) and t (B, 1) float64: one forward and one backward.

        Differentiable itself where torch's grad mode is on at the call (create_graph), for autograd through the
        field.
        """
        create = torch.is_grad_enabled() and (r.requires_grad or t.requires_grad)
        with torch.enable_grad():
            rr = r if r.requires_grad else r.detach().requires_grad_(True)
            tt = t.expand_as(r) if t.requires_grad else t.detach().expand_as(r).clone().requires_grad_(True)
            out = self._call(rr, tt)
            dr, dt = torch.autograd.grad(out.sum(), (rr, tt), create_graph=create, allow_unused=True)
        dr = torch.zeros_like(r) if dr is None else dr
        dt = torch.zeros_like(r) if dt is None else dt
        return (out if create else out.detach()), dr, dt

    def d_lam(self, t: torch.Tensor) -> torch.Tensor:
        """lam'(t) for t (B,) float64 (zeros without lam)."""
        if self.lam is None:
            return torch.zeros_like(t)
        create = torch.is_grad_enabled() and t.requires_grad
        with torch.enable_grad():
            tt = t if create else t.detach().clone().requires_grad_(True)
            out = self.lam(tt)
            if not isinstance(out, torch.Tensor) or out.shape != tt.shape:
                raise ValueError(f"lam(t) must return a tensor shaped like t (elementwise torch ops), got "
                                 f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
            (g,) = torch.autograd.grad(out.sum(), (tt,), create_graph=create, allow_unused=True)
        return torch.zeros_like(t) if g is None else g

    def log_weights(self, s: torch.Tensor, t: torch.Tensor, dlam: torch.Tensor, d: int, flux: bool):
        """The density and (with ``flux``) flux log-weights at squared distances s (B, C), times t (B, 1), lam'_t
        (B, 1), all float64: (log phi, log |phi~| or None, sign phi~ or None), each (B, C).

        s is clamped at :data:`fastflow.field.logweights.TINY` (a coincident point gets a finite, dominating
        weight, as for the built-in kinds).
        """
        sc = s.clamp_min(LW.TINY)
        _, dr, dt = self.derivatives(torch.sqrt(sc), t)
        if torch.is_grad_enabled() and (dr.requires_grad or dt.requires_grad):  # autograd through the field
            log_s = torch.log(sc)
            log_phi = torch.log(dr) - 0.5 * (d - 1) * log_s
            if not flux:
                return log_phi, None, None
            num = -dt - dlam
            return log_phi, torch.log(num.abs()) - 0.5 * d * log_s, torch.sign(num)
        # in place on the fresh tensors of the backward (the epilogue is most of the cost beside the GEMMs)
        log_s = sc.log_()
        log_phi = dr.log_().sub_(log_s, alpha=0.5 * (d - 1))
        if not flux:
            return log_phi, None, None
        num = dt.neg_() if self.lam is None else dt.neg_().sub_(dlam)
        sign = torch.sign(num)
        return log_phi, num.abs_().log_().sub_(log_s, alpha=0.5 * d), sign

    def divergence_weights(self, s: torch.Tensor, t: torch.Tensor, dlam: torch.Tensor, d: int):
        """The weights of the divergence of f = sum_j phi~_j (x - x0_j) / Z, Z = sum_j phi_j, at squared distances
        s (B, C), t and lam'_t (B, 1), float64 (no autograd through them):

            div f = sum_j h_j / Z - f . sum_j q_j (x - x0_j) / Z,
            h_j = -d_r d_t psi / r^(d-1)   (div of phi~_j (x - x0_j): lam's point-source term drops out),
            q_j = phi_j c_j = (r d_rr psi - (d - 1) d_r psi) / r^(d+1)   (grad phi_j = q_j (x - x0_j)).

        Returns (log phi, (log|phi~|, sign), (log|q|, sign), (log|h|, sign)), each (B, C); s clamped at TINY.
        """
        sc = s.clamp_min(LW.TINY)
        r = torch.sqrt(sc)
        with torch.enable_grad():
            rr = r.detach().requires_grad_(True)
            tt = t.detach().expand_as(r).clone().requires_grad_(True)
            out = self._call(rr, tt)
            dr, dt = torch.autograd.grad(out.sum(), (rr, tt), create_graph=True)
            drr, drt = (torch.autograd.grad(g.sum(), (rr,), retain_graph=True, allow_unused=True)[0]
                        for g in (dr, dt))
        zero = torch.zeros_like(r)
        dr, dt = dr.detach(), dt.detach()
        drr = zero if drr is None else drr.detach()
        drt = zero if drt is None else drt.detach()
        log_s = torch.log(sc)
        log_phi = torch.log(dr) - 0.5 * (d - 1) * log_s
        num = -dt - dlam
        qn = r * drr - (d - 1) * dr
        return (log_phi, (torch.log(num.abs()) - 0.5 * d * log_s, torch.sign(num)),
                (torch.log(qn.abs()) - 0.5 * (d + 1) * log_s, torch.sign(qn)),
                (torch.log(drt.abs()) - 0.5 * (d - 1) * log_s, -torch.sign(drt)))

    def inverse(self, u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """r with psi_t(r) = u, for u in [0, 1) and t > 0, (n,) float64: bisection in log r over
        [e^-700, e^700], 64 halvings (width < 1e-16 in log r); the bracket's upper end where psi_t never reaches u.
        """
        lo = torch.full_like(u, LOG_R_MIN)
        hi = torch.full_like(u, LOG_R_MAX)
        with torch.no_grad():
            for _ in range(BISECTION_STEPS):
                mid = 0.5 * (lo + hi)
                below = self._call(torch.exp(mid), t) < u
                lo = torch.where(below, mid, lo)
                hi = torch.where(below, hi, mid)
        return torch.exp(0.5 * (lo + hi))

    # -- the construction's conditions -----------------------------------------------------------------------------

    def check(self) -> None:
        """Spot checks of the seed's conditions on a grid of r and t (float64), raising ValueError naming the one
        that fails: psi finite in [0, 1] with finite derivatives, psi_t(0) = 0, psi_t(inf) = 1, increasing in r
        (d_r psi >= 0, > 0 somewhere), psi_t(r) -> 1 as t -> 0 for r > 0; lam, if given, finite with a finite
        derivative."""
        f64 = dict(dtype=torch.float64)
        t = torch.tensor(_CHECK_T, **f64)[:, None]
        r = torch.tensor(sorted(_CHECK_R), **f64)[None, :].expand(len(_CHECK_T), -1)
        try:
            v, dr, dt = self.derivatives(r.clone(), t)
        except (RuntimeError, TypeError) as e:  # not torch ops, or not differentiable
            raise ValueError(f"psi(r, t) must be elementwise torch ops differentiable in r and t: {e}") from e
        for name, val in (("psi", v), ("d psi / dr", dr), ("d psi / dt", dt)):
            if not bool(torch.isfinite(val).all()):
                i, j = map(int, torch.nonzero(~torch.isfinite(val))[0])
                raise ValueError(f"{name} is not finite at r={float(r[i, j]):g}, t={float(t[i, 0]):g} (NaN or "
                                 f"inf): psi must be finite and differentiable for r >= 0, t > 0")
        if bool(((v < -1e-12) | (v > 1 + 1e-12)).any()):
            i, j = map(int, torch.nonzero((v < -1e-12) | (v > 1 + 1e-12))[0])
            raise ValueError(f"psi is a CDF in r and must lie in [0, 1]; psi(r={float(r[i, j]):g}, "
                             f"t={float(t[i, 0]):g}) = {float(v[i, j]):g}")
        tt = t[:, 0]
        zero = self._call(torch.zeros_like(tt), tt)
        if not bool((zero.abs() <= 1e-9).all()):
            i = int(torch.argmax(zero.abs()))
            raise ValueError(f"psi_t(0) must be 0 (condition 1): psi(0, t={float(tt[i]):g}) = {float(zero[i]):g}")
        far = self._call(torch.full_like(tt, 1e30), tt)
        if not bool(((far - 1).abs() <= 1e-6).all()):
            i = int(torch.argmax((far - 1).abs()))
            raise ValueError(f"psi_t(inf) must be 1 (condition 1): psi(1e30, t={float(tt[i]):g}) = "
                             f"{float(far[i]):.9g}")
        if bool((dr < 0).any()) or bool((v[:, 1:] < v[:, :-1] - 1e-12).any()) or not bool((dr > 0).any(1).all()):
            bad = (dr < 0) if bool((dr < 0).any()) else torch.zeros_like(dr, dtype=torch.bool)
            at = ""
            if bool(bad.any()):
                i, j = map(int, torch.nonzero(bad)[0])
                at = f": d psi / dr = {float(dr[i, j]):g} at r={float(r[i, j]):g}, t={float(t[i, 0]):g}"
            raise ValueError(f"psi_t(r) must be increasing in r (condition 2){at}")
        rs = torch.tensor([1e-2, 1.0, 1e2], **f64)
        small = self._call(rs, torch.full_like(rs, 1e-8))
        if not bool(((small - 1).abs() <= 1e-3).all()):
            i = int(torch.argmax((small - 1).abs()))
            raise ValueError(f"psi_t(r) must tend to 1 as t -> 0 for every r > 0 (condition 3): psi(r={float(rs[i]):g}"
                             f", t=1e-8) = {float(small[i]):.6g}")
        if self.lam is not None:
            try:
                dl = self.d_lam(tt.clone())
                lv = self.lam(tt.clone())
            except (RuntimeError, TypeError) as e:
                raise ValueError(f"lam(t) must be elementwise torch ops differentiable in t: {e}") from e
            if not (bool(torch.isfinite(dl).all()) and bool(torch.isfinite(lv).all())):
                raise ValueError("lam(t) and its derivative must be finite for t > 0")

