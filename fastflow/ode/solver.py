"""ODE integration with a clock per sample: :func:`odeint` (docs/api.md, "ODE integration: fastflow.odeint").

Each sample of the batch carries its own time t_i, step h_i and accept/reject decision, so a batch mixing easy and
hard samples costs what each sample needs, not what the hardest one needs for all. Samples that reach their end
time leave the batch: every call of ``f`` gets only the rows still integrating (compaction), so the cost of an
evaluation follows the number of active samples.

Methods: euler, heun, rk4 (fixed steps) and dopri5 (adaptive), chosen by name (:mod:`fastflow.ode.methods`
has their table).

The loop (:func:`fastflow.ode.loop.integrate`) is written once; the methods are Butcher tableaux
(:mod:`fastflow.ode.methods`), and the per-step arithmetic goes through :func:`fastflow.ode.step.combine`
(every stage combination) and :func:`fastflow.ode.step.error_norm`
(the scaled error norm), the two functions that fused kernels replace.

Dtypes: time is kept in its own dtype (float64 by default, also when x is float32) and never mixed with the state
(torchode's rule): a float32 clock stalls once h < 6e-8 t, and lands on t1 only to 1e-7. The state is integrated
in x0's dtype when that is float32 or float64, else (float16, bfloat16) in float32, and returned in x0's dtype.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch

from .._core import nvtx
from .._core import validate as V
from .._core.progress import bar as progress_bar
from .loop import RHS, check_kwargs, integrate
from .methods import METHODS
from .results import ODEResult, StepInfo

__all__ = ["odeint"]


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


@nvtx.annotate("fastflow.odeint")
def odeint(f: Callable[..., torch.Tensor], x0: torch.Tensor, t0: float | torch.Tensor, t1: float | torch.Tensor, *,
           method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
           steps: int | torch.Tensor | Sequence[float] | None = None,
           max_steps: int = 10_000, callback: Callable[[StepInfo], object] | None = None, progress: bool = False,
           h0: float | torch.Tensor | None = None, dtype_t: torch.dtype | None = None,
           with_index: bool = False, model_kwargs: dict | None = None,
           t_eval: torch.Tensor | None = None, grad: bool = False) -> ODEResult:
    """Integrate dx/dt = f(x, t) from t0 to t1, each sample with its own clock, step size and end time.

    Samples that have landed on their t1 leave the batch: each call of ``f`` gets only the rows still integrating,
    in batch order. Per-sample parameters of f (class labels, rates) go in ``model_kwargs``, which follows the
    rows (or are looked up with ``with_index=True``).

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
        steps: the fixed-step methods' steps (required there, refused by dopri5): a number of equal steps
            (t1 - t0) / steps, or a 1-D grid of G >= 2 times (a tensor or a sequence), strictly monotone from
            grid[0] = t0 to grid[-1] = t1 (t0 and t1 then floats or 0-d), stepped on exactly: one step per interval,
            the same for every sample (diffusers' schedulers, flow_matching's time_grid).
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
        model_kwargs: per-sample inputs of f (class labels, guidance scales, conditioning images): f is called as
            ``f(x, t, **model_kwargs)``, each tensor of one or more dimensions (first dimension B) sliced to the
            rows still integrating; 0-d tensors and other values are passed as they are.
        t_eval: times at which to return the state as well: a (K,) grid for every sample or a (B, K) grid per
            sample (a tensor or a sequence of floats), each between t0 and t1 (inclusive) and strictly monotone
            from t0 towards t1. The solver lands on each of them (no interpolation): the interval is integrated
            segment by segment, t0 -> t_eval[0] -> ... -> t_eval[K-1] -> t1. dopri5 starts each segment with a
            fresh step estimate (2 evaluations); a fixed-step method takes ``steps`` equal steps in every
            segment (so ``t_eval`` with steps=1 steps exactly on the grid). The states come back as
            ``ODEResult.x_eval`` (K, B, *shape).
        grad: backpropagate through the solver (discretise-then-optimise): the result is differentiable in x0
            and in whatever f's output depends on (a network's parameters, tensors in model_kwargs), through
            every stage of the fixed-step methods and of dopri5's accepted steps; the step sizes that the error
            control chose are constants (not differentiated), and rejected trial steps leave no graph. The
            compaction of finished rows stays differentiable. Memory grows with the number of steps (each stage
            is kept for the backward); the step arithmetic runs in plain torch ops then, not the fused kernels.

    Returns:
        :class:`ODEResult` with x (B, *shape) in x0's dtype, t (B,) in the time dtype, nfe (B,) int64, success (B,)
        bool, n_accepted and n_rejected (B,) int64.

    Raises:
        TypeError / ValueError: bad arguments (the message names the argument), or f returning a wrong type, shape
            or device (the message names f).
        FloatingPointError: f returned NaN or inf: at x0 for dopri5; at any step of a fixed-step method (found at
            the next check); for dopri5 when a sample's step size underflows (t + h == t) after trial steps that
            hit NaN or inf. A dopri5 trial step with a non-finite value is rejected and retried with h / 5 first,
            so a too-long step that leaves f's domain or overflows is recovered from. (A step size that
            underflows with finite values, at a
            singularity of the solution, stops that sample with success False.)

    Notes:
        dopri5: Hairer's starting step per sample (2 evaluations with f(x0)); then a step is 6 evaluations (FSAL).
        Step size control per sample: PI (Gustafsson) h_new = h 0.9 err^(-0.14) err_prev^(0.08) on acceptance
        (k = 5), h 0.9 err^(-0.2) on rejection, factor in [0.2, 10], no growth right after a rejection. Steps that
        would end within 1% of t1 are stretched to land exactly on it.

        Host syncs: once at the start (finite inputs, zero-length intervals, f(x0) finite), then one per step for
        dopri5: an (n, 4) bool status copied to the host decides which samples leave the batch (and, with a
        callback, which were accepted). The fixed-step methods, whose rows all take the same number of steps,
        check the state for NaN / inf (a pass over x and a sync) every 32 steps and at the last one only (every
        step with a callback). Nothing else waits for the device.

        float16/bfloat16 states are integrated in float32 (f still gets x0's dtype) and rounded once at the end.

        Without ``grad`` no gradients flow through odeint: it runs f under ``torch.no_grad()`` (a sampler: no
        graph through hundreds of evaluations of a network). There is no adjoint method.
    """
    if not callable(f):
        raise TypeError(f"f must be callable as f(x, t) -> dx/dt, got {type(f).__name__}")
    x0 = V.tensor("x0", x0)
    V.flag("grad", grad)
    if t_eval is not None:
        return _odeint_at(f, x0, t0, t1, t_eval, method=method, rtol=rtol, atol=atol, steps=steps,
                          max_steps=max_steps, callback=callback, progress=progress, h0=h0, dtype_t=dtype_t,
                          with_index=with_index, model_kwargs=model_kwargs, grad=grad)
    V.choice("method", method, METHODS)
    meth = METHODS[method]()
    rtol = V.number("rtol", rtol)
    atol = V.number("atol", atol)
    max_steps = V.count("max_steps", max_steps, minimum=1)
    if meth.adaptive:
        if steps is not None:
            raise ValueError(f"steps is for the fixed-step methods {[m for m in METHODS if not METHODS[m].e]}; "
                             f"method={method!r} chooses its own steps (use rtol/atol)")
    else:
        if steps is None:
            raise ValueError(f"steps is required for the fixed-step method {method!r} (the number of equal steps)")
        if isinstance(steps, (torch.Tensor, list, tuple)):
            steps = _step_grid(steps, t0, t1, dtype_t or torch.float64, x0.device)
        else:
            steps = V.count("steps", steps, minimum=1)
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
    model_kwargs = check_kwargs("model_kwargs", model_kwargs, B, device)
    if h0 is not None:
        if isinstance(h0, torch.Tensor):
            h0 = _times("h0", h0, B, dtype=dtype_t, device=device)
        else:
            h0 = _times("h0", V.number("h0", h0), B, dtype=dtype_t, device=device)
        if not bool((h0 > 0).all()):
            raise ValueError("h0 must be > 0 (a step magnitude; the direction comes from t1 - t0)")

    io_dtype = x0.dtype
    x0 = x0 if grad else x0.detach()
    state_dtype = io_dtype if io_dtype in (torch.float32, torch.float64) else torch.float32
    x = x0.reshape(B, d).to(dtype=state_dtype, copy=True)
    t = t0.clone()
    nfe = torch.zeros(B, dtype=torch.long, device=device)
    n_acc, n_rej = torch.zeros_like(nfe), torch.zeros_like(nfe)
    success = t0 == t1  # zero-length intervals are done; the rest are set when they land
    rhs = RHS(f, shape, io_dtype, state_dtype, nfe, with_index, model_kwargs)
    bar = progress_bar(progress, B, f"odeint[{method}]", unit="sample")
    try:
        # sampling, not training: no graph through hundreds of evaluations of a network, unless asked for
        with torch.set_grad_enabled(grad):
            integrate(meth, rhs, x, t, t1, success, n_acc, n_rej, steps=steps, h0=h0, rtol=rtol, atol=atol,
                       max_steps=max_steps, callback=callback, bar=bar)
    finally:
        rhs.flush()
        if bar is not None:
            bar.close()
    return ODEResult(x=x.reshape(B, *shape).to(io_dtype), t=t, nfe=nfe, success=success, n_accepted=n_acc,
                     n_rejected=n_rej)


def _step_grid(grid, t0, t1, dtype, device) -> torch.Tensor:
    """A checked (G,) grid of step times: 1-D, G >= 2, finite, strictly monotone, from t0 to t1."""
    g = torch.as_tensor(grid, dtype=dtype).detach().to(device)
    if g.dim() != 1 or g.numel() < 2:
        raise ValueError(f"steps as a grid must be 1-D with at least 2 times, got shape {tuple(g.shape)}")
    if not V.all_finite(g):
        raise ValueError("the steps grid contains NaN or inf")
    dg = g[1:] - g[:-1]
    if not (bool((dg > 0).all()) or bool((dg < 0).all())):
        raise ValueError("the steps grid must be strictly monotone")
    for name, v, end in (("t0", t0, g[0]), ("t1", t1, g[-1])):
        vv = torch.as_tensor(v, dtype=dtype)
        if vv.numel() != 1 or float(vv) != float(end):
            raise ValueError(f"with a steps grid, {name} must be the grid's {'first' if name == 't0' else 'last'} "
                             f"time {float(end)} (one value for every sample), got {v!r:.40}")
    return g


def _odeint_at(f, x0, t0, t1, t_eval, *, dtype_t, h0, **kw) -> ODEResult:
    """:func:`odeint` with ``t_eval``: one integration per segment t0 -> t_eval[:, 0] -> ... -> t1, landing on
    each output time, the segments' counts added up."""
    B, device = x0.shape[0], x0.device
    tdt = torch.float64 if dtype_t is None else dtype_t
    t0 = _times("t0", t0, B, dtype=tdt, device=device)
    t1 = _times("t1", t1, B, dtype=tdt, device=device)
    if not isinstance(t_eval, torch.Tensor):
        try:
            t_eval = torch.tensor(t_eval, dtype=tdt)
        except (TypeError, ValueError) as e:
            raise TypeError(f"t_eval must be a tensor or a sequence of floats, got {type(t_eval).__name__}") from e
    if t_eval.dtype == torch.bool or t_eval.is_complex():
        raise TypeError(f"t_eval must be real, got {t_eval.dtype}")
    t_eval = t_eval.to(device=device, dtype=tdt)
    if t_eval.dim() == 1:
        t_eval = t_eval[None].expand(B, -1)
    if t_eval.dim() != 2 or t_eval.shape[0] != B or t_eval.shape[1] == 0:
        raise ValueError(f"t_eval must be a non-empty (K,) grid or a (B, K) = ({B}, K) grid per sample, got shape "
                         f"{tuple(t_eval.shape)}")
    if not V.all_finite(t_eval):
        raise ValueError("t_eval contains NaN or inf")
    sign = torch.sign(t1 - t0)[:, None]
    grid = torch.cat((t0[:, None], t_eval, t1[:, None]), dim=1)
    steps_ok = (sign * (grid[:, 1:] - grid[:, :-1]) >= 0).all(dim=1) & (sign[:, 0] != 0)
    strict = (sign * (t_eval[:, 1:] - t_eval[:, :-1]) > 0).all(dim=1)
    if not bool((steps_ok & strict).all()):
        bad = torch.nonzero(~(steps_ok & strict)).squeeze(1)[:8].tolist()
        raise ValueError(f"t_eval must lie between t0 and t1 and be strictly monotone from t0 towards t1 (t0 != "
                         f"t1) for every sample; it is not for samples {bad}")
    x, t = x0, t0
    nfe = torch.zeros(B, dtype=torch.long, device=device)
    n_acc, n_rej = torch.zeros_like(nfe), torch.zeros_like(nfe)
    success = torch.ones(B, dtype=torch.bool, device=device)
    outs = []
    for k in range(t_eval.shape[1] + 1):
        end = t_eval[:, k] if k < t_eval.shape[1] else t1
        res = odeint(f, x, t, end, dtype_t=tdt, h0=h0 if k == 0 else None, **kw)
        x, t = res.x, res.t
        nfe += res.nfe
        n_acc += res.n_accepted
        n_rej += res.n_rejected
        success &= res.success
        if k < t_eval.shape[1]:
            outs.append(res.x)
    return ODEResult(x=x, t=t, nfe=nfe, success=success, n_accepted=n_acc, n_rejected=n_rej,
                     x_eval=torch.stack(outs))
