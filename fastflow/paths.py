"""Affine probability paths x_t = alpha_t x0 + sigma_t x1, x1 from a source law (docs/math.md).

Data at t = 0, source at t = 1 (:mod:`fastflow.schedulers`). Given x_t = x, the posterior over the reference
points has the weights of the source's density at (x - alpha_t ref_j) / sigma_t:

- "gaussian", x1 ~ N(0, I): exp(-||x - alpha_t ref_j||^2 / (2 sigma_t^2)), the Gaussian kind of the field engine
  with path scale a = alpha_t and noise scale sigma_t;
- :class:`StudentT` (nu), x1 = g sqrt(nu) / ||h||, g ~ N(0, I_d), h ~ N(0, I_nu) (multivariate Student-t):
  (nu sigma_t^2 + ||x - alpha_t ref_j||^2)^(-(nu + d) / 2), the Poisson kind with D = nu and noise scale
  sigma_t sqrt(nu) (PFGM++'s weights), drawn by the same fused op. Equally cheap.

Either way x1 = (x_t - alpha_t x0) / sigma_t given x0, so the exact velocity has one form:

    E[dx_t / dt | x_t = x] = alpha'_t xbar + sigma'_t E[x1 | x] = (sigma'_t / sigma_t) x
                             + (alpha'_t - sigma'_t alpha_t / sigma_t) xbar,     xbar = E[x0 | x_t = x],

which for CondOT (alpha = 1 - t, sigma = t) is (x - xbar) / t, :class:`fastflow.RectifiedFlow`'s velocity.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from . import draws
from . import field as _field
from ._core import nvtx
from ._core import validate as V
from ._core.types import DeviceLike, LogWeight, Shape, Time
from .families import Family
from .field import logweights as LW
from .schedulers import CondOT, Scheduler

__all__ = ["AffinePath", "RectifiedFlow", "PathSample", "StudentT", "SOURCES"]

SOURCES = ("gaussian",)


@dataclass(frozen=True)
class StudentT:
    """A multivariate Student-t source with nu > 0 degrees of freedom: x1 = g sqrt(nu) / ||h||,
    g ~ N(0, I_d), h ~ N(0, I_nu); heavy-tailed, each coordinate a Student-t(nu); N(0, I) as nu -> inf."""

    nu: float

    def __post_init__(self) -> None:
        nu = self.nu
        if isinstance(nu, bool) or not isinstance(nu, numbers.Real) or not (math.isfinite(nu) and nu > 0):
            raise ValueError(f"nu must be a finite number > 0 (the degrees of freedom), got {nu!r}")
        object.__setattr__(self, "nu", float(nu))


@dataclass(frozen=True)
class PathSample:
    """One draw of the path for training: ``dx_t`` is the regression target of a velocity model at (x_t, t).

    Attributes:
        x_t: (B, *shape) alpha_t x0 + sigma_t x1.  dx_t: (B, *shape) alpha'_t x0 + sigma'_t x1.
        x0: (B, *shape) the data.  x1: (B, *shape) the source draw (or the coupling given).  t: (B,) the times.
    """

    x_t: torch.Tensor
    dx_t: torch.Tensor
    x0: torch.Tensor
    x1: torch.Tensor
    t: torch.Tensor


class AffinePath(Family):
    """The path x_t = alpha_t x0 + sigma_t x1, x1 ~ N(0, I), for any :class:`fastflow.schedulers.Scheduler`.

    Args:
        scheduler: the schedule (default :class:`~fastflow.schedulers.CondOT`: rectified flow).
        source: "gaussian" (N(0, I)) or a :class:`StudentT`.

    Its methods are the families' (``posterior_mean``, ``velocity``, ``perturb``, ``prior``) with t in (0, 1],
    plus :meth:`sample` for training.
    """

    t_max = 1.0

    def __init__(self, scheduler: Scheduler | None = None, source: str = "gaussian") -> None:
        scheduler = CondOT() if scheduler is None else scheduler
        if not isinstance(scheduler, Scheduler):
            raise TypeError(f"scheduler must be a fastflow.schedulers.Scheduler (e.g. CondOT(), Cosine()), got "
                            f"{type(scheduler).__name__}")
        self.scheduler = scheduler
        if isinstance(source, StudentT):
            self.source = source
            self._noise_factor = math.sqrt(source.nu)  # the weights' and the draws' scale: sigma_t sqrt(nu)
            self.radius = draws.Radius(draws.RADIUS_CHI, source.nu)  # rho = 1 / ||h||, h ~ N(0, I_nu)
        else:
            self.source = V.choice("source", source, SOURCES)
            self._noise_factor = 1.0
            self.radius = draws.Radius()  # rho = 1: x1 ~ N(0, I)

    def __repr__(self) -> str:
        src = "" if self.source == "gaussian" else f", source={self.source!r}"
        return f"AffinePath({self.scheduler!r}{src})"

    # -- the laws --------------------------------------------------------------------------------------------------

    def path_scale(self, t: torch.Tensor) -> torch.Tensor:
        return self.scheduler.alpha(t)

    def noise_scale(self, t: torch.Tensor) -> torch.Tensor:
        return self.scheduler.sigma(t) * self._noise_factor

    def prior_scale(self, T: torch.Tensor) -> torch.Tensor:
        return torch.full_like(T, self._noise_factor)  # the source itself, whatever T

    def weight_params(self, d: int) -> tuple[int, float, float]:
        if isinstance(self.source, StudentT):
            return LW.POISSON, (d + self.source.nu) / 2.0, 0.0
        return LW.GAUSSIAN, 0.5, 0.0

    def reference_log_weight(self, d: int) -> LogWeight:
        # s: the noise scale the engine passes (sigma_t, or sigma_t sqrt(nu))
        if isinstance(self.source, StudentT):
            p = (d + self.source.nu) / 2.0
            return lambda r2, s: -p * torch.logaddexp(2.0 * torch.log(s), torch.log(r2))
        return lambda r2, s: -0.5 * (r2 / s) / s

    def velocity_coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma'_t / sigma_t, alpha'_t - sigma'_t alpha_t / sigma_t), each (B,): f = A_t x + B_t xbar."""
        c = self.scheduler(t)
        ratio = c.d_sigma / c.sigma
        return ratio, c.d_alpha - ratio * c.alpha

    def _velocity(self, res: _field.FieldResult) -> torch.Tensor:
        """The (B, d) velocity A_t x + B_t xbar from the engine's result, as :meth:`velocity` forms it."""
        A, Bt = self.velocity_coefficients(res.t)
        return A[:, None] * res.x + Bt[:, None] * res.xbar

    # -- the velocity of the path, and its training draw -----------------------------------------------------------

    @nvtx.annotate("fastflow.path.prior")
    @V.checked
    def prior(self, n: int, shape: Shape, *, T: Time = 1.0, generator: torch.Generator | None = None,
              device: DeviceLike = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """n draws of the source x1 (the path at t = 1 without its data term), shape (n, *shape); T in (0, 1] is
        checked and otherwise unused. Args as :meth:`fastflow.Family.prior`."""
        return draws.prior(self, n, shape, T=T, generator=generator, device=device, dtype=dtype)

    @nvtx.annotate("fastflow.path.velocity")
    @V.checked
    def velocity(self, x: torch.Tensor, t: Time, ref: torch.Tensor, *, backend: str | None = None,
                 precision: str = "ieee", chunk_size: int | None = None) -> torch.Tensor:
        """Exact E[dx_t / dt | x_t = x] over the reference set (module docstring).

        Args:
            x: (B, *shape).  t: float or (B,) tensor in (0, 1].  ref: (R, *shape).  backend, precision,
                chunk_size: as :meth:`fastflow.Family.posterior_mean`.

        Returns:
            (B, *shape) in x's dtype; differentiable in x, t and ref (through the scheduler's coefficients too).
        """
        res = self._field(x, t, ref, velocity=True, backend=backend, precision=precision, chunk_size=chunk_size)
        return res.output(self._velocity(res), f"{self!r}.velocity")

    @nvtx.annotate("fastflow.path.sample")
    @V.checked
    def sample(self, x0: torch.Tensor, t: Time | None = None, *, x1: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> PathSample:
        """A training draw: t (given, or uniform on (0, 1)), x1 (given: a coupling; or drawn from the source),
        x_t = alpha_t x0 + sigma_t x1 and its time derivative dx_t = alpha'_t x0 + sigma'_t x1.

        Args:
            x0: (B, *shape) data.  t: None, a float or a (B,) tensor in (0, 1].
            x1: None, or (B, *shape) source points paired with x0 (OT or reflow couplings), x0's dtype and device.
            generator: a torch.Generator on x0's device, or None.

        Returns:
            :class:`PathSample`, tensors in x0's dtype (t: (B,) in x0's compute dtype).
        """
        from .training import timesteps

        x0 = V.tensor("x0", x0)
        V.generator("generator", generator, x0.device)
        B = x0.shape[0]
        cdt = torch.float64 if x0.dtype == torch.float64 else torch.float32
        if t is None:
            t = timesteps(B, generator=generator, device=x0.device, dtype=torch.float64)
        tt = V.times("t", t, B, dtype=torch.float64, device=x0.device, upper=self.t_max)
        if x1 is None:
            d = math.prod(x0.shape[1:])
            ones = torch.full((B,), self._noise_factor, dtype=torch.float64, device=x0.device)
            x1 = draws.draw(None, None, ones, B, d, self.radius, generator=generator, device=x0.device,
                            dtype=x0.dtype).reshape(x0.shape)
        else:
            x1 = V.tensor("x1", x1)
            if x1.shape != x0.shape or x1.dtype != x0.dtype or x1.device != x0.device:
                raise ValueError(f"x1 must match x0 in shape, dtype and device: x0 {tuple(x0.shape)} {x0.dtype} "
                                 f"{x0.device}, x1 {tuple(x1.shape)} {x1.dtype} {x1.device}")
        c = self.scheduler(tt)
        view = (B,) + (1,) * (x0.dim() - 1)
        ddt = draws.draw_dtype(x0.dtype)
        a, s, da, ds = (v.to(ddt).reshape(view) for v in (c.alpha, c.sigma, c.d_alpha, c.d_sigma))
        x0d, x1d = x0.to(ddt), x1.to(ddt)
        x_t = draws.finish(a * x0d + s * x1d, x0.dtype, x0.shape, f"{self!r}.sample")
        dx_t = draws.finish(da * x0d + ds * x1d, x0.dtype, x0.shape, f"{self!r}.sample")
        return PathSample(x_t=x_t, dx_t=dx_t, x0=x0, x1=x1.to(x0.dtype), t=tt.to(cdt))


class RectifiedFlow(AffinePath):
    """Rectified flow x_t = (1 - t) x0 + t eps, t in (0, 1], noise at t = 1: ``AffinePath(CondOT())``.

    The field's weights are exp(-||x - (1-t) ref_j||^2 / (2 t^2)); the velocity v = E[eps - x0 | x_t = x] is
    written (x - xbar) / t, the same form as the other families (the path's (sigma'/sigma) x + (alpha' -
    sigma' alpha / sigma) xbar with one rounding less). Everything else is the path's: ``sample``, ``prior``
    (N(0, I), T checked to lie in (0, 1] and otherwise unused), ``log_density``, ``divergence``.
    """

    def __init__(self) -> None:
        super().__init__(CondOT())

    def __repr__(self) -> str:
        return "RectifiedFlow()"

    velocity_coefficients = Family.velocity_coefficients  # (1/t, -1/t)
    _velocity = Family._velocity                          # (x - xbar) / t
