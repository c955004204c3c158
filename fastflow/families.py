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

import torch

from . import draws
from . import field as _field
from ._core import nvtx
from ._core import validate as V
from ._core.types import DeviceLike, LogWeight, Shape, Time
from .field import FieldStats
from .field import logweights as LW

__all__ = ["Family", "Poisson", "Gaussian", "RadialCDF", "RectifiedFlow"]


class Family:
    """Base class of the families: the public methods, on top of the laws that each subclass states."""

    #: largest allowed t (None: unbounded)
    t_max: float | None = None
    #: the law of the per-row radius factor rho of the noise t rho g
    radius: draws.Radius = draws.Radius()

    # -- the laws ------------------------------------------------------------------------------------------------

    def weight_params(self, d: int) -> tuple[int, float, float]:
        """(kind, p, q) of :mod:`fastflow.field.logweights` for dimension d."""
        raise NotImplementedError

    def reference_log_weight(self, d: int) -> LogWeight:
        """The log-weight written straight from the formula, as f(r2, t); used by the reference backend."""
        raise NotImplementedError

    def path_scale(self, t: torch.Tensor) -> torch.Tensor:
        """a_t of the path x_t = a_t x0 + noise: the field compares x with a_t * ref_j (1 unless overridden)."""
        return torch.ones_like(t)

    def noise_scale(self, t: torch.Tensor) -> torch.Tensor:
        """s_t of the noise s_t rho g in x_t, and the time the log-weight sees: t (an affine path's sigma_t)."""
        return t

    def prior_scale(self, T: torch.Tensor) -> torch.Tensor:
        """The noise scale of the prior: T (the law of x_T without the data term)."""
        return T

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
        """
        res = _field.evaluate(self, x, t, ref, backend=backend, precision=precision, chunk_size=chunk_size)
        out = res.output(res.xbar)
        return (out, res.stats) if return_stats else out

    @nvtx.annotate("fastflow.family.velocity")
    @V.checked
    def velocity(self, x: torch.Tensor, t: Time, ref: torch.Tensor, *, backend: str | None = None,
                 precision: str = "ieee", chunk_size: int | None = None) -> torch.Tensor:
        """Exact empirical velocity dx/dt = (x - xbar(x, t)) / t of this family's ODE.

        Args and backends as :meth:`posterior_mean`. Returns (B, *shape) in x's dtype.
        """
        res = _field.evaluate(self, x, t, ref, backend=backend, precision=precision, chunk_size=chunk_size)
        return res.output((res.x - res.xbar) / res.t[:, None], f"{self!r}.velocity")


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
    """The scale family psi_t(r) = Psi(r/t): log w = log Psi'(r/t) - (d-1) log r.

    ``"tanh"``: Psi(s) = tanh s.  ``"exp"``: Psi(s) = 1 - exp(-s).
    """

    _LOG_DPSI = {"tanh": _log_sech2, "exp": lambda u: -u}
    _RADIUS = {"tanh": draws.RADIUS_TANH, "exp": draws.RADIUS_EXP}

    def __init__(self, name: str = "tanh"):
        self.name = V.choice("RadialCDF name", name, tuple(self._LOG_DPSI))
        self.radius = draws.Radius(self._RADIUS[self.name])  # radius t Psi^{-1}(U) in a uniform direction

    def __repr__(self):
        return f"RadialCDF({self.name!r})"

    def weight_params(self, d: int) -> tuple[int, float, float]:
        return (LW.TANH if self.name == "tanh" else LW.EXP), 0.0, (d - 1) / 2.0

    def reference_log_weight(self, d: int) -> LogWeight:
        log_dpsi = self._LOG_DPSI[self.name]

        def f(r2, t):
            # a coincident point gets a finite, dominating weight (the clamp of logweights.TINY)
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

    def path_scale(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - t

    def prior_scale(self, T: torch.Tensor) -> torch.Tensor:
        # the prior is x_1 = eps ~ N(0, I), whatever T
        return torch.ones_like(T)

    def weight_params(self, d: int) -> tuple[int, float, float]:
        return LW.GAUSSIAN, 0.5, 0.0

    def reference_log_weight(self, d: int) -> LogWeight:
        return lambda r2, t: -0.5 * (r2 / t) / t  # not r2 / t^2: t^2 underflows at t = 1e-30 in float32
