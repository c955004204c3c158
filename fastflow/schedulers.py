"""Schedules (alpha_t, sigma_t) of affine probability paths x_t = alpha_t x0 + sigma_t x1 (docs/math.md).

fastflow's convention puts the data at t = 0 and the source (noise) at t = 1, as :class:`fastflow.RectifiedFlow`:
alpha_0 = 1, sigma_0 = 0, alpha_1 = 0, sigma_1 = 1, for t in [0, 1]. Meta's flow_matching library runs time the
other way (data at t = 1): its scheduler at time s is ours at t = 1 - s, with the derivatives' signs flipped.

=================  ===================  ========================================  =================
scheduler          alpha_t              sigma_t                                   flow_matching
=================  ===================  ========================================  =================
``CondOT()``       1 - t                t                                         CondOTScheduler
``Cosine()``       cos(pi t / 2)        sin(pi t / 2)                             CosineScheduler
``Polynomial(n)``  (1 - t)^n            1 - (1 - t)^n                             PolynomialConvex
``LinearVP()``     1 - t                sqrt(1 - (1 - t)^2)                       LinearVPScheduler
``VP(b0, b1)``     exp(-T_t / 2)        sqrt(1 - exp(-T_t)),                      VPScheduler
                                        T_t = b0 t + (b1 - b0) t^2 / 2
=================  ===================  ========================================  =================

``VP`` is the one that misses an end point: alpha_1 = exp(-(b0 + b1) / 4) (6.6e-3 for the default b0 = 0.1,
b1 = 20), the approximation of VP diffusion that starts sampling from N(0, I). ``Scheduler(alpha, sigma)``
builds one from callables (derivatives by autograd unless given) and refuses end points that are off.

A scheduler is called on a tensor of times and returns :class:`Coefficients` (alpha, sigma and their time
derivatives, each shaped like t), computed in t's dtype.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Coefficients", "Scheduler", "CondOT", "Cosine", "Polynomial", "LinearVP", "VP"]

TimeFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Coefficients:
    """alpha_t, sigma_t and their derivatives d/dt at the times t, each a tensor shaped like t."""

    alpha: torch.Tensor
    sigma: torch.Tensor
    d_alpha: torch.Tensor
    d_sigma: torch.Tensor


def _times(t) -> torch.Tensor:
    if isinstance(t, bool) or not isinstance(t, (torch.Tensor, numbers.Real)):
        raise TypeError(f"t must be a float or a floating-point tensor, got {type(t).__name__}")
    t = torch.as_tensor(t, dtype=torch.get_default_dtype() if not isinstance(t, torch.Tensor) else None)
    if not t.is_floating_point():
        raise TypeError(f"t must be a floating-point tensor, got {t.dtype}")
    return t


def _autograd_derivative(fn: TimeFn, t: torch.Tensor) -> torch.Tensor:
    """d fn / dt elementwise, by one backward pass (fn acts elementwise, so the sum's gradient is the derivative)."""
    create = torch.is_grad_enabled() and t.requires_grad  # differentiable itself (autograd through the field's t)
    with torch.enable_grad():
        tt = t if create else t.detach().requires_grad_(True)
        y = fn(tt)
        (g,) = torch.autograd.grad(y.sum(), tt, create_graph=create, allow_unused=True)
    return torch.zeros_like(t) if g is None else g


class Scheduler:
    """A schedule from callables: alpha(t), sigma(t) elementwise in torch ops, t in [0, 1].

    Args:
        alpha, sigma: callables t -> tensor shaped like t.
        d_alpha, d_sigma: their derivatives, or None to take them by autograd.

    The end points are checked at construction (float64, to 1e-6): alpha(0) = 1, sigma(0) = 0, alpha(1) = 0,
    sigma(1) = 1; and alpha, sigma must be finite on a grid of [0, 1]. Each failure is a ValueError naming it.
    """

    #: whether the construction checks the end points (VP does not meet alpha_1 = 0)
    _exact_ends = True
    #: whether the construction checks the callables at all: the built-in schedules below are exact by their
    #: formulas (their tests check them), and skipping lets them be built inside torch.compile (no host read)
    _checks = True

    def __init__(self, alpha: TimeFn, sigma: TimeFn, d_alpha: TimeFn | None = None,
                 d_sigma: TimeFn | None = None) -> None:
        for name, fn in (("alpha", alpha), ("sigma", sigma)):
            if not callable(fn):
                raise TypeError(f"{name} must be a callable t -> tensor, got {type(fn).__name__}")
        for name, fn in (("d_alpha", d_alpha), ("d_sigma", d_sigma)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be a callable t -> tensor or None (autograd), got {type(fn).__name__}")
        self._alpha, self._sigma = alpha, sigma
        self._d_alpha, self._d_sigma = d_alpha, d_sigma
        if self._checks:
            self._check()

    def _check(self) -> None:
        grid = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)
        c = self(grid)
        for name, v in (("alpha", c.alpha), ("sigma", c.sigma), ("d_alpha", c.d_alpha), ("d_sigma", c.d_sigma)):
            if v.shape != grid.shape:
                raise ValueError(f"{name}(t) must return a tensor shaped like t, got shape {tuple(v.shape)} for "
                                 f"t of shape {tuple(grid.shape)}")
            # a derivative may be infinite at an end point (sigma = sqrt(t (2 - t)) at t = 0), nowhere else
            bad = ~torch.isfinite(v) if name in ("alpha", "sigma") else ~torch.isfinite(v[1:-1])
            if bad.any():
                at = (grid if name in ("alpha", "sigma") else grid[1:-1])[bad][:3].tolist()
                raise ValueError(f"{name}(t) is not finite at t = {at} (t in [0, 1])")
        if not self._exact_ends:
            return
        ends = {"alpha(0)": (c.alpha[0], 1.0), "sigma(0)": (c.sigma[0], 0.0), "alpha(1)": (c.alpha[-1], 0.0),
                "sigma(1)": (c.sigma[-1], 1.0)}
        for name, (got, want) in ends.items():
            if abs(float(got) - want) > 1e-6:
                raise ValueError(f"{name} must be {want:g} (data at t = 0, source at t = 1: x_t = alpha_t x0 + "
                                 f"sigma_t x1), got {float(got):.6g}")

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self._alpha(t)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self._sigma(t)

    def d_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self._d_alpha(t) if self._d_alpha is not None else _autograd_derivative(self.alpha, t)

    def d_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self._d_sigma(t) if self._d_sigma is not None else _autograd_derivative(self.sigma, t)

    def __call__(self, t: float | torch.Tensor) -> Coefficients:
        """alpha, sigma, d_alpha, d_sigma at t (a float or a tensor), in t's dtype."""
        t = _times(t)
        return Coefficients(self.alpha(t), self.sigma(t), self.d_alpha(t), self.d_sigma(t))

    def __repr__(self) -> str:
        return "Scheduler(<callables>)"


class CondOT(Scheduler):
    """alpha = 1 - t, sigma = t: the straight path of rectified flow (flow_matching's CondOTScheduler)."""

    _checks = False

    def __init__(self) -> None:
        super().__init__(lambda t: 1.0 - t, lambda t: t.clone(), lambda t: -torch.ones_like(t), torch.ones_like)

    def __repr__(self) -> str:
        return "CondOT()"


class Cosine(Scheduler):
    """alpha = cos(pi t / 2), sigma = sin(pi t / 2) (flow_matching's CosineScheduler)."""

    _checks = False

    def __init__(self) -> None:
        h = math.pi / 2
        super().__init__(lambda t: torch.cos(h * t), lambda t: torch.sin(h * t),
                         lambda t: -h * torch.sin(h * t), lambda t: h * torch.cos(h * t))

    def __repr__(self) -> str:
        return "Cosine()"


class Polynomial(Scheduler):
    """alpha = (1 - t)^n, sigma = 1 - (1 - t)^n, n > 0 (flow_matching's PolynomialConvexScheduler)."""

    _checks = False

    def __init__(self, n: float) -> None:
        if isinstance(n, bool) or not isinstance(n, numbers.Real) or not (math.isfinite(n) and n > 0):
            raise ValueError(f"n must be a finite number > 0 (the exponent), got {n!r}")
        self.n = float(n)
        n = self.n
        super().__init__(lambda t: (1.0 - t) ** n, lambda t: 1.0 - (1.0 - t) ** n,
                         lambda t: -n * (1.0 - t) ** (n - 1.0), lambda t: n * (1.0 - t) ** (n - 1.0))

    def __repr__(self) -> str:
        return f"Polynomial({self.n:g})"


class LinearVP(Scheduler):
    """alpha = 1 - t, sigma = sqrt(1 - (1 - t)^2) = sqrt(t (2 - t)) (flow_matching's LinearVPScheduler).

    d sigma / dt = (1 - t) / sigma is infinite at t = 0; it is returned as inf there.
    """

    _checks = False

    def __init__(self) -> None:
        super().__init__(lambda t: 1.0 - t, lambda t: torch.sqrt(t * (2.0 - t)),
                         lambda t: -torch.ones_like(t), lambda t: (1.0 - t) / torch.sqrt(t * (2.0 - t)))

    def __repr__(self) -> str:
        return "LinearVP()"


class VP(Scheduler):
    """Variance preserving: alpha = exp(-T/2), sigma = sqrt(1 - exp(-T)), T_t = b0 t + (b1 - b0) t^2 / 2
    (b0 = beta_min, b1 = beta_max; flow_matching's VPScheduler). alpha_1 = exp(-(b0 + b1)/4) is small, not 0.

    sigma is computed as sqrt(-expm1(-T)), accurate near t = 0; d sigma / dt = T' e^{-T} / (2 sigma) is inf at
    t = 0.
    """

    _checks = False

    _exact_ends = False

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        for name, v in (("beta_min", beta_min), ("beta_max", beta_max)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if beta_max < beta_min or beta_max == 0:
            raise ValueError(f"need 0 <= beta_min <= beta_max and beta_max > 0, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        b0, db = self.beta_min, self.beta_max - self.beta_min

        def T(t):
            return b0 * t + 0.5 * db * t * t

        def dT(t):
            return b0 + db * t

        super().__init__(lambda t: torch.exp(-0.5 * T(t)), lambda t: torch.sqrt(-torch.expm1(-T(t))),
                         lambda t: -0.5 * dT(t) * torch.exp(-0.5 * T(t)),
                         lambda t: 0.5 * dT(t) * torch.exp(-T(t)) / torch.sqrt(-torch.expm1(-T(t))))

    def __repr__(self) -> str:
        return f"VP(beta_min={self.beta_min:g}, beta_max={self.beta_max:g})"
