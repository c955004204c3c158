"""The ODE constructions of MATH.md §3, each with its exact empirical field.

Every family has the velocity f_t(x) = (x - xbar(x, t)) / t, where xbar = E[x0 | x_t = x] under the
empirical distribution of a reference set; only the log-weight l(r^2, t) of reference point j changes.
"""
from __future__ import annotations

import math
import numbers

import torch

from . import _logweights as LW
from . import _validate as V
from .field import FieldStats, check_finite, compute_dtype, empirical_field


class Family:
    """Base class: validation, dispatch to the field engine and the velocity. Subclasses give the weights."""

    #: largest allowed t (None: unbounded)
    t_max: float | None = None

    def _params(self, d: int) -> tuple[int, float, float]:
        """(kind, p, q) of :mod:`fastflow._logweights` for dimension d."""
        raise NotImplementedError

    def _log_weight_ref(self, d: int):
        """The log-weight written straight from MATH.md's table, as f(r2, t); used by the reference backend."""
        raise NotImplementedError

    def _scale(self, t: torch.Tensor) -> torch.Tensor:
        """a_t of the path x_t = a_t x0 + noise: the field compares x with a_t * ref_j."""
        return torch.ones_like(t)

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

    def __repr__(self):
        return f"RadialCDF({self.name!r})"

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

    def _params(self, d):
        return LW.GAUSSIAN, 0.5, 0.0

    def _log_weight_ref(self, d):
        return lambda r2, t: -r2 / (2.0 * t ** 2)
