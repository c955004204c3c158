"""The ODE constructions of MATH.md §3, each with its exact empirical field and its exact draws.

Every family has the velocity f_t(x) = (x - xbar(x, t)) / t, where xbar = E[x0 | x_t = x] under the
empirical distribution of a reference set; only the log-weight l(r^2, t) of reference point j changes.
Every family's perturbation is x_t = a_t x0 + t rho g with g ~ N(0, I_d) and one radius factor rho per row
(:mod:`fastflow.sampling`); its prior is T rho g.
"""
from __future__ import annotations

import math
import numbers

import torch

from . import _nvtx
from . import _logweights as LW
from . import _validate as V
from . import sampling as S
from .field import FieldStats, check_finite, compute_dtype, empirical_field


class Family:
    """Base class: validation, dispatch to the field engine, the velocity and the exact draws.

    Subclasses give the weights (``_params``, ``_log_weight_ref``) and the draws' radius factor (``_radius_factor``).
    """

    #: largest allowed t (None: unbounded)
    t_max: float | None = None
    #: whether the noise is rho * g / ||g|| (radius rho, uniform direction) rather than rho * g
    _unit_noise: bool = False

    def _params(self, d: int) -> tuple[int, float, float]:
        """(kind, p, q) of :mod:`fastflow._logweights` for dimension d."""
        raise NotImplementedError

    def _log_weight_ref(self, d: int):
        """The log-weight written straight from MATH.md's table, as f(r2, t); used by the reference backend."""
        raise NotImplementedError

    def _scale(self, t: torch.Tensor) -> torch.Tensor:
        """a_t of the path x_t = a_t x0 + noise: the field compares x with a_t * ref_j."""
        return torch.ones_like(t)

    def _radius_factor(self, n: int, generator, device) -> torch.Tensor:
        """(n,) float64 radius factors rho of the noise t * rho * g: 1 unless the family draws one."""
        return torch.ones(n, dtype=torch.float64, device=device)

    def _fused_radius(self) -> tuple[int, float]:
        """(radius_kind, radius_param) of the fused op ``fastflow::draw_`` for this family's rho (S.RADIUS_*)."""
        return S.RADIUS_ONE, 0.0

    def _prior_scale(self, T: torch.Tensor) -> torch.Tensor:
        """The noise scale of the prior: T (the law of x_T without the data term)."""
        return T

    def _draw(self, x0, a, b, n, d, generator, device, dtype) -> torch.Tensor:
        """(n, d) rows a * x0 + b * rho * g (g / ||g|| for ``_unit_noise``), in the draw dtype; x0=None: b rho g.

        a, b: (n,) float64.  x0: (n, d) or None.  dtype: the output dtype (drawn in S.draw_dtype(dtype)).
        """
        ddt = S.draw_dtype(dtype)
        kind, param = self._fused_radius()
        if S.can_draw_fused(device, ddt, kind, param):  # one Philox pass; else the pure-torch pieces below
            return S.draw_fused(x0, a, b, n, d, radius_kind=kind, radius_param=param, generator=generator,
                                device=device, dtype=ddt)
        rho = self._radius_factor(n, generator, device)
        if self._unit_noise:
            g, norm = S.nonzero_normal(n, d, generator=generator, device=device, dtype=ddt)
            rho = rho / norm
        else:
            g = S.normal(n, d, generator=generator, device=device, dtype=ddt)
        x = g.mul_((b * rho).to(ddt)[:, None])
        if x0 is not None:
            x.addcmul_(x0.to(ddt), a.to(ddt)[:, None])
        return x

    def _finish(self, x, dtype, shape, what) -> torch.Tensor:
        """Round once to ``dtype``, refusing inf (heavy tails overflow float16 at 65504), and reshape."""
        out = x.to(dtype)
        if not V.all_finite(out):
            raise FloatingPointError(
                f"{self!r}.{what}: the draw overflows {dtype} (a heavy-tailed radius beyond its range); "
                "draw in float32 or float64")
        return out.reshape(shape)

    @_nvtx.annotate("fastflow.family.perturb")
    def perturb(self, x0: torch.Tensor, t, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw x_t ~ p_t(. | x0) for each row (MATH.md §3): x_t = a_t x0 + t rho g, g ~ N(0, I_d).

        Poisson(D): rho = 1 / ||h||, h ~ N(0, I_D).  Gaussian: rho = 1.  RadialCDF: rho g = Psi^{-1}(U) g / ||g||.
        RectifiedFlow: a_t = 1 - t, rho = 1.  (a_t = 1 for the others.)

        Args:
            x0: (B, *shape) data points.
            t: float or (B,) tensor > 0 (<= 1 for RectifiedFlow): each row's time.
            generator: a torch.Generator on x0's device, or None for that device's default generator.

        Returns:
            (B, *shape) in x0's dtype; float16/bfloat16 are drawn in float32 and rounded once.
        """
        x0 = V.tensor("x0", x0)
        B, d = x0.shape[0], math.prod(x0.shape[1:])
        if d == 0:
            raise ValueError(f"x0 must have at least one element per point, got shape {tuple(x0.shape)}")
        V.generator("generator", generator, x0.device)
        tt = V.times("t", t, B, dtype=torch.float64, device=x0.device, upper=self.t_max)
        x = self._draw(x0.reshape(B, d), self._scale(tt), tt, B, d, generator, x0.device, x0.dtype)
        return self._finish(x, x0.dtype, x0.shape, "perturb")

    @_nvtx.annotate("fastflow.family.prior")
    def prior(self, n: int, shape, *, T, generator: torch.Generator | None = None, device=None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """n draws of x_T from the prior (MATH.md §3): T rho g, the perturbation at t = T without the data term.

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
        n = V.count("n", n)
        shape = V.point_shape("shape", shape)
        dtype = V.float_dtype("dtype", dtype)
        device = V.sample_device(device, generator)
        V.generator("generator", generator, device)
        TT = V.times("T", T, n, dtype=torch.float64, device=device, upper=self.t_max)
        x = self._draw(None, None, self._prior_scale(TT), n, math.prod(shape), generator, device, dtype)
        return self._finish(x, dtype, (n,) + shape, "prior")

    def _field(self, x, t, ref, backend, precision, chunk_size, t_name="t"):
        x2, ref2 = V.points_and_ref(x, ref)
        dtype = torch.promote_types(x2.dtype, ref2.dtype)
        x2, ref2 = x2.to(dtype), ref2.to(dtype)
        cdt = compute_dtype(dtype)
        tt = V.times(t_name, t, x2.shape[0], dtype=cdt, device=x2.device, upper=self.t_max)
        d = x2.shape[1]
        if x2.shape[0] == 0:
            z = torch.zeros(0, dtype=cdt, device=x2.device)
            return x2, tt, x2.new_zeros(0, d, dtype=cdt), z, z, dtype
        xbar, log_norm, ess = empirical_field(
            x2, tt, ref2, a=self._scale(tt), params=self._params(d), log_weight_ref=self._log_weight_ref(d),
            backend=backend, precision=precision, chunk_size=chunk_size)
        check_finite(f"{type(self).__name__}.posterior_mean", xbar, log_norm)
        return x2, tt, xbar, log_norm, ess, dtype

    @_nvtx.annotate("fastflow.family.posterior_mean")
    def posterior_mean(self, x, t, ref, *, return_stats=False, backend=None, precision="ieee", chunk_size=None):
        """xbar = sum_j softmax_j(l(||x - a_t ref_j||^2, t)) ref_j = E[x0 | x_t = x] under the empirical data.

        Args:
            x: (B, *shape) points x_t.
            t: float or (B,) tensor > 0: each point's time (sigma, or the augmented radius).
            ref: (R, *shape) reference points x0_j.
            return_stats: also return a :class:`FieldStats` (log-normaliser and effective sample size).
            backend: "reference", "torch" or "triton"; default by device (see :mod:`fastflow.field`).
            precision: "ieee" (default, true fp32 dot products), or the opt-in "tf32" / "bf16".
            chunk_size: reference rows per streaming step (default: from a memory budget).

        Returns:
            xbar: (B, *shape) in the promoted dtype of x and ref (float16/bfloat16 accumulate in float32);
            with ``return_stats``, a tuple (xbar, FieldStats) whose fields are (B,) tensors in the compute dtype.
        """
        x2, _, xbar, log_norm, ess, dtype = self._field(x, t, ref, backend, precision, chunk_size)
        out = xbar.to(dtype).reshape((x2.shape[0],) + tuple(x.shape[1:]))
        if return_stats:
            return out, FieldStats(log_norm=log_norm, ess=ess)
        return out

    @_nvtx.annotate("fastflow.family.velocity")
    def velocity(self, x, t, ref, *, backend=None, precision="ieee", chunk_size=None):
        """Exact empirical velocity dx/dt = (x - xbar(x, t)) / t of this family's ODE.

        Args and backends as :meth:`posterior_mean`. Returns (B, *shape) in the promoted dtype.
        """
        x2, tt, xbar, _, _, dtype = self._field(x, t, ref, backend, precision, chunk_size)
        v = (x2.to(xbar.dtype) - xbar) / tt[:, None]
        return v.to(dtype).reshape((x2.shape[0],) + tuple(x.shape[1:]))


class Poisson(Family):
    """PFGM (D=1) and PFGM++ (D>1): log w = -(d+D)/2 * log(t^2 + r^2); t is the augmented radius (z for D=1)."""

    def __init__(self, D: float = 1):
        if isinstance(D, bool) or not isinstance(D, numbers.Real):
            raise TypeError(f"D must be a number >= 1 (the augmented dimensions), got {type(D).__name__}")
        if not math.isfinite(D) or D < 1:
            raise ValueError(f"D must be finite and >= 1 (the augmented dimensions), got {D}")
        self.D = D

    def __repr__(self):
        return f"Poisson(D={self.D})"

    def _radius_factor(self, n, generator, device):
        # rho = 1 / ||h||, h ~ N(0, I_D): ||x - x0||^2 / t^2 = ||g||^2 / ||h||^2 ~ BetaPrime(d/2, D/2)
        return S.chi(n, self.D, generator=generator, device=device).reciprocal_()

    def _fused_radius(self):
        return S.RADIUS_CHI, float(self.D)

    def _params(self, d):
        return LW.POISSON, (d + self.D) / 2.0, 0.0

    def _log_weight_ref(self, d):
        D = self.D
        return lambda r2, t: -(d + D) / 2.0 * torch.log(t ** 2 + r2)


class Gaussian(Family):
    """VE / EDM diffusion: log w = -r^2 / (2 t^2); t is sigma."""

    def __repr__(self):
        return "Gaussian()"

    def _params(self, d):
        return LW.GAUSSIAN, 0.5, 0.0

    def _log_weight_ref(self, d):
        return lambda r2, t: -r2 / (2.0 * t ** 2)


def _log_sech2(u):
    # log sech^2 u = log 4 - 2u - 2 log(1 + e^{-2u}): sech u = 2 e^{-u} / (1 + e^{-2u}), finite for all u >= 0
    return math.log(4.0) - 2.0 * u - 2.0 * torch.log1p(torch.exp(-2.0 * u))


class RadialCDF(Family):
    """The scale family psi_t(r) = Psi(r/t): log w = log Psi'(r/t) - (d-1) log r.

    ``"tanh"``: Psi(s) = tanh s.  ``"exp"``: Psi(s) = 1 - exp(-s).
    """

    _LOG_DPSI = {"tanh": _log_sech2, "exp": lambda u: -u}

    def __init__(self, name: str = "tanh"):
        self.name = V.choice("RadialCDF name", name, tuple(self._LOG_DPSI))

    _unit_noise = True

    def __repr__(self):
        return f"RadialCDF({self.name!r})"

    def _radius_factor(self, n, generator, device):
        # ||x - x0|| / t = Psi^{-1}(U) has the CDF Psi
        return S.inverse_radial_cdf(n, self.name, generator=generator, device=device)

    def _fused_radius(self):
        return (S.RADIUS_TANH if self.name == "tanh" else S.RADIUS_EXP), 0.0

    def _params(self, d):
        return (LW.TANH if self.name == "tanh" else LW.EXP), 0.0, (d - 1) / 2.0

    def _log_weight_ref(self, d):
        log_dpsi = self._LOG_DPSI[self.name]

        def f(r2, t):
            # a coincident point gets a finite, dominating weight (the clamp of _logweights.TINY)
            log_r = 0.5 * torch.log(r2.clamp_min(LW.TINY))
            return log_dpsi(torch.sqrt(r2) / t) - (d - 1) * log_r

        return f


class RectifiedFlow(Family):
    """Rectified flow x_t = (1 - t) x0 + t eps, t in (0, 1], noise at t = 1.

    The field's weights are exp(-||x - (1-t) ref_j||^2 / (2 t^2)); the velocity v = E[eps - x0 | x_t = x]
    simplifies to (x - xbar) / t, the same form as the other families.
    """

    t_max = 1.0

    def __repr__(self):
        return "RectifiedFlow()"

    def _scale(self, t):
        return 1.0 - t

    def _prior_scale(self, T):
        # the prior is x_1 = eps ~ N(0, I), whatever T
        return torch.ones_like(T)

    def _params(self, d):
        return LW.GAUSSIAN, 0.5, 0.0

    def _log_weight_ref(self, d):
        return lambda r2, t: -r2 / (2.0 * t ** 2)
