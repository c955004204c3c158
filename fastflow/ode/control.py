"""Per-sample step-size control of the adaptive Runge-Kutta solvers (fastflow/ode/loop.py), after each trial step.

:func:`control_reference` is the specification, in plain torch (~50 small ops); :func:`control` runs the C++ op
``fastflow::rk_control_`` (csrc/rk_control.cpp, one pass over the samples) on CPU tensors when ``fastflow._C`` is
built, the Triton kernel ``_rk_control_kernel`` (kernels/ode.py, one launch) on CUDA, else the reference. At the
PFGM benchmark's size (256 samples) the op takes the control from ~0.2 ms to a few microseconds a step.

State, per active sample (n,): t, h (the step the controller proposes), h_try and t_next (the trial step and where
it ends: h, or the remainder to t1 when that is within LAND_STRETCH steps), err_prev (for the PI term), all in the
time dtype; ``status`` (n, 6) bool, columns :data:`DONE`, :data:`STALLED`, :data:`BAD`, :data:`ACCEPT`,
:data:`LANDS`, :data:`REJECTED`.
"""
from __future__ import annotations

import torch

from .._core.dispatch import select_backend, use_ext

#: PI controller (Gustafsson 1991; Hairer & Wanner, Solving ODEs II, IV.2 eq. (2.43c)):
#: h_new = h * SAFETY * err^(-alpha/k) * err_prev^(beta/k), k = error_order + 1, factor clamped to [FAC_MIN, FAC_MAX].
#: alpha/k = 0.17, beta/k = 0.04 are Hairer's DOPRI5 gains (beta = 0.04). Gustafsson's 0.7/0.4 settled the error
#: at ~0.17 tol and took 1.3-1.4x the evaluations (benchmarks/bench_solvers.py: 86 vs 68 calls on the analytic
#: workload, 32.5k vs 24.9k sample-evaluations on the PFGM oracle) for accuracy nobody asked for.
PI_ALPHA, PI_BETA = 0.85, 0.2
SAFETY, FAC_MIN, FAC_MAX = 0.9, 0.2, 10.0
#: floor of the previous error in the PI term (Hairer's DOPRI5 uses 1e-4): a near-zero error cannot make the next
#: factor explode through err_prev^beta.
ERR_PREV_MIN = 1e-4
#: Hairer's landing rule: a step that would end within 1% of t1 is stretched to land on it (no sliver step).
LAND_STRETCH = 1.01

#: columns of ``status``: outputs of the last trial step (done: accepted and on t1; stalled: the next step cannot
#: move the clock; accept), and state (bad: some trial step was ever non-finite; lands: the next trial step ends on
#: t1; rejected: the last trial step was rejected)
DONE, STALLED, BAD, ACCEPT, LANDS, REJECTED = range(6)
N_STATUS = 6


def gains(k: int) -> list[float]:
    """The op's gains for error order k - 1: safety, fac_min, fac_max, alpha/k, beta/k, 1/k, err_prev_min,
    land_stretch."""
    return [SAFETY, FAC_MIN, FAC_MAX, PI_ALPHA / k, PI_BETA / k, 1.0 / k, ERR_PREV_MIN, LAND_STRETCH]


def propose(t: torch.Tensor, h: torch.Tensor, t1: torch.Tensor):
    """The trial step from (t, h): (h_try, t_next, lands), landing on t1 when |t1 - t| <= LAND_STRETCH |h|."""
    rem = t1 - t
    lands = rem.abs() <= LAND_STRETCH * h.abs()
    h_try = torch.where(lands, rem, h)
    return h_try, torch.where(lands, t1, t + h_try), lands


