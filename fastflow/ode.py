"""ODE integration with a clock per sample: :func:`odeint` (API.md, "ODE integration: fastflow.odeint").

Each sample of the batch carries its own time t_i, step h_i and accept/reject decision, so a batch mixing easy and
hard samples costs what each sample needs, not what the hardest one needs for all. Samples that reach their end
time leave the batch: every call of ``f`` gets only the rows still integrating (compaction), so the cost of an
evaluation follows the number of active samples.

Methods (:data:`METHODS`, chosen by name):

====================  =====  ======  ===========================================================
name                  order  evals   step
====================  =====  ======  ===========================================================
``"euler"``           1      1       fixed, ``steps`` equal steps from t0 to t1
``"heun"``            2      2       fixed (explicit trapezoidal rule)
``"rk4"``             4      4       fixed (classical Runge-Kutta)
``"dopri5"``          5(4)   6/step  adaptive: Dormand-Prince pair, FSAL, PI step-size control
====================  =====  ======  ===========================================================

The loop (:func:`_integrate`) is written once; the methods are Butcher tableaux, and the per-step arithmetic goes
through :func:`fastflow._ode_step.combine` (every stage combination) and :func:`fastflow._ode_step.error_norm`
(the scaled error norm), the two functions that fused kernels replace.

Dtypes: time is kept in its own dtype (float64 by default, also when x is float32) and never mixed with the state
(torchode's rule): a float32 clock stalls once h < 6e-8 t, and lands on t1 only to 1e-7. The state is integrated
in x0's dtype when that is float32 or float64, else (float16, bfloat16) in float32, and returned in x0's dtype.
"""
from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from . import _nvtx
from . import _ode_control as _ctl
from . import _ode_step
from . import _validate as V

__all__ = ["odeint", "ODEResult", "StepInfo", "METHODS", "RungeKutta", "Euler", "Heun", "RK4", "Dopri5"]


