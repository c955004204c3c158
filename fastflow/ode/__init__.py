"""ODE integration with a clock per sample (:func:`odeint`).

- :mod:`.solver`: :func:`odeint`, the public entry point (argument checks, dtypes, the progress bar);
- :mod:`.results`: :class:`ODEResult` and the callback's :class:`StepInfo`;
- :mod:`.methods`: the Runge-Kutta tableaux and the name registry :data:`METHODS`;
- :mod:`.loop`: the integration loop, written once;
- :mod:`.control`: per-sample step-size control (reference, C++ op, Triton kernel);
- :mod:`.step`: the stage combinations and error norms (reference / torch / triton in :mod:`.step_reference`,
  :mod:`.step_torch`, :mod:`.step_triton`).
"""
from .methods import METHODS, RK4, Dopri5, Euler, Heun, RungeKutta
from .results import ODEResult, StepInfo
from .solver import odeint

__all__ = ["odeint", "ODEResult", "StepInfo", "METHODS", "RungeKutta", "Euler", "Heun", "RK4", "Dopri5"]