def pi_factor(err, err_prev, accept, finite, rejected_prev, k: int) -> torch.Tensor:
    """(n,) factor h_new / h_try per sample: PI on accepted steps, I (err^(-1/k), at most 1) on rejected ones,
    FAC_MIN where the error is not finite; no growth on the step after a rejection (Hairer's DOPRI5)."""
    e = err.clamp_min(1e-10)  # err = 0 (an exact step): the clamp to FAC_MAX decides
    fac_acc = (SAFETY * e.pow(-PI_ALPHA / k) * err_prev.pow(PI_BETA / k)).clamp(FAC_MIN, FAC_MAX)
    fac_acc = torch.where(rejected_prev, fac_acc.clamp_max(1.0), fac_acc)
    fac_rej = (SAFETY * e.pow(-1.0 / k)).clamp(FAC_MIN, 1.0)
    fac_rej = torch.where(finite, fac_rej, torch.full_like(fac_rej, FAC_MIN))
    return torch.where(accept, fac_acc, fac_rej)


def control_reference(t, h, h_try, t_next, err_prev, status, t1, err, xmax, k: int) -> None:
    """After a trial step from t to t_next with error norm err (n,) and max |x_new| per row xmax (n,): update
    t, h, h_try, t_next, err_prev (n,) and status (n, 6) in place (module docstring). k = error order + 1.

    A trial step is accepted when err <= 1 and both err and xmax are finite; then t = t_next, and err_prev takes
    max(err, ERR_PREV_MIN). h = h_try * :func:`pi_factor`. done = accepted and landed on t1; stalled = not done
    and t + h == t in the time dtype; bad |= not finite. Then the next trial step is proposed from (t, h)."""
    err = err.to(t.dtype)
    finite = torch.isfinite(xmax) & torch.isfinite(err)
    accept = finite & (err <= 1.0)
    h_new = h_try * pi_factor(err, err_prev, accept, finite, status[:, REJECTED], k)
    err_prev.copy_(torch.where(accept, err.clamp_min(ERR_PREV_MIN), err_prev))
    t_new = torch.where(accept, t_next, t)
    done = accept & status[:, LANDS]
    status[:, DONE] = done
    status[:, STALLED] = ~done & (t_new + h_new == t_new)
    status[:, BAD] |= ~finite
    status[:, ACCEPT] = accept
    status[:, REJECTED] = ~accept
    nh, nt, lands = propose(t_new, h_new, t1)
    status[:, LANDS] = lands
    h_try.copy_(nh)
    t_next.copy_(nt)
    t.copy_(t_new)
    h.copy_(h_new)


def control_triton(t, h, h_try, t_next, err_prev, status, t1, err, xmax, k: int) -> None:
    """:func:`control_reference` in one Triton launch (``fastflow.kernels.ode._rk_control_kernel``); the same
    arguments, contiguous. Under the interpreter (CPU tensors) one program takes the whole batch."""
    import triton

    from ..kernels.ode import _rk_control_kernel

    n = t.shape[0]
    if n == 0:
        return
    block = min(triton.next_power_of_2(n), 8192) if t.device.type == "cpu" else 256
    _rk_control_kernel[(triton.cdiv(n, block),)](
        t, h, h_try, t_next, err_prev, status.view(torch.uint8), t1, err, xmax, n,
        GAINS=tuple(gains(k)), BLOCK=block, num_warps=2)


def control(t, h, h_try, t_next, err_prev, status, t1, err, xmax, k: int) -> None:
    """:func:`control_reference` by the fastest path for the device (same arguments; the tensors as the solver
    keeps them: contiguous (n,), status contiguous (n, 6) bool): the C++ op on the CPU when fastflow._C is built,
    the Triton kernel on CUDA when Triton is installed, else the reference. FASTFLOW_BACKEND=reference forces the
    reference, =torch the reference on CUDA."""
    name = select_backend(t.device, prefer_triton=True)
    if name == "triton" and t.device.type == "cuda":
        control_triton(t, h, h_try, t_next, err_prev, status, t1, err, xmax, k)
    elif name != "reference" and use_ext(t):
        torch.ops.fastflow.rk_control_(t, h, h_try, t_next, err_prev, status, t1, err, xmax, gains(k))
    else:
        control_reference(t, h, h_try, t_next, err_prev, status, t1, err, xmax, k)
