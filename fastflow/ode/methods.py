"""Explicit Runge-Kutta methods as Butcher tableaux, and the name registry :data:`METHODS`.

====================  =====  ======  ===========================================================
name                  order  evals   step
====================  =====  ======  ===========================================================
``"euler"``           1      1       fixed, ``steps`` equal steps from t0 to t1
``"heun"``            2      2       fixed (explicit trapezoidal rule)
``"rk4"``             4      4       fixed (classical Runge-Kutta)
``"dopri5"``          5(4)   6/step  adaptive: Dormand-Prince pair, FSAL, PI step-size control
====================  =====  ======  ===========================================================

A method's :meth:`RungeKutta.step` does its stage combinations through :func:`fastflow.ode.step.combine`, the
function that the fused kernels serve.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from . import step as _step

__all__ = ["METHODS", "RungeKutta", "Euler", "Heun", "RK4", "Dopri5"]


class RungeKutta:
    """An explicit Runge-Kutta method, given by its Butcher tableau (c, a, b) and, for an embedded pair, e = b - b_hat.

    Stage j: X_j = x + h sum_{l<j} a[j][l] K_l,  K_j = f(X_j, t + c[j] h);  x_new = x + h sum_j b[j] K_j.
    The embedded error estimate is h sum_j e[j] K_j (of order ``error_order``).
    """

    name: ClassVar[str]
    #: order of x_new (global error O(h^order))
    order: ClassVar[int]
    c: ClassVar[tuple[float, ...]]
    a: ClassVar[tuple[tuple[float, ...], ...]]
    b: ClassVar[tuple[float, ...]]
    #: b - b_hat of the embedded lower-order solution; None for fixed-step methods
    e: ClassVar[tuple[float, ...] | None] = None
    #: order of the embedded solution b_hat (the error estimate is O(h^(error_order + 1)))
    error_order: ClassVar[int | None] = None
    #: first-same-as-last: the last stage is f(x_new, t + h), reused as the next step's first stage
    fsal: ClassVar[bool] = False

    @property
    def adaptive(self) -> bool:
        return self.e is not None

    @property
    def stages(self) -> int:
        return len(self.b)

    def step(self, fn: Callable, x: torch.Tensor, t: torch.Tensor, h: torch.Tensor, t_next: torch.Tensor,
             k0: torch.Tensor | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One step of size h from (x, t).

        Args:
            fn: the right-hand side on flattened rows, fn((n, d), (n,)) -> (n, d).
            x: (n, d) state.  t: (n,) time.  h: (n,) signed step (time dtype).
            t_next: (n,) the time the step ends at (t + h, or t1 exactly on a landing step): stages with c = 1
                are evaluated there.
            k0: (n, d) f(x, t) for FSAL methods (reused from the last accepted step), else None.

        Returns:
            (x_new (n, d), K) with K the list of the S stage derivatives (n, d): f's outputs as they came, never
            copied into one stacked buffer (at (1000, 3072) that copy was a third of the solver's own time).
        """
        S = self.stages
        K = [fn(x, t) if k0 is None else k0]
        xj = x
        for j in range(1, S):
            xj = _step.combine(x, K, h, self.a[j], check=False)
            K.append(fn(xj, t_next if self.c[j] == 1.0 else torch.add(t, h, alpha=self.c[j])))
        if self.fsal:  # a[-1] == b: the last stage's input is x_new itself
            return xj, K
        return _step.combine(x, K, h, self.b, check=False), K


class Euler(RungeKutta):
    """Forward Euler: order 1, one evaluation per step."""

    name = "euler"
    order = 1
    c = (0.0,)
    a = ((),)
    b = (1.0,)


class Heun(RungeKutta):
    """Heun's method (explicit trapezoidal rule): order 2, two evaluations per step."""

    name = "heun"
    order = 2
    c = (0.0, 1.0)
    a = ((), (1.0,))
    b = (0.5, 0.5)


class RK4(RungeKutta):
    """The classical Runge-Kutta method: order 4, four evaluations per step."""

    name = "rk4"
    order = 4
    c = (0.0, 0.5, 0.5, 1.0)
    a = ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0))
    b = (1 / 6, 1 / 3, 1 / 3, 1 / 6)


class Dopri5(RungeKutta):
    """Dormand & Prince (1980) 5(4) pair: order 5 with an embedded order-4 error estimate; FSAL, so 6 evaluations
    per step (Hairer, Norsett & Wanner, Solving ODEs I, II.5, Table 5.2)."""

    name = "dopri5"
    order = 5
    error_order = 4
    fsal = True
    c = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
    a = (
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    )
    b = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
    # b - b_hat, b_hat = (5179/57600, 0, 7571/16695, 393/640, -92097/339200, 187/2100, 1/40)
    e = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


#: The name registry: ``odeint(method=name)``.
METHODS: dict[str, type[RungeKutta]] = {m.name: m for m in (Euler, Heun, RK4, Dopri5)}
