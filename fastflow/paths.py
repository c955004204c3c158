"""Affine probability paths x_t = alpha_t x0 + sigma_t x1 with a Gaussian source x1 ~ N(0, I) (docs/math.md).

Data at t = 0, source at t = 1 (:mod:`fastflow.schedulers`). Given x_t = x, the posterior over the reference
points has the weights exp(-||x - alpha_t ref_j||^2 / (2 sigma_t^2)): the Gaussian kind of the field engine with
path scale a = alpha_t and noise scale sigma_t, one streaming pass. The exact velocity is

    E[dx_t / dt | x_t = x] = alpha'_t xbar + sigma'_t E[x1 | x] = (sigma'_t / sigma_t) x
                             + (alpha'_t - sigma'_t alpha_t / sigma_t) xbar,     xbar = E[x0 | x_t = x],

which for CondOT (alpha = 1 - t, sigma = t) is (x - xbar) / t, :class:`fastflow.RectifiedFlow`'s velocity.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import draws
from . import field as _field
from ._core import nvtx
from ._core import validate as V
from ._core.types import LogWeight, Time
from .families import Family
from .field import logweights as LW
from .schedulers import CondOT, Scheduler

__all__ = ["AffinePath", "PathSample", "SOURCES"]

SOURCES = ("gaussian",)


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
        source: "gaussian" (N(0, I)).

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
        self.source = V.choice("source", source, SOURCES)

    def __repr__(self) -> str:
        return f"AffinePath({self.scheduler!r})"

    # -- the laws --------------------------------------------------------------------------------------------------

    def path_scale(self, t: torch.Tensor) -> torch.Tensor:
        return self.scheduler.alpha(t)

    def noise_scale(self, t: torch.Tensor) -> torch.Tensor:
        return self.scheduler.sigma(t)

    def prior_scale(self, T: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(T)  # the source N(0, I), whatever T

    def weight_params(self, d: int) -> tuple[int, float, float]:
        return LW.GAUSSIAN, 0.5, 0.0

    def reference_log_weight(self, d: int) -> LogWeight:
        return lambda r2, s: -0.5 * (r2 / s) / s  # s = sigma_t (the engine passes the noise scale)

    # -- the velocity of the path, and its training draw -----------------------------------------------------------

    @nvtx.annotate("fastflow.path.velocity")
    @V.checked
    def velocity(self, x: torch.Tensor, t: Time, ref: torch.Tensor, *, backend: str | None = None,
                 precision: str = "ieee", chunk_size: int | None = None) -> torch.Tensor:
        """Exact E[dx_t / dt | x_t = x] over the reference set (module docstring).

        Args:
            x: (B, *shape).  t: float or (B,) tensor in (0, 1].  ref: (R, *shape).  backend, precision,
                chunk_size: as :meth:`fastflow.Family.posterior_mean`.

        Returns:
            (B, *shape) in x's dtype.
        """
        res = _field.evaluate(self, x, t, ref, backend=backend, precision=precision, chunk_size=chunk_size)
        c = self.scheduler(res.t)
        ratio = c.d_sigma / c.sigma
        v = ratio[:, None] * res.x + (c.d_alpha - ratio * c.alpha)[:, None] * res.xbar
        return res.output(v, f"{self!r}.velocity")

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
            x1 = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=draws.draw_dtype(x0.dtype))
        else:
            x1 = V.tensor("x1", x1)
            if x1.shape != x0.shape or x1.dtype != x0.dtype or x1.device != x0.device:
                raise ValueError(f"x1 must match x0 in shape, dtype and device: x0 {tuple(x0.shape)} {x0.dtype} "
                                 f"{x0.device}, x1 {tuple(x1.shape)} {x1.dtype} {x1.device}")
        c = self.scheduler(tt)
        view = (B,) + (1,) * (x0.dim() - 1)
        ddt = x1.dtype if x1.dtype in (torch.float32, torch.float64) else torch.float32
        a, s, da, ds = (v.to(ddt).reshape(view) for v in (c.alpha, c.sigma, c.d_alpha, c.d_sigma))
        x0d, x1d = x0.to(ddt), x1.to(ddt)
        x_t = draws.finish(a * x0d + s * x1d, x0.dtype, x0.shape, f"{self!r}.sample")
        dx_t = draws.finish(da * x0d + ds * x1d, x0.dtype, x0.shape, f"{self!r}.sample")
        return PathSample(x_t=x_t, dx_t=dx_t, x0=x0, x1=x1.to(x0.dtype), t=tt.to(cdt))