# ----------------------------------------------------------------------------------------------------------------
# Results

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
    """

    x: torch.Tensor
    t: torch.Tensor
    nfe: torch.Tensor
    success: torch.Tensor
    n_accepted: torch.Tensor
    n_rejected: torch.Tensor


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


# ----------------------------------------------------------------------------------------------------------------
# Methods: explicit Runge-Kutta tableaux

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
            xj = _ode_step.combine(x, K, h, self.a[j], check=False)
            K.append(fn(xj, t_next if self.c[j] == 1.0 else torch.add(t, h, alpha=self.c[j])))
        if self.fsal:  # a[-1] == b: the last stage's input is x_new itself
            return xj, K
        return _ode_step.combine(x, K, h, self.b, check=False), K


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


# ----------------------------------------------------------------------------------------------------------------
# Step-size control (adaptive methods)

def _initial_step(fn, x, t, t1, f0, k: int, rtol: float, atol: float) -> torch.Tensor:
    """Starting step size per sample (Hairer, Norsett & Wanner, Solving ODEs I, II.4, "Starting Step Size").

    d0 = ||x0||, d1 = ||f0||, h0 = 0.01 d0/d1 (1e-6 if either < 1e-5); one Euler probe x1 = x0 + h0 f0,
    d2 = ||f(x1) - f0|| / h0, h1 = (0.01 / max(d1, d2))^(1/k) (max(1e-6, 1e-3 h0) if max < 1e-15);
    h = min(100 h0, h1, |t1 - t0|). Norms are RMS scaled by atol + rtol |x0| (error_norm with e = (1,)).

    Args:
        x: (n, d).  t, t1: (n,) time dtype.  f0: (n, d) = f(x, t).  k: error_order + 1.

    Returns:
        (n,) signed step in the time dtype (one evaluation of f).
    """
    tdt = t.dtype
    span = (t1 - t).abs()
    direction = torch.sign(t1 - t)
    one = torch.ones_like(t)
    d0 = _ode_step.error_norm(x, x, x[None], one, (1.0,), rtol, atol).to(tdt)
    d1 = _ode_step.error_norm(x, x, f0[None], one, (1.0,), rtol, atol).to(tdt)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    h0 = torch.minimum(h0, span)
    x1 = _ode_step.combine(x, f0[None], direction * h0, (1.0,))
    f1 = fn(x1, t + direction * h0)
    d2 = _ode_step.error_norm(x, x, torch.stack((f1, f0)), 1.0 / h0, (1.0, -1.0), rtol, atol).to(tdt)
    dm = torch.maximum(d1, d2)
    h1 = torch.where(dm <= 1e-15, torch.clamp_min(h0 * 1e-3, 1e-6), (0.01 / dm) ** (1.0 / k))
    h = torch.minimum(100.0 * h0, h1)
    h = torch.where(torch.isfinite(d2), h, h0)  # f blew up at the probe: keep the cautious h0
    return direction * torch.minimum(h, span)


# ----------------------------------------------------------------------------------------------------------------
# The right-hand side, wrapped: shapes, dtypes, nfe, checks

class _RHS:
    """fn((n, d) state, (n,) time) -> (n, d): calls the user's f on the active rows with the user's shape and dtype,
    checks what comes back, and counts one evaluation for each active sample (``idx``)."""

    def __init__(self, f, shape, io_dtype, state_dtype, nfe, with_index: bool):
        self.f, self.shape, self.io_dtype, self.state_dtype = f, tuple(shape), io_dtype, state_dtype
        self.nfe, self.with_index = nfe, with_index
        self._idx: torch.Tensor = torch.empty(0, dtype=torch.long, device=nfe.device)
        self._pending = 0  # calls on the current rows not yet added to nfe (one index_add_ per batch change)

    def flush(self) -> None:
        """Add the pending evaluations to nfe (before the rows change, and before nfe is read)."""
        if self._pending:
            self.nfe.index_add_(0, self._idx, self.nfe.new_full((self._idx.numel(),), self._pending))
            self._pending = 0

    @property
    def idx(self) -> torch.Tensor:
        return self._idx

    @idx.setter
    def idx(self, value: torch.Tensor) -> None:
        self.flush()
        self._idx = value

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        xin = x.reshape(n, *self.shape).to(self.io_dtype)
        tin = t.to(self.io_dtype)
        out = self.f(xin, tin, self.idx) if self.with_index else self.f(xin, tin)
        V.f_output(out, xin.shape, ": only the samples still integrating are passed")
        if out.device != x.device:
            raise ValueError(f"f returned a tensor on {out.device}, expected {x.device} (the device of x)")
        self._pending += 1
        return out.reshape(n, -1).to(self.state_dtype)


# ----------------------------------------------------------------------------------------------------------------
# The integration loop, written once

def _progress_bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        warnings.warn("odeint(progress=True) needs tqdm (pip install tqdm); running without a progress bar",
                      stacklevel=3)
        return None
    return tqdm(total=total, desc=desc, unit="sample")


def _integrate(meth: RungeKutta, rhs: _RHS, x_full, t_full, t1_full, success, n_acc, n_rej, *, steps, h0, rtol,
               atol, max_steps, callback, bar):
    """Advance every sample with t != t1 until it lands on t1 (success), its step underflows, or max_steps steps.

    x_full: (B, d) state dtype; t_full, t1_full: (B,) time dtype; success, n_acc, n_rej: (B,) written in place.
    The per-sample state of the active rows: x, t, t1, h, the trial step (h_try, t_next) and, for adaptive
    methods, err_prev and the (n, 6) bool ``status`` of :mod:`fastflow._ode_control`, which one fused call
    (:func:`fastflow._ode_control.control`) updates after each trial step. One host sync per iteration: the flags
    (done / stalled / f non-finite / accepted) read back to decide which samples leave the batch. A stalled sample
    (t + h == t) that has had trial steps with non-finite values raises FloatingPointError (f is NaN/inf ahead of
    it); one without stops with success False.
    """
    device = x_full.device
    idx = torch.nonzero(t_full != t1_full).squeeze(1)  # host sync (once): zero-length intervals never start
    if bar is not None:
        bar.update(t_full.shape[0] - idx.numel())
    if idx.numel() == 0:
        return
    idx_h = idx.cpu().numpy()
    acc_h_total = np.zeros(t_full.shape[0], dtype=np.int64)  # accepted / rejected steps, counted on the host
    rej_h_total = np.zeros_like(acc_h_total)
    rhs.idx = idx
    x, t, t1 = x_full.index_select(0, idx), t_full.index_select(0, idx), t1_full.index_select(0, idx)
    n = idx.numel()

    k0 = None
    if meth.adaptive:
        k = meth.error_order + 1
        k0 = rhs(x, t)
        if not V.all_finite(k0):  # host sync (once)
            bad = idx[~torch.isfinite(k0).all(dim=1)]
            raise FloatingPointError(f"f returned NaN or inf at the initial state (x0, t0) of samples "
                                     f"{bad[:8].tolist()}")
        if h0 is None:
            h = _initial_step(rhs, x, t, t1, k0, k, rtol, atol)
        else:
            h = torch.sign(t1 - t) * torch.minimum(h0.index_select(0, idx), (t1 - t).abs())
        err_prev = torch.ones_like(t)
        status = torch.zeros(n, _ctl.N_STATUS, dtype=torch.bool, device=device)
        h_try, t_next, lands = _ctl.propose(t, h, t1)
        status[:, _ctl.LANDS] = lands
        h = h.contiguous()
    else:
        h = (t1 - t) / steps

    def rows(mask):
        return torch.from_numpy(np.flatnonzero(mask)).to(device)

    it = 0
    while True:
        it += 1
        if not meth.adaptive:
            h_try, t_next, lands = _ctl.propose(t, h, t1)
        h_step = h_try.clone() if callback is not None else h_try  # the control overwrites h_try in place
        x_new, K = meth.step(rhs, x, t, h_try, t_next, k0)
        # max |x_new| per row (NaN propagates): 0.26 ms at (1000, 3072) fp32, against 2.8 ms for
        # isfinite(x).all(dim=1) and 4.4 ms for vector_norm(ord=inf); a row sum would be faster but can overflow
        xmax = x_new.abs().amax(dim=1)
        if meth.adaptive:
            err = _ode_step.error_norm(x, x_new, K, h_try, meth.e, rtol, atol, check=False)
            _ctl.control(t, h, h_try, t_next, err_prev, status, t1, err, xmax, k)
            # the one host sync per step: done / stalled / bad / accept, read with numpy (a torch op on the host
            # copy costs ~3 us)
            flags = status[:, :4].cpu().numpy()
            done_h, stalled_h, bad_h, acc_h = flags[:, 0], flags[:, 1], flags[:, 2], flags[:, 3]
            done = status[:, _ctl.DONE]
        else:
            finite = torch.isfinite(xmax)
            t = torch.where(finite, t_next, t)
            done = finite & lands
            stalled = ~done & (t + h == t)  # a clock too coarse for h (float32 time): stop, success False
            flags = torch.stack((done, stalled, finite), dim=1).cpu().numpy()
            done_h, stalled_h, acc_h = flags[:, 0], flags[:, 1], flags[:, 2]
            bad_h = ~acc_h
            if bad_h.any():
                bad = idx[rows(bad_h)]
                raise FloatingPointError(f"f returned NaN or inf (or the step overflowed) for samples "
                                         f"{bad[:8].tolist()} after {it - 1} steps of {meth.name}; check f, or take "
                                         "more steps")

        # x (and the FSAL stage) take the step's values; rejected rows, usually none, keep the old ones
        k_last = K[-1] if meth.adaptive else None
        if not acc_h.all():
            rej = rows(~acc_h)
            x_new.index_copy_(0, rej, x.index_select(0, rej))
            if meth.adaptive:  # their f(x, t) is K[0], the previous k0 (a copy: f's output may be f's own memory)
                k_last = k_last.clone().index_copy_(0, rej, K[0].index_select(0, rej))
        x = x_new
        if meth.adaptive:
            k0 = k_last
            rej_h_total[idx_h] += ~acc_h
            if (stalled_h & bad_h).any():
                pos = rows(stalled_h & bad_h)
                raise FloatingPointError(
                    f"f returned NaN or inf near t = {t.index_select(0, pos)[:8].tolist()} for samples "
                    f"{idx.index_select(0, pos)[:8].tolist()}: the step size shrank to nothing trying to avoid it "
                    "(rejected trial steps with NaN / inf, then t + h == t)")
        acc_h_total[idx_h] += acc_h

        if callback is not None and acc_h.any():
            rhs.flush()
            pos = rows(acc_h)
            m = pos.numel()
            callback(StepInfo(step=it, index=idx.index_select(0, pos), t=t.index_select(0, pos),
                              x=x.index_select(0, pos).reshape(m, *rhs.shape).to(rhs.io_dtype),
                              h=h_step.index_select(0, pos), nfe=rhs.nfe.clone(), n_active=n))

        leave = done_h | stalled_h
        out_of_steps = it >= max_steps
        if leave.any() or out_of_steps:
            if out_of_steps:  # the rest stop where they are, success stays False
                leave = np.ones_like(leave)
            pos = rows(leave)
            gone = idx.index_select(0, pos)
            x_full.index_copy_(0, gone, x.index_select(0, pos))
            t_full.index_copy_(0, gone, t.index_select(0, pos))
            success.index_copy_(0, gone, done.index_select(0, pos))
            keep_h = np.flatnonzero(~leave)
            idx_h = idx_h[keep_h]
            n = keep_h.size
            if bar is not None:
                bar.update(pos.numel())
            if n == 0:
                break
            keep = torch.from_numpy(keep_h).to(device)
            idx, x, t, t1, h = (v.index_select(0, keep) for v in (idx, x, t, t1, h))
            if meth.adaptive:
                k0, h_try, t_next, err_prev, status = (
                    v.index_select(0, keep) for v in (k0, h_try, t_next, err_prev, status))
            rhs.idx = idx
        if bar is not None:
            bar.set_postfix(step=it, active=n, refresh=False)
    n_acc.add_(torch.from_numpy(acc_h_total).to(device))
    n_rej.add_(torch.from_numpy(rej_h_total).to(device))


# ----------------------------------------------------------------------------------------------------------------
# The public function

def _times(name: str, v, B: int, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``v`` as a finite (B,) tensor of the time dtype: a real Python number, a 0-d tensor or a (B,) tensor."""
    if isinstance(v, torch.Tensor):
        if v.dtype == torch.bool or v.is_complex():
            raise TypeError(f"{name} must be a float or a real (B,) tensor, got {v.dtype}")
        if v.dim() == 0:
            v = v.to(device).reshape(1).expand(B)
        elif tuple(v.shape) != (B,):
            raise ValueError(f"{name} must be a float or a tensor of shape (B,) = ({B},), got {tuple(v.shape)}")
        elif v.device != device:
            raise ValueError(f"{name} must be on {device} like x0, got {v.device}")
        v = v.to(dtype).contiguous()
        if not V.all_finite(v):
            raise ValueError(f"{name} contains NaN or inf (in the time dtype {dtype})")
        return v.clone()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a float or a (B,) tensor, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    out = torch.full((B,), v, dtype=dtype, device=device)
    if not V.all_finite(out):
        raise ValueError(f"{name} = {v} overflows the time dtype {dtype}")
    return out


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    return int(v)


