"""What :func:`fastflow.odeint` returns (:class:`ODEResult`) and what its callback gets (:class:`StepInfo`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ODEResult", "StepInfo"]


@dataclass
class ODEResult:
    """What :func:`odeint` returns.

    Attributes:
        x: (B, *shape) the state at ``t``, in x0's dtype.
        t: (B,) the time each sample reached, in the time dtype (float64 by default): t1 where ``success``.
        nfe: (B,) int64, the evaluations of f that involved each sample (the initial-step probe included).
        success: (B,) bool, whether the sample reached its t1 (False: ``max_steps`` ran out, or the step size
            underflowed, i.e. t + h == t in the time dtype).
        n_accepted: (B,) int64 accepted steps per sample.
        n_rejected: (B,) int64 rejected steps per sample (always 0 for the fixed-step methods).
        x_eval: (K, B, *shape) the states at the times ``t_eval`` asked of :func:`odeint` (x0's dtype), else None.
    """

    x: torch.Tensor
    t: torch.Tensor
    nfe: torch.Tensor
    success: torch.Tensor
    n_accepted: torch.Tensor
    n_rejected: torch.Tensor
    x_eval: torch.Tensor | None = None


@dataclass
class StepInfo:
    """What ``callback`` gets after each step of the batch in which at least one sample's step was accepted.

    Only the samples whose step was accepted in this iteration appear (m of them). Read, do not modify.

    Attributes:
        step: 1-based iteration count of the loop (one attempted step for every active sample).
        index: (m,) int64 positions in the batch of the samples whose step was accepted.
        t: (m,) their time after the step, in the time dtype.
        x: (m, *shape) their state after the step, in x0's dtype.
        h: (m,) the (signed) step they took, in the time dtype.
        nfe: (B,) int64 evaluations of f so far per sample (a copy).
        n_active: samples that were integrating during this step (finished ones leave after the callback).
    """

    step: int
    index: torch.Tensor
    t: torch.Tensor
    x: torch.Tensor
    h: torch.Tensor
    nfe: torch.Tensor
    n_active: int
