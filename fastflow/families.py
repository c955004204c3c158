"""The ODE constructions (docs/math.md, "The isotropic families"): each family's law, and nothing else.

Every family has the velocity f_t(x) = (x - xbar(x, t)) / t, where xbar = E[x0 | x_t = x] under the empirical
distribution of a reference set, and only the log-weight l(r^2, t) of reference point j changes; its
perturbation is x_t = a_t x0 + t rho g with g ~ N(0, I_d) and one radius factor rho per row; its prior is
T rho g. A family states exactly those laws:

- ``weight_params(d)``: (kind, p, q) of the log-weight (:mod:`fastflow.field.logweights`), and
  ``reference_log_weight(d)``: the same written from the formula, for the float64 reference backend;
- ``path_scale(t)``: a_t;  ``radius``: the law of rho (:class:`fastflow.draws.Radius`);
  ``prior_scale(T)``: the prior's noise scale;  ``t_max``: the largest t.

The engine (:func:`fastflow.field.evaluate`) and the draws (:func:`fastflow.draws.perturb` / ``prior``) do the
rest, so adding a family touches this file only.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch

from . import draws
from . import field as _field
from ._core import nvtx
from ._core import validate as V
from ._core.types import DeviceLike, LogWeight, Shape, Time
from .field import FieldStats
from .field import divergence as _divergence
from .field import flux as _flux
from .field import logweights as LW
from .radial import PSI_BUILTINS, UserPsi

__all__ = ["Family", "Poisson", "Gaussian", "RadialCDF"]


class Family:
    """Base class of the families: the public methods, on top of the laws that each subclass states."""

    #: largest allowed t (None: unbounded)
    t_max: float | None = None
    #: the law of the per-row radius factor rho of the noise t rho g
    radius: draws.Radius | None = None

    # -- the laws ------------------------------------------------------------------------------------------------

    def weight_params(self, d: int) -> tuple[int, float, float]:
        """(kind, p, q) of :mod:`fastflow.field.logweights` for dimension d."""
        raise NotImplementedError(
            f"{type(self).__name__} states no log-weight kind of fastflow.field.logweights: the engine knows the "
            "built-in kernels only. Build a new construction with fastflow.RadialCDF(psi) (any radial CDF, as a "
            "callable) or fastflow.AffinePath(scheduler, source) (any schedule)")

    def reference_log_weight(self, d: int) -> LogWeight:
        """The log-weight written straight from the formula, as f(r2, t); used by the reference backend."""
        raise NotImplementedError(f"{type(self).__name__} states no reference log-weight")

    def path_scale(self, t: torch.Tensor) -> torch.Tensor:
        """a_t of the path x_t = a_t x0 + noise: the field compares x with a_t * ref_j (1 unless overridden)."""
        return torch.ones_like(t)

    def noise_scale(self, t: torch.Tensor) -> torch.Tensor:
        """s_t of the noise s_t rho g in x_t, and the time the log-weight sees: t (an affine path's sigma_t)."""
        return t

    def prior_scale(self, T: torch.Tensor) -> torch.Tensor:
        """The noise scale of the prior: T (the law of x_T without the data term)."""
        return T

    def velocity_coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A_t, B_t), each (B,), of the velocity f = A_t x + B_t xbar: (1/t, -1/t) here; an affine path's
        (sigma'/sigma, alpha' - sigma' alpha / sigma). The divergence is then d A_t + B_t tr(dxbar/dx)."""
        inv = 1.0 / t
        return inv, -inv

    def log_kernel_constant(self, d: int, tau: torch.Tensor) -> torch.Tensor:
        """log K of p_t(x | x0) = K exp(l(|x - a_t x0|^2, tau)) in dimension d, tau = ``noise_scale(t)`` (B,):
        the factor the log-weight l leaves out (:func:`fastflow.field.divergence.log_kernel_constant`)."""
        kind, p, q = self.weight_params(d)
        return _divergence.log_kernel_constant(kind, p, q, d, tau)

    # -- the public methods ----------------------------------------------------------------------------------------

    @nvtx.annotate("fastflow.family.perturb")
    @V.checked
    def perturb(self, x0: torch.Tensor, t: Time, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw x_t ~ p_t(. | x0) for each row: x_t = a_t x0 + t rho g, g ~ N(0, I_d).

        Poisson(D): rho = 1 / ||h||, h ~ N(0, I_D).  Gaussian: rho = 1.  RadialCDF: rho g = Psi^{-1}(U) g / ||g||.
        RectifiedFlow: a_t = 1 - t, rho = 1.  (a_t = 1 for the others.)

        Args:
            x0: (B, *shape) data points.
            t: float or (B,) tensor > 0 (<= 1 for RectifiedFlow): each row's time.
            generator: a torch.Generator on x0's device, or None for that device's default generator.

        Returns:
            (B, *shape) in x0's dtype; float16/bfloat16 are drawn in float32 and rounded once.
        """
        return draws.perturb(self, x0, t, generator=generator)

    @nvtx.annotate("fastflow.family.prior")
    @V.checked
    def prior(self, n: int, shape: Shape, *, T: Time, generator: torch.Generator | None = None,
              device: DeviceLike = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """n draws of x_T from the prior: T rho g, the perturbation at t = T without the data term.

        Poisson(D): multivariate Student-t (nu = D, scale T / sqrt(D)); D = 1 is PFGM's multivariate Cauchy.
        Gaussian: N(0, T^2 I).  RadialCDF: radius T Psi^{-1}(U) in a uniform direction.
        RectifiedFlow: N(0, I) whatever T (T is still checked to be in (0, 1]).

        Args:
            n: number of points (>= 0).  shape: the per-point shape (an int or a tuple; () for scalars).
            T: float or (n,) tensor > 0, the prior time.
            generator: a torch.Generator on ``device``, or None.
            device: where to draw; None: the generator's device, else torch's default device.
            dtype: output dtype; float16/bfloat16 are drawn in float32 and rounded once.

        Returns:
            (n, *shape) tensor of ``dtype``.
        """
        return draws.prior(self, n, shape, T=T, generator=generator, device=device, dtype=dtype)

    @nvtx.annotate("fastflow.family.posterior_mean")
    @V.checked
    def posterior_mean(self, x: torch.Tensor, t: Time, ref: torch.Tensor, *, return_stats: bool = False,
                       backend: str | None = None, precision: str = "ieee",
                       chunk_size: int | None = None) -> torch.Tensor | tuple[torch.Tensor, FieldStats]:
        """xbar = sum_j softmax_j(l(||x - a_t ref_j||^2, t)) ref_j = E[x0 | x_t = x] under the empirical data.

        Args:
            x: (B, *shape) points x_t.
            t: float or (B,) tensor > 0: each point's time (sigma, or the augmented radius).
            ref: (R, *shape) reference points x0_j.
            return_stats: also return a :class:`fastflow.FieldStats` (log-normaliser and effective sample size).
            backend: "reference", "torch" or "triton"; default by device (see :mod:`fastflow.field`).
            precision: "ieee" (default, true fp32 dot products), or the opt-in "tf32" (CUDA) / "bf16".
            chunk_size: reference rows per streaming step (default: from a memory budget).

        Returns:
            xbar: (B, *shape) in the dtype of x and ref (which must match; float16/bfloat16 accumulate in float32);
            with ``return_stats``, a tuple (xbar, FieldStats) whose fields are (B,) tensors in the compute dtype.

        Differentiable in x, t (a tensor that requires grad) and ref, xbar and ``stats.log_norm`` alike; on the
        fast backends the backward streams over ref like the forward (:mod:`fastflow.field.autograd`).
        """
        res = self._field(x, t, ref, velocity=False, backend=backend, precision=precision, chunk_size=chunk_size)
        out = res.output(res.xbar)
        return (out, res.stats) if return_stats else out

    @nvtx.annotate("fastflow.family.velocity")
    @V.checked
    def velocity(self, x: torch.Tensor, t: Time, ref: torch.Tensor, *, backend: str | None = None,
                 precision: str = "ieee", chunk_size: int | None = None) -> torch.Tensor:
        """Exact empirical velocity dx/dt = (x - xbar(x, t)) / t of this family's ODE.

        Args and backends as :meth:`posterior_mean`. Returns (B, *shape) in x's dtype; differentiable in x, t
        and ref (streamed backward, :mod:`fastflow.field.autograd`).
        """
        res = self._field(x, t, ref, velocity=True, backend=backend, precision=precision, chunk_size=chunk_size)
        return res.output(self._velocity(res), f"{self!r}.velocity")

    @nvtx.annotate("fastflow.family.log_density")
    @V.checked
    def log_density(self, x: torch.Tensor, t: Time, ref: torch.Tensor, *, backend: str | None = None,
                    precision: str = "ieee", chunk_size: int | None = None) -> torch.Tensor:
        """The normalised log-density log p_t(x) of the perturbed empirical distribution
        p_t = (1/R) sum_j p_t(. | ref_j): ``FieldStats.log_norm`` plus the kernel's normaliser, minus log R.

        Poisson(D): multivariate Student-t (nu = D, scale t / sqrt(D)).  Gaussian: N(x0, t^2 I).  RadialCDF:
        Psi'(r/t) / (t r^(d-1) |S^(d-1)|).  RectifiedFlow: N((1 - t) x0, t^2 I).  AffinePath: its source's law
        scaled by sigma_t around alpha_t x0; a RadialCDF with a user psi: d_r psi / (r^(d-1) |S^(d-1)|).
        Computed in the log domain (finite at d = 3072 and beyond).

        Args:
            x: (B, *shape) points.  t: float or (B,) tensor > 0 (in (0, 1] for the paths).  ref: (R, *shape).
            backend, precision, chunk_size: as :meth:`posterior_mean`.

        Returns:
            (B,) tensor in the compute dtype (float64 for float64 input, else float32).
        """
        res = self._field(x, t, ref, velocity=False, backend=backend, precision=precision, chunk_size=chunk_size,
                          mean=False)
        d = math.prod(res.shape[1:])
        const = self.log_kernel_constant(d, self.noise_scale(res.t)).to(res.log_norm.dtype)
        return res.log_norm + const - math.log(ref.shape[0])

    @nvtx.annotate("fastflow.family.divergence")
    @V.checked
    def divergence(self, x: torch.Tensor, t: Time, ref: torch.Tensor, *, return_velocity: bool = False,
                   backend: str | None = None, precision: str = "ieee",
                   chunk_size: int | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The exact divergence div_x f of this family's velocity f (:meth:`velocity`), in one streaming pass.

        With c_j = 2 dl/ds at s_j = |x - a_t ref_j|^2, tr(dxbar/dx) = sum_j w_j c_j (ref_j - xbar) . (x - a_t ref_j)
        (w the normalised weights), and div f = (d - tr) / t for f = (x - xbar) / t, or d sigma'/sigma +
        (alpha' - sigma' alpha / sigma) tr for an affine path (docs/math.md, "The divergence and the normalisers").
        It costs about 1.5x :meth:`velocity` (a third GEMM); ``backend="reference"`` forms the same sum by direct
        differences, and ``"triton"`` is served by the torch pass. For a RadialCDF with a user psi, the second
        derivatives of psi by autograd (:meth:`fastflow.radial.UserPsi.divergence_weights`), one pass.

        Args:
            x: (B, *shape) points.  t: float or (B,) tensor > 0 (in (0, 1] for the paths).  ref: (R, *shape).
            return_velocity: also return the velocity at (x, t), from the same pass.
            backend, precision, chunk_size: as :meth:`posterior_mean`.

        Returns:
            div: (B,) in the compute dtype (float64 for float64 input, else float32); with ``return_velocity``,
            a tuple (div, velocity), the velocity (B, *shape) in x's dtype as :meth:`velocity` returns it.
        """
        return_velocity = V.flag("return_velocity", return_velocity)
        res, div = self._divergence(x, t, ref, backend=backend, precision=precision, chunk_size=chunk_size)
        V.require_finite(div, lambda: FloatingPointError(
            f"{self!r}.divergence overflows {div.dtype}: raise t, or compute in float64"))
        if not return_velocity:
            return div
        return div, res.output(self._velocity(res), f"{self!r}.velocity")

    def _divergence(self, x, t, ref, *, backend: str | None, precision: str,
                    chunk_size: int | None) -> tuple[_field.FieldResult, torch.Tensor]:
        """The pass behind :meth:`divergence`: (its FieldResult, div f (B,) in the compute dtype)."""
        res, tr = _divergence.evaluate(self, x, t, ref, backend=backend, precision=precision, chunk_size=chunk_size)
        A, Bt = self.velocity_coefficients(res.t)
        return res, math.prod(res.shape[1:]) * A + Bt * tr

    def _field(self, x, t, ref, *, velocity: bool, backend: str | None, precision: str,
               chunk_size: int | None, mean: bool = True) -> _field.FieldResult:
        """The engine's pass behind :meth:`posterior_mean` (``velocity`` False) and :meth:`velocity`; with
        ``mean`` False (:meth:`log_density`) the pass may skip the weighted sum (``xbar`` is then None)."""
        return _field.evaluate(self, x, t, ref, backend=backend, precision=precision, chunk_size=chunk_size,
                               mean=mean)

    def _velocity(self, res: _field.FieldResult) -> torch.Tensor:
        """The (B, d) velocity in the compute dtype from the engine's result: (x - xbar) / t."""
        return (res.x - res.xbar) / res.t[:, None]


class Poisson(Family):
    """PFGM (D=1) and PFGM++ (D>1): log w = -(d+D)/2 * log(t^2 + r^2); t is the augmented radius (z for D=1)."""

    def __init__(self, D: float = 1):
        if isinstance(D, bool) or not isinstance(D, numbers.Real):
            raise TypeError(f"D must be a number >= 1 (the augmented dimensions), got {type(D).__name__}")
        if not math.isfinite(D) or D < 1:
            raise ValueError(f"D must be finite and >= 1 (the augmented dimensions), got {D}")
        self.D = D
        self.radius = draws.Radius(draws.RADIUS_CHI, float(D))  # rho = 1 / ||h||, h ~ N(0, I_D)

    def __repr__(self):
        return f"Poisson(D={self.D})"

    def weight_params(self, d: int) -> tuple[int, float, float]:
        return LW.POISSON, (d + self.D) / 2.0, 0.0

    def reference_log_weight(self, d: int) -> LogWeight:
        D = self.D
        # log(t^2 + r^2) as logaddexp(2 log t, log r^2): t^2 under- or overflows long before the log does
        return lambda r2, t: -(d + D) / 2.0 * torch.logaddexp(2.0 * torch.log(t), torch.log(r2))


class Gaussian(Family):
    """VE / EDM diffusion: log w = -r^2 / (2 t^2); t is sigma."""

    radius = draws.Radius()  # rho = 1

    def __repr__(self):
        return "Gaussian()"

    def weight_params(self, d: int) -> tuple[int, float, float]:
        return LW.GAUSSIAN, 0.5, 0.0

    def reference_log_weight(self, d: int) -> LogWeight:
        return lambda r2, t: -0.5 * (r2 / t) / t  # not r2 / t^2: t^2 underflows at t = 1e-30 in float32


def _log_sech2(u):
    # log sech^2 u = log 4 - 2u - 2 log(1 + e^{-2u}): sech u = 2 e^{-u} / (1 + e^{-2u}), finite for all u >= 0
    return math.log(4.0) - 2.0 * u - 2.0 * torch.log1p(torch.exp(-2.0 * u))


class RadialCDF(Family):
    """Any radial CDF psi_t(r), the reverse construction: psi is "tanh", "exp" or a callable psi(r, t).

    ``"tanh"``: psi_t(r) = tanh(r/t).  ``"exp"``: psi_t(r) = 1 - exp(-r/t). Both are scale families
    psi_t(r) = Psi(r/t) with closed-form kernels: log w = log Psi'(r/t) - (d-1) log r, velocity (x - xbar) / t.

    A callable ``psi(r, t) -> Tensor`` (elementwise torch ops, differentiable in r and t; r >= 0 and t > 0
    broadcast) is any CDF in r meeting the seed's conditions: psi_t(0) = 0, psi_t(inf) = 1, increasing in r, and
    psi_t(r) -> 1 as t -> 0 for r > 0; they are spot-checked at construction on a grid of r and t (ValueError
    naming the one that fails). ``lam`` (a callable of t, default 0) is the seed's free lambda_t. fastflow derives
    by autograd in float64

        log phi = log d_r psi - (d - 1) log r,     phi~ = (-d_t psi - lam'_t) / r^d,

    and computes f = sum_j phi~_j (x - x0_j) / sum_j phi_j in one streaming pass (:mod:`fastflow.field.flux`);
    ``posterior_mean`` is the phi-weighted mean, ``perturb`` / ``prior`` draw the radius psi_t^{-1}(U) by a
    bisection in log r. For a scale family f reduces to (x - xbar) / t. A string psi with a ``lam`` takes the
    general construction too. Example::

        fam = fastflow.RadialCDF(lambda r, t: 0.5 - torch.sigmoid(-2 * r / t) + 0.5 * (1 - torch.exp(-r / t**2)))

    Args:
        psi: "tanh", "exp", or a callable psi(r, t) -> Tensor.
        lam: None, or a callable lam(t) -> Tensor (elementwise, differentiable).
    """

    _LOG_DPSI = {"tanh": _log_sech2, "exp": lambda u: -u}
    _RADIUS = {"tanh": draws.RADIUS_TANH, "exp": draws.RADIUS_EXP}

    def __init__(self, psi: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "tanh", *,
                 lam: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if isinstance(psi, str):
            self.name: str | None = V.choice("RadialCDF name", psi, tuple(self._LOG_DPSI))
            self.user = None if lam is None else UserPsi(PSI_BUILTINS[self.name], lam)
        else:
            self.name = None
            self.user = UserPsi(psi, lam)
        if self.user is None:
            self.radius = draws.Radius(self._RADIUS[self.name])  # radius t Psi^{-1}(U) in a uniform direction
        else:
            self.radius = draws.Radius(draws.RADIUS_USER, inverse=self.user.inverse)  # psi_t^{-1}(U)

    def __repr__(self):
        if self.user is None:
            return f"RadialCDF({self.name!r})"
        if self.name is not None:
            return f"RadialCDF({self.name!r}, lam={self.user.lam_name})"
        return f"RadialCDF({self.user!r})"

    def weight_params(self, d: int) -> tuple[int, float, float]:
        if self.user is not None:
            raise NotImplementedError("a user psi has no closed-form kind: the field runs fastflow.field.flux")
        return (LW.TANH if self.name == "tanh" else LW.EXP), 0.0, (d - 1) / 2.0

    def reference_log_weight(self, d: int) -> LogWeight:
        if self.user is not None:
            user = self.user
            return lambda r2, t: user.log_weights(r2, t, None, d, False)[0]
        log_dpsi = self._LOG_DPSI[self.name]

        def f(r2, t):
            # a coincident point gets a finite, dominating weight (the clamp of logweights.TINY)
            log_r = 0.5 * torch.log(r2.clamp_min(LW.TINY))
            return log_dpsi(torch.sqrt(r2) / t) - (d - 1) * log_r

        return f

    def _field(self, x, t, ref, *, velocity: bool, backend: str | None, precision: str,
               chunk_size: int | None, mean: bool = True) -> _field.FieldResult:
        if self.user is None:
            return super()._field(x, t, ref, velocity=velocity, backend=backend, precision=precision,
                                  chunk_size=chunk_size, mean=mean)
        # a user psi: its exact log-normaliser comes with the phi-mean pass (flux.py), kept for log_density too
        return _flux.evaluate(self, self.user, x, t, ref, mean=not velocity, flux=velocity, backend=backend,
                              precision=precision, chunk_size=chunk_size)

    def _velocity(self, res: _field.FieldResult) -> torch.Tensor:
        return super()._velocity(res) if self.user is None else res.velocity

    def _divergence(self, x, t, ref, *, backend: str | None, precision: str,
                    chunk_size: int | None) -> tuple[_field.FieldResult, torch.Tensor]:
        if self.user is None:
            return super()._divergence(x, t, ref, backend=backend, precision=precision, chunk_size=chunk_size)
        res = _flux.evaluate(self, self.user, x, t, ref, mean=False, flux=True, div=True, backend=backend,
                             precision=precision, chunk_size=chunk_size)
        return res, res.divergence

    def log_kernel_constant(self, d: int, tau: torch.Tensor) -> torch.Tensor:
        if self.user is None:
            return super().log_kernel_constant(d, tau)
        # p_t(x | x0) = phi_t(r) / |S^(d-1)|, and log_norm already holds log sum_j phi_j (d_r psi included)
        return torch.full_like(tau, -LW.sphere_log_area(d))