@_nvtx.annotate("fastflow.odeint")
def odeint(f: Callable[..., torch.Tensor], x0: torch.Tensor, t0: float | torch.Tensor, t1: float | torch.Tensor, *,
           method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None,
           max_steps: int = 10_000, callback: Callable[[StepInfo], object] | None = None, progress: bool = False,
           h0: float | torch.Tensor | None = None, dtype_t: torch.dtype | None = None,
           with_index: bool = False) -> ODEResult:
    """Integrate dx/dt = f(x, t) from t0 to t1, each sample with its own clock, step size and end time.

    Samples that have landed on their t1 leave the batch: each call of ``f`` gets only the rows still integrating,
    in batch order. Per-sample parameters of f (class labels, rates) must therefore come with the state or the time,
    or be looked up with ``with_index=True``.

    Args:
        f: the velocity, ``f(x, t) -> dx/dt`` with x (n, *shape) and t (n,), n <= B the samples still integrating;
            returns (n, *shape) (any float dtype; cast to the state dtype). x and t are given in x0's dtype (what a
            network expects; the integrator's own clock stays in the time dtype). f must not modify x in place.
            With ``with_index=True``: ``f(x, t, index)``, index (n,) int64 the rows' positions in the batch.
        x0: (B, *shape) initial state, float16/bfloat16/float32/float64, CPU or CUDA.
        t0: float or (B,) tensor, the start time of each sample.
        t1: float or (B,) tensor, the end time; t1 < t0 integrates backward (directions may differ per sample);
            t1 == t0 returns x0 with nfe 0 and success True.
        method: ``"dopri5"`` (adaptive), or ``"euler"``, ``"heun"``, ``"rk4"`` (fixed steps; see :data:`METHODS`).
        rtol, atol: tolerances of dopri5: a step is accepted when the RMS over d of
            err / (atol + rtol max(|x|, |x_new|)) is <= 1, for each sample on its own.
        steps: number of equal steps (t1 - t0) / steps of the fixed-step methods (required there, refused by dopri5).
        max_steps: the most attempted steps (accepted + rejected) per sample; samples still integrating then stop
            where they are with ``success`` False (no exception).
        callback: ``callback(info)`` after each iteration in which some step was accepted; ``info`` is a
            :class:`StepInfo` with the index, t, x and h of the samples whose step was accepted. Its return value
            is ignored.
        progress: show a tqdm bar of samples finished (imported only then; a warning if tqdm is missing).
        h0: dopri5 only: the magnitude of the first step, a positive float or (B,) tensor, instead of Hairer's
            starting-step estimate (which costs one evaluation of f).
        dtype_t: the time dtype, torch.float64 (the default, whatever x0's dtype) or torch.float32.
        with_index: call ``f(x, t, index)`` (see ``f``).

    Returns:
        :class:`ODEResult` with x (B, *shape) in x0's dtype, t (B,) in the time dtype, nfe (B,) int64, success (B,)
        bool, n_accepted and n_rejected (B,) int64.

    Raises:
        TypeError / ValueError: bad arguments (the message names the argument), or f returning a wrong type, shape
            or device (the message names f).
        FloatingPointError: f returned NaN or inf: at x0 for dopri5; at any step of a fixed-step method; for dopri5
            when a sample's step size underflows (t + h == t) after trial steps that hit NaN or inf. A dopri5 trial
            step with a non-finite value is rejected and retried with h / 5 first, so a too-long step that leaves
            f's domain or overflows is recovered from. (A step size that underflows with finite values, at a
            singularity of the solution, stops that sample with success False.)

    Notes:
        dopri5: Hairer's starting step per sample (2 evaluations with f(x0)); then a step is 6 evaluations (FSAL).
        Step size control per sample: PI (Gustafsson) h_new = h 0.9 err^(-0.14) err_prev^(0.08) on acceptance
        (k = 5), h 0.9 err^(-0.2) on rejection, factor in [0.2, 10], no growth right after a rejection. Steps that
        would end within 1% of t1 are stretched to land exactly on it.

        Host syncs: once at the start (finite inputs, zero-length intervals, f(x0) finite), then one per step: an
        (n, 4) bool status copied to the host decides which samples leave the batch (and, with a callback, which
        were accepted). Nothing else waits for the device.

        float16/bfloat16 states are integrated in float32 (f still gets x0's dtype) and rounded once at the end.

        No gradients flow through odeint: it runs f under ``torch.no_grad()`` (a sampler; backpropagation through
        the solver or an adjoint method is not provided).
    """
    if not callable(f):
        raise TypeError(f"f must be callable as f(x, t) -> dx/dt, got {type(f).__name__}")
    x0 = V.tensor("x0", x0)
    V.choice("method", method, METHODS)
    meth = METHODS[method]()
    rtol = V.number("rtol", rtol)
    atol = V.number("atol", atol)
    max_steps = _positive_int("max_steps", max_steps)
    if meth.adaptive:
        if steps is not None:
            raise ValueError(f"steps is for the fixed-step methods {[m for m in METHODS if not METHODS[m].e]}; "
                             f"method={method!r} chooses its own steps (use rtol/atol)")
    else:
        if steps is None:
            raise ValueError(f"steps is required for the fixed-step method {method!r} (the number of equal steps)")
        steps = _positive_int("steps", steps)
        if h0 is not None:
            raise ValueError(f"h0 is for the adaptive method dopri5; method={method!r} takes (t1 - t0) / steps")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    V.flag("progress", progress)
    V.flag("with_index", with_index)
    dtype_t = torch.float64 if dtype_t is None else V.float_dtype("dtype_t", dtype_t)
    if dtype_t not in (torch.float32, torch.float64):
        raise ValueError(f"dtype_t must be torch.float64 (the default) or torch.float32, got {dtype_t}")

    B, shape, device = x0.shape[0], tuple(x0.shape[1:]), x0.device
    d = math.prod(shape)
    if d == 0:
        raise ValueError(f"x0 must have at least one element per sample, got shape {tuple(x0.shape)}")
    t0 = _times("t0", t0, B, dtype=dtype_t, device=device)
    t1 = _times("t1", t1, B, dtype=dtype_t, device=device)
    if h0 is not None:
        if isinstance(h0, torch.Tensor):
            h0 = _times("h0", h0, B, dtype=dtype_t, device=device)
        else:
            h0 = _times("h0", V.number("h0", h0), B, dtype=dtype_t, device=device)
        if not bool((h0 > 0).all()):
            raise ValueError("h0 must be > 0 (a step magnitude; the direction comes from t1 - t0)")

    io_dtype = x0.dtype
    x0 = x0.detach()
    state_dtype = io_dtype if io_dtype in (torch.float32, torch.float64) else torch.float32
    x = x0.reshape(B, d).to(dtype=state_dtype, copy=True)
    t = t0.clone()
    nfe = torch.zeros(B, dtype=torch.long, device=device)
    n_acc, n_rej = torch.zeros_like(nfe), torch.zeros_like(nfe)
    success = t0 == t1  # zero-length intervals are done; the rest are set when they land
    rhs = _RHS(f, shape, io_dtype, state_dtype, nfe, with_index)
    bar = _progress_bar(progress, B, f"odeint[{method}]")
    try:
        with torch.no_grad():  # sampling, not training: no graph through hundreds of evaluations of a network
            _integrate(meth, rhs, x, t, t1, success, n_acc, n_rej, steps=steps, h0=h0, rtol=rtol, atol=atol,
                       max_steps=max_steps, callback=callback, bar=bar)
    finally:
        rhs.flush()
        if bar is not None:
            bar.close()
    return ODEResult(x=x.reshape(B, *shape).to(io_dtype), t=t, nfe=nfe, success=success, n_accepted=n_acc,
                     n_rejected=n_rej)
