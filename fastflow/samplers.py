"""Samplers built on :func:`fastflow.odeint`, and the exact-field oracle.

- :func:`edm_sigmas`, :func:`edm_sample`: EDM's sampler (Karras et al. 2022, Algorithm 1, and Algorithm 2's churn;
  Heun, Euler or DPM-Solver++(2M)) for the Gaussian (VE/EDM) family and for PFGM++ (sigma = r / sqrt(D), Xu et
  al. 2023).
- :func:`flow_sample`: a velocity model (rectified flow / flow matching) integrated from t = 1 to t = 0.
- :func:`family_sample` and :class:`Oracle`: the model-free velocity of any family from its exact empirical field
  (``family.velocity(x, t, ref)``), to compare solvers and constructions without training anything.

Conventions: every sampler takes its start points (x_T, x_1) drawn by the caller (``family.prior``), returns a
:class:`SampleResult`, and accepts ``callback`` and ``progress`` (a tqdm bar).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ._core import nvtx
from ._core import validate as V
from ._core.progress import bar as progress_bar
from ._core.types import DeviceLike
from .families import Family
from .field.nearest import nearest as _nearest
from .multistep import dpmpp_2m_path
from .ode import ODEResult, StepInfo, odeint
from .ode.methods import METHODS
from .schedulers import Scheduler

__all__ = ["SampleResult", "edm_sigmas", "edm_sample", "flow_sample", "family_sample", "Oracle", "straightness"]


@dataclass
class SampleResult:
    """What the samplers return.

    Attributes:
        x: (B, *shape) the samples, in x_init's dtype.
        nfe: (B,) int64 evaluations of the model per sample.
        success: (B,) bool: the sample reached the end time (False: the solver's max_steps ran out).
        t: (B,) the time each sample reached (the sampler's own variable: sigma, t, or log z for PFGM).
        intermediates: None, or the states on the sampler's grid when asked for (``return_intermediates``):
            (G, B, *shape), x_init first and x last (:func:`edm_sample`: G = K + 1 noise levels).
    """

    x: torch.Tensor
    nfe: torch.Tensor
    success: torch.Tensor
    t: torch.Tensor
    intermediates: torch.Tensor | None = None


def edm_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, *,
               dtype: torch.dtype = torch.float64, device: DeviceLike = None) -> torch.Tensor:
    """EDM's noise levels (Karras et al. 2022, eq. 5), with the final 0 appended.

    sigma_i = (sigma_max^(1/rho) + i / (steps - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i < steps;
    sigma_steps = 0.

    Returns:
        (steps + 1,) tensor, decreasing from sigma_max to sigma_min, then 0.
    """
    steps = V.count("steps", steps, minimum=1)
    sigma_min = V.number("sigma_min", sigma_min)
    sigma_max = V.number("sigma_max", sigma_max)
    rho = V.number("rho", rho)
    if sigma_max < sigma_min:
        raise ValueError(f"sigma_max ({sigma_max}) must be >= sigma_min ({sigma_min})")
    dtype = V.float_dtype("dtype", dtype)
    if device is not None:
        device = V.device("device", device)
    i = torch.arange(steps, dtype=torch.float64, device=device)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    frac = i / (steps - 1) if steps > 1 else torch.zeros_like(i)
    s = (hi + frac * (lo - hi)) ** rho
    return torch.cat([s, s.new_zeros(1)]).to(dtype)


_EDM_SOLVERS = ("heun", "euler", "dpmpp_2m")
_EDM_GRID_DEFAULTS = (0.002, 80.0, 18, 7.0)  # edm_sample's sigma_min, sigma_max, steps, rho


def _edm_grid(sigmas) -> list[float]:
    """A user's sigma grid as Python floats (float64), validated: 1-D, >= 2 values, finite, > 0 except a final 0,
    strictly decreasing."""
    if isinstance(sigmas, torch.Tensor):
        if sigmas.is_complex() or sigmas.dtype == torch.bool:
            raise TypeError(f"sigmas must be real numbers, got a {sigmas.dtype} tensor")
        grid = sigmas.detach().to("cpu", torch.float64)
    else:
        try:
            grid = torch.as_tensor(sigmas, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"sigmas must be a 1-D tensor or a sequence of numbers, got {type(sigmas).__name__}") from e
    if grid.dim() != 1:
        raise ValueError(f"sigmas must be 1-D (the noise levels in order), got shape {tuple(grid.shape)}")
    if grid.numel() < 2:
        raise ValueError(f"sigmas needs at least 2 values (one step), got {grid.numel()}")
    vals = grid.tolist()
    bad = [i for i, v in enumerate(vals) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"sigmas must be finite, got sigmas[{bad[0]}] = {vals[bad[0]]}")
    bad = [i for i, v in enumerate(vals) if v < 0 or (v == 0 and i != len(vals) - 1)]
    if bad:
        raise ValueError(f"sigmas must be > 0 except a final 0, got sigmas[{bad[0]}] = {vals[bad[0]]}")
    bad = [i for i in range(len(vals) - 1) if not vals[i] > vals[i + 1]]
    if bad:
        i = bad[0]
        raise ValueError(f"sigmas must be strictly decreasing (from the noise to the data), got sigmas[{i}] = "
                         f"{vals[i]} <= sigmas[{i + 1}] = {vals[i + 1]}")
    return vals


@nvtx.annotate("fastflow.edm_sample")
def edm_sample(denoiser: Callable, x_T: torch.Tensor, *, sigma_min: float = 0.002, sigma_max: float = 80.0,
               steps: int = 18, rho: float = 7.0, D: float | None = None,
               sigmas: torch.Tensor | list[float] | tuple[float, ...] | None = None, solver: str = "heun",
               S_churn: float = 0.0, S_min: float = 0.0, S_max: float = float("inf"), S_noise: float = 1.0,
               generator: torch.Generator | None = None, model_kwargs: dict[str, object] | None = None,
               return_intermediates: bool = False, callback: Callable[[dict], object] | None = None,
               progress: bool = False) -> SampleResult:
    """EDM's sampler (Karras et al. 2022, Algorithms 1 and 2) on the rho-schedule or a given sigma grid.

    dx/dsigma = (x - D(x, sigma)) / sigma, stepped over the grid sigma_0 > sigma_1 > ... > sigma_K
    (:func:`edm_sigmas` by default: K = steps, sigma_K = 0). ``solver``:

    - ``"heun"`` (default; EDM's Algorithm 1): a Heun step between consecutive sigmas, and an Euler step for a
      step to sigma = 0. 2 K - 1 evaluations of the denoiser on a grid ending in 0 (2 steps - 1 by default), 2 K on
      one that does not.
    - ``"euler"``: first order, K evaluations (EDM's ablation_sampler with solver="euler").
    - ``"dpmpp_2m"``: DPM-Solver++(2M) as k-diffusion's ``sample_dpmpp_2m`` (Lu et al. 2022): in t = -log sigma,
      x_{i+1} = (sigma_{i+1} / sigma_i) x_i - expm1(-h_i) D_i', h_i = t_{i+1} - t_i, with
      D_i' = (1 + 1/(2 r)) D_i - 1/(2 r) D_{i-1}, r = h_{i-1} / h_i, except on the first step and a step to
      sigma = 0 (D_i' = D_i; the step to 0 gives x = D_K-1). K evaluations. No churn (k-diffusion defines none).

    Stochastic churn (EDM's Algorithm 2, as ``edm_sampler`` in NVlabs/edm generate.py; off at ``S_churn = 0``):
    at step i, gamma_i = min(S_churn / K, sqrt(2) - 1) if S_min <= sigma_i <= S_max else 0,
    sigma_hat = sigma_i + gamma_i sigma_i, x_hat = x_i + sqrt(sigma_hat^2 - sigma_i^2) S_noise eps_i with
    eps_i ~ N(0, I), then the step from (x_hat, sigma_hat) to sigma_{i+1}. The official code rounds sigma_hat with
    ``net.round_sigma`` (the identity for EDM's networks); there is no rounding here: sigma_hat is used as computed.
    As in the official code, one eps (B, *shape) is drawn on every step while ``S_churn > 0``, also on steps with
    gamma_i = 0 (where it is not used), so that the draws follow the step index. eps is drawn in float32 from
    ``generator`` (``torch.randn(..., dtype=torch.float32)``) and cast to the compute dtype: one seed gives the same
    noise to a float32 and a float64 run. ``S_churn = 0`` draws nothing.

    PFGM++ (``D`` given): the same ODE, because with r = sigma sqrt(D) the Poisson(D) velocity (x - xbar) / r
    integrates in sigma to (x - xbar) / sigma. Draw x_T from ``fastflow.Poisson(D).prior(n, shape,
    T=sigma_max * sqrt(D))``, and train the denoiser with r = sigma sqrt(D) (``fastflow.pfgmpp_target``). For the
    Gaussian family, x_T = ``fastflow.Gaussian().prior(n, shape, T=sigma_max)``. Churn with PFGM++ adds the
    same *Gaussian* noise as above: that is what PFGM++'s official sampler does (``edm_sampler`` in
    Newbeeer/pfgmpp generate.py runs the EDM churn unchanged with ``pfgmpp=True``; its command line defaults are
    S_noise = 0 and S_max = 0, i.e. churn off). The Poisson(D) kernel is not a convolution semigroup, so no exact
    Poisson(D) increment from r_i to r_hat exists; the Gaussian increment is exact only as D -> infinity.

    Args:
        denoiser: ``denoiser(x, sigma, **model_kwargs) -> x0 estimate``, x (B, *shape), sigma (B,) in x's dtype.
        x_T: (B, *shape) the starting points at sigma_0 (sigma_max by default). B = 0 is accepted.
        sigma_min, sigma_max, steps, rho: the schedule of :func:`edm_sigmas` (EDM's defaults: 0.002, 80, 18, 7).
        D: PFGM++'s augmented dimension, only to check it is >= 1 and to document the run (the ODE in sigma is the
            same); None for the Gaussian family.
        sigmas: None, or the grid in place of (sigma_min, sigma_max, steps, rho): a 1-D tensor or sequence of
            K + 1 >= 2 noise levels, finite, strictly decreasing, > 0 except a final 0 (ValueError otherwise).
            Ending in 0 gives the data; ending at sigma_K > 0 stops there (the result's t is sigma_K). Passing it
            together with non-default sigma_min, sigma_max, steps or rho is a ValueError.
        solver: ``"heun"``, ``"euler"`` or ``"dpmpp_2m"`` (above).
        S_churn, S_min, S_max, S_noise: EDM's churn (above): S_churn >= 0, S_noise >= 0, 0 <= S_min <= S_max
            (S_max may be inf). With ``solver="dpmpp_2m"`` S_churn must be 0.
        generator: the torch.Generator (on x_T's device) the churn noise is drawn from; None for the device's
            default generator.
        model_kwargs: extra keyword arguments of every denoiser call (class labels, ...), passed unchanged. All
            B rows are evaluated on every call, so a tensor with ndim >= 1 must have first dimension B
            (ValueError naming the key otherwise); other values are passed as they are.
        return_intermediates: also return the states on the grid: ``result.intermediates`` (K + 1, B, *shape)
            in x_T's dtype, [0] = x_T, [i] = the state at sigma_i after step i - 1, [K] = result.x.
        callback: ``callback({"i", "sigma", "sigma_hat", "sigma_next", "x", "denoised"})`` after each step (x the
            new state, denoised the denoiser's output at (x_hat, sigma_hat)).
        progress: a tqdm bar over the steps.

    Returns:
        :class:`SampleResult` (t is sigma_K for every sample: 0 at the end of a grid ending in 0; nfe the
        evaluations above; intermediates as above, else None).
    """
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable as denoiser(x, sigma), got {type(denoiser).__name__}")
    x = V.tensor("x_T", x_T)
    if not V.all_finite(x):
        raise ValueError("x_T contains NaN or inf")
    if D is not None:
        D = V.number("D", D)
        if D < 1:
            raise ValueError(f"D must be >= 1 (PFGM++'s augmented dimensions), got {D}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    solver = V.choice("solver", solver, _EDM_SOLVERS)
    S_churn = V.number("S_churn", S_churn, strict=False)
    S_noise = V.number("S_noise", S_noise, strict=False)
    S_min = V.number("S_min", S_min, strict=False)
    if not (isinstance(S_max, float) and S_max == math.inf):
        S_max = V.number("S_max", S_max, strict=False)  # a finite number >= 0, or inf
    if S_min > S_max:
        raise ValueError(f"S_min ({S_min}) must be <= S_max ({S_max})")
    if S_churn > 0 and solver == "dpmpp_2m":
        raise ValueError("S_churn must be 0 with solver='dpmpp_2m' (k-diffusion's sample_dpmpp_2m has no churn); "
                         "use solver='heun' or 'euler' for EDM's stochastic sampler")
    generator = V.generator("generator", generator, x.device)
    return_intermediates = V.flag("return_intermediates", return_intermediates)
    B = x.shape[0]
    if model_kwargs is None:
        model_kwargs = {}
    elif not isinstance(model_kwargs, dict):
        raise TypeError(f"model_kwargs must be a dict or None, got {type(model_kwargs).__name__}")
    for key, value in model_kwargs.items():
        if not isinstance(key, str):
            raise TypeError(f"model_kwargs keys must be strings (keyword names), got {key!r}")
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] != B:
            raise ValueError(f"model_kwargs[{key!r}] has first dimension {value.shape[0]}, but the batch has B = {B} "
                             f"rows (shape {tuple(value.shape)}); every row is evaluated on every call")
    if sigmas is None:
        sig = edm_sigmas(steps, sigma_min, sigma_max, rho).tolist()
    else:
        if (sigma_min, sigma_max, steps, rho) != _EDM_GRID_DEFAULTS:
            raise ValueError("sigmas replaces sigma_min, sigma_max, steps and rho: pass either sigmas or those")
        sig = _edm_grid(sigmas)
    K = len(sig) - 1
    io = x.dtype
    state = x.to(torch.float32 if io in (torch.float16, torch.bfloat16) else io)
    gamma_max = min(S_churn / K, 2 ** 0.5 - 1)

    def den(y, s):
        out = denoiser(y.to(io), torch.full((B,), s, dtype=io, device=y.device), **model_kwargs)
        if not isinstance(out, torch.Tensor) or out.shape != y.shape:
            raise ValueError(f"denoiser must return a tensor of shape {tuple(y.shape)}, got "
                             f"{getattr(out, 'shape', type(out).__name__)}")
        out = out.to(state.dtype)
        if not V.all_finite(out):
            raise FloatingPointError(f"denoiser returned NaN or inf at sigma = {s:g}")
        return out

    path = None
    if return_intermediates:
        path = torch.empty((K + 1, *x.shape), dtype=io, device=x.device)
        path[0] = x
    nfe = 0
    old_den = None  # dpmpp_2m: the previous step's denoised
    bar = progress_bar(progress, K, "edm_sample", unit="step", leave=False)
    # sampling, not training: no graph through 2 * steps - 1 calls of the network (at B = 256 a small MLP's
    # graph over the run held 300 MiB)
    with torch.no_grad():
        try:
            for i in range(K):
                s, s_next = sig[i], sig[i + 1]
                s_hat, x_hat = s, state
                if S_churn > 0:  # EDM's Algorithm 2: raise the noise to sigma_hat first
                    eps = torch.randn(state.shape, generator=generator, dtype=torch.float32, device=state.device)
                    gamma = gamma_max if S_min <= s <= S_max else 0.0
                    s_hat = s + gamma * s
                    if s_hat > s:
                        x_hat = eps.to(state.dtype).mul_(math.sqrt(s_hat * s_hat - s * s) * S_noise).add_(state)
                denoised = den(x_hat, s_hat)
                nfe += 1
                # In-place arithmetic on the sampler's own temporaries (never on a tensor the denoiser saw): one
                # to three new (B, *shape) buffers per step.
                if solver == "dpmpp_2m":
                    if s_next == 0:  # (0 / sigma) x - expm1(-inf) D = D
                        x_next = denoised.clone()
                    else:
                        t, t_next = -math.log(s), -math.log(s_next)
                        h = t_next - t
                        if old_den is None:  # first order: x = (s_next / s) x - expm1(-h) D
                            x_next = torch.mul(denoised, -math.expm1(-h))
                        else:  # D' = (1 + 1/(2r)) D - D_old / (2r), r = h_last / h
                            r = (t + math.log(sig[i - 1])) / h
                            x_next = torch.mul(denoised, 1 + 1 / (2 * r)).sub_(old_den, alpha=1 / (2 * r))
                            x_next.mul_(-math.expm1(-h))
                        x_next.add_(state, alpha=s_next / s)
                    old_den = denoised
                else:
                    h = s_next - s_hat
                    d_cur = torch.sub(x_hat, denoised).div_(s_hat)
                    x_next = torch.add(x_hat, d_cur, alpha=h)
                    if solver == "heun" and s_next > 0:  # Heun's correction (2nd order), except a step to 0
                        d_prime = torch.sub(x_next, den(x_next, s_next)).div_(s_next)
                        nfe += 1
                        x_next = d_prime.add_(d_cur).mul_(0.5 * h).add_(x_hat)  # x_hat + h (d_cur + d_prime) / 2
                state = x_next
                if path is not None:
                    path[i + 1] = state
                if callback is not None:
                    callback({"i": i, "sigma": s, "sigma_hat": s_hat, "sigma_next": s_next, "x": state,
                              "denoised": denoised})
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    dev = x.device
    return SampleResult(x=state.to(io), nfe=torch.full((B,), nfe, dtype=torch.long, device=dev),
                        success=torch.ones(B, dtype=torch.bool, device=dev),
                        t=torch.full((B,), sig[-1], dtype=torch.float64, device=dev), intermediates=path)


def _check_family(name: str, family) -> None:
    if not isinstance(family, Family):
        hint = (f"; a name such as {family!r} is not accepted, pass an instance, e.g. fastflow.Gaussian()"
                if isinstance(family, str) else "")
        raise TypeError(f"{name} must be a fastflow family (Poisson, Gaussian, RadialCDF, RectifiedFlow), got "
                        f"{type(family).__name__}{hint}")


def _from_ode(res: ODEResult) -> SampleResult:
    return SampleResult(x=res.x, nfe=res.nfe, success=res.success, t=res.t)


@nvtx.annotate("fastflow.flow_sample")
def flow_sample(velocity: Callable, x_1: torch.Tensor, *, t_start: float = 1.0, t_end: float = 0.0,
                method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None,
                max_steps: int = 10_000, callback: Callable[[StepInfo], object] | None = None,
                progress: bool = False, model_kwargs: dict | None = None,
                time_grid: torch.Tensor | Sequence[float] | None = None, shift: float | None = None,
                return_intermediates: bool = False, scheduler: Scheduler | None = None) -> SampleResult:
    """A velocity model integrated from noise (t = 1) to data (t = 0): rectified flow / flow matching.

    dx/dt = v(x, t) with x_t = (1 - t) x0 + t eps (fastflow.RectifiedFlow's convention: noise at t = 1; any
    :class:`fastflow.AffinePath` model works the same way), solved by :func:`fastflow.odeint` backward from
    ``t_start`` to ``t_end``.

    Time grids: ``time_grid`` (a monotone 1-D grid of G >= 2 times, t_start and t_end being its ends) with a
    fixed-step method takes exactly one step per interval (diffusers' flow-matching Euler scheduler with
    ``method="euler"``); with dopri5 the solver lands on each grid time. Without a grid, a fixed-step method with
    ``steps`` uses the uniform grid of steps + 1 times. ``shift`` (SD3's timestep shift, diffusers'
    ``shift``; None = 1, no shift) maps each grid time t to shift t / (1 + (shift - 1) t), spending more steps
    near the noise for shift > 1; it needs a grid (or ``steps``). ``return_intermediates`` returns the states at
    the G grid times (the first being x_1) as ``SampleResult.intermediates`` (G, B, *shape). A grid replaces
    t_start and t_end.

    ``method="dpmpp_2m"``: DPM-Solver++(2M) on the grid (a few steps, one evaluation each), for a model of the
    affine path of ``scheduler`` (default :class:`fastflow.schedulers.CondOT`: rectified flow), through its data
    prediction x0 = (sigma' x - sigma v) / (sigma' alpha - sigma alpha') (:mod:`fastflow.multistep`).

    Args:
        velocity: ``v(x, t) -> dx/dt``, x (n, *shape), t (n,) in x's dtype (n: samples still integrating).
        x_1: (B, *shape) noise, e.g. ``fastflow.RectifiedFlow().prior(B, shape, T=1.0)``.
        t_start, t_end: the time interval (default 1 -> 0).
        method, rtol, atol, steps, max_steps, callback, progress: as :func:`fastflow.odeint`.
        model_kwargs: per-sample inputs of the model, ``velocity(x, t, **model_kwargs)`` (class labels, ...):
            tensors of one or more dimensions (first dimension B) follow the samples still integrating.
        time_grid, shift, return_intermediates: see above.

    Returns:
        :class:`SampleResult`.
    """
    if not callable(velocity):
        raise TypeError(f"velocity must be callable as v(x, t), got {type(velocity).__name__}")
    shift = 1.0 if shift is None else V.number("shift", shift)
    V.flag("return_intermediates", return_intermediates)
    multistep = method == "dpmpp_2m"
    if scheduler is not None and not multistep:
        raise ValueError("scheduler is for method='dpmpp_2m' (its data prediction); the other methods integrate "
                         "the velocity as it is")
    fixed = multistep or (method in METHODS and not METHODS[method]().adaptive)
    if time_grid is None and fixed and steps is not None:
        steps = V.count("steps", steps, minimum=1)
        time_grid = torch.linspace(float(t_start), float(t_end), steps + 1, dtype=torch.float64)
    if time_grid is None:
        if shift != 1.0 or return_intermediates:
            raise ValueError("shift and return_intermediates need a time grid: pass time_grid, or steps with a "
                             "fixed-step method")
        return _from_ode(odeint(velocity, x_1, t_start, t_end, method=method, rtol=rtol, atol=atol,
                                steps=steps, max_steps=max_steps, callback=callback, progress=progress,
                                model_kwargs=model_kwargs))
    grid = _flow_grid(time_grid, shift)
    if multistep:
        return _dpmpp_2m(velocity, x_1, grid, scheduler, model_kwargs, return_intermediates)
    if fixed:  # one step per grid interval, in one integration; the states on the grid through the callback
        states = []

        def record(info: StepInfo):
            states.append(info.x)
            if callback is not None:
                callback(info)

        res = odeint(velocity, x_1, float(grid[0]), float(grid[-1]), method=method, steps=grid,
                     max_steps=max_steps, callback=record if return_intermediates else callback, progress=progress,
                     model_kwargs=model_kwargs)
        out = _from_ode(res)
        if return_intermediates:
            out.intermediates = torch.stack([V.tensor("x_1", x_1).to(res.x.dtype), *states])
        return out
    res = odeint(velocity, x_1, float(grid[0]), float(grid[-1]), method=method, rtol=rtol, atol=atol,
                 max_steps=max_steps, callback=callback, progress=progress, model_kwargs=model_kwargs,
                 t_eval=grid[1:-1] if len(grid) > 2 else None)
    out = _from_ode(res)
    if return_intermediates:
        inner = [] if res.x_eval is None else list(res.x_eval)
        out.intermediates = torch.stack([V.tensor("x_1", x_1).to(res.x.dtype), *inner, res.x])
    return out


def _dpmpp_2m(velocity, x_init, grid, scheduler, model_kwargs, return_intermediates) -> SampleResult:
    from .ode.loop import check_kwargs
    from .schedulers import CondOT

    x_init = V.tensor("x_init", x_init)
    scheduler = CondOT() if scheduler is None else scheduler
    if not isinstance(scheduler, Scheduler):
        raise TypeError(f"scheduler must be a fastflow.schedulers.Scheduler, got {type(scheduler).__name__}")
    if not bool(((grid >= 0) & (grid <= 1)).all()):
        raise ValueError("method='dpmpp_2m' needs a time grid in [0, 1] (the path's time)")
    B = x_init.shape[0]
    kw = check_kwargs("model_kwargs", model_kwargs, B, x_init.device)
    io = x_init.dtype
    state = x_init.to(torch.float64 if io == torch.float64 else torch.float32)
    with torch.no_grad():
        x, states = dpmpp_2m_path(velocity, state, grid, scheduler, kw)
    if not V.all_finite(x):
        raise FloatingPointError("flow_sample(method='dpmpp_2m'): the model returned NaN or inf")
    out = SampleResult(x=x.to(io), nfe=torch.full((B,), len(grid) - 1, dtype=torch.long, device=x.device),
                       success=torch.ones(B, dtype=torch.bool, device=x.device),
                       t=torch.full((B,), float(grid[-1]), dtype=torch.float64, device=x.device))
    if return_intermediates:
        out.intermediates = torch.stack(states).to(io)
    return out


def _flow_grid(time_grid, shift: float) -> torch.Tensor:
    """A checked, shifted (G,) float64 grid: finite, strictly monotone, G >= 2, times in [0, 1] when shifted."""
    g = torch.as_tensor(time_grid, dtype=torch.float64).detach().cpu()
    if g.dim() != 1 or g.numel() < 2:
        raise ValueError(f"time_grid must be a 1-D grid of at least 2 times, got shape {tuple(g.shape)}")
    if not bool(torch.isfinite(g).all()):
        raise ValueError("time_grid contains NaN or inf")
    dg = g[1:] - g[:-1]
    if not (bool((dg > 0).all()) or bool((dg < 0).all())):
        raise ValueError(f"time_grid must be strictly monotone, got {g.tolist()[:8]}...")
    if shift != 1.0:
        if shift <= 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        if not bool(((g >= 0) & (g <= 1)).all()):
            raise ValueError("a shifted time_grid must lie in [0, 1] (the shift maps [0, 1] onto itself)")
        g = shift * g / (1.0 + (shift - 1.0) * g)
    return g


class Oracle:
    """The exact empirical velocity of a family as a model-free f(x, t) for :func:`fastflow.odeint`.

    ``Oracle(fam, ref)(x, t) = fam.velocity(x, t, ref)``, dx/dt = (x - xbar(x, t)) / t: the velocity that a
    perfectly trained network would have on the reference set. Integrating it from ``fam.prior`` at T down to a
    small t lands on the reference points (it memorises), each equally often. Use it to compare solvers (NFE to a
    tolerance, on a field that is exact) and constructions (how straight their trajectories are).

    With ``labels`` (one class per reference point) it is the exact *conditional* field: ``oracle(x, t,
    labels=y)`` gives row i the field of the reference points of class y_i only, and of all of them where
    y_i == ``null_label`` (the unconditional field). Pass ``y`` in a sampler's ``model_kwargs`` (it follows the
    rows still integrating); with :func:`fastflow.guided` it gives the exact classifier-free-guided field.

    Args:
        family: a :class:`fastflow.Family`.  ref: (R, *shape) reference points.
        labels: None, or (R,) integer class labels of the reference points (>= 0).
        null_label: the label that asks for the unconditional field (default -1).
        backend, precision: as :meth:`fastflow.Family.velocity`.

    Attributes:
        calls: evaluations so far; rows: total rows evaluated (sum over calls of the batch size).
    """

    def __init__(self, family: Family, ref: torch.Tensor, labels: torch.Tensor | None = None, *,
                 null_label: int = -1, backend: str | None = None, precision: str = "ieee"):
        _check_family("family", family)
        self.family = family
        self.ref = V.tensor("ref", ref)
        if self.ref.shape[0] == 0:
            raise ValueError("ref is empty: the oracle needs at least one reference point")
        if labels is not None:
            if not isinstance(labels, torch.Tensor):
                raise TypeError(f"labels must be a torch.Tensor of class ids, got {type(labels).__name__}")
            if labels.dtype.is_floating_point or labels.dtype == torch.bool or tuple(labels.shape) != (len(self.ref),):
                raise ValueError(f"labels must be an integer tensor of shape (R,) = ({len(ref)},), one class per "
                                 f"reference point; got {labels.dtype} {tuple(labels.shape)}")
            if bool((labels < 0).any()):
                raise ValueError("labels must be >= 0 (negative values are left for null_label)")
            labels = labels.to(self.ref.device)
        if isinstance(null_label, bool) or not isinstance(null_label, int):
            raise TypeError(f"null_label must be an int, got {type(null_label).__name__}")
        self.labels, self.null_label = labels, null_label
        self.backend, self.precision = backend, precision
        self.calls = 0
        self.rows = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        self.rows += x.shape[0]
        return self._by_class(lambda xs, ts, refs: self.family.velocity(
            xs, ts, refs, backend=self.backend, precision=self.precision), x, t, labels)

    def velocity_and_divergence(self, x: torch.Tensor, t: torch.Tensor,
                                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(velocity (B, *shape) in x's dtype, exact divergence (B,) in the compute dtype), from one pass of the
        field (:meth:`fastflow.Family.divergence`); :func:`fastflow.log_likelihood` uses it for the exact trace.
        Counts as one call. ``labels`` as in the call."""
        self.calls += 1
        self.rows += x.shape[0]

        def both(xs, ts, refs):
            div, v = self.family.divergence(xs, ts, refs, return_velocity=True, backend=self.backend,
                                            precision=self.precision)
            return v, div

        return self._by_class(both, x, t, labels)

    def _by_class(self, fn, x, t, labels):
        """fn(x, t, ref) on the whole batch, or per class of ``labels`` with that class's reference points."""
        if labels is None:
            return fn(x, t, self.ref)
        if self.labels is None:
            raise ValueError("labels were given to an Oracle built without labels=: pass Oracle(family, ref, "
                             "labels=ref_labels) for the exact conditional field")
        labels = torch.as_tensor(labels, device=x.device)
        n = x.shape[0]
        if labels.dim() == 0:
            labels = labels.expand(n)
        if labels.dtype.is_floating_point or tuple(labels.shape) != (n,):
            raise ValueError(f"labels must be integers of shape (n,) = ({n},) (one per row), got {labels.dtype} "
                             f"{tuple(labels.shape)}")
        tt = t if isinstance(t, torch.Tensor) and t.dim() == 1 else torch.as_tensor(t, device=x.device).expand(n)
        outs, rows_all = [], []
        for c in torch.unique(labels).tolist():  # host reads: an oracle, not a hot path
            rows = torch.nonzero(labels == c).squeeze(1)
            refs = self.ref if c == self.null_label else self.ref[self.labels == c]
            if refs.shape[0] == 0:
                raise ValueError(f"no reference point has label {c} (and it is not null_label={self.null_label})")
            outs.append(fn(x.index_select(0, rows), tt.index_select(0, rows), refs))
            rows_all.append(rows)
        order = torch.argsort(torch.cat(rows_all))
        if isinstance(outs[0], tuple):
            return tuple(torch.cat(parts).index_select(0, order) for parts in zip(*outs))
        return torch.cat(outs).index_select(0, order)

    def nearest(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For each row of x (B, *shape): (index of the nearest reference point (B,) int64, its distance (B,)
        float64), by :func:`fastflow.nearest` (streamed over the reference set, the distance recomputed exactly),
        in float64 and on x's device."""
        dist, j = _nearest(x.double(), self.ref.double().to(x.device), 1)
        return j[:, 0], dist[:, 0]


@nvtx.annotate("fastflow.family_sample")
def family_sample(family: Family, ref: torch.Tensor, n: int, *, T: float, t_min: float, method: str = "dopri5",
                  rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None, max_steps: int = 10_000,
                  generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
                  callback: Callable[[StepInfo], object] | None = None, progress: bool = False,
                  labels: torch.Tensor | None = None, model_kwargs: dict | None = None) -> SampleResult:
    """n samples of a family's exact empirical ODE: x_T ~ ``family.prior`` at T, integrated to t_min.

    The samples land on the reference points (within ~t_min): this checks prior, field and solver together,
    and :class:`Oracle` counts the evaluations.

    Args:
        family: a :class:`fastflow.Family`.  ref: (R, *shape) the reference set.  n: number of samples.
        T: the prior time (<= 1 for RectifiedFlow).  t_min: the end time, 0 < t_min < T.
        method ... progress: as :func:`fastflow.odeint`.  generator: for the prior draw.  dtype: state dtype.
        labels: (R,) class labels of ref, for the exact conditional field (:class:`Oracle`); then
            ``model_kwargs={"labels": y}`` with y (n,) the class of each sample (null_label -1: unconditional).
        model_kwargs: per-sample inputs of the oracle, as :func:`fastflow.odeint`.

    Returns:
        :class:`SampleResult`, x (n, *shape).
    """
    _check_family("family", family)
    ref = V.tensor("ref", ref)
    T = V.number("T", T)
    t_min = V.number("t_min", t_min)
    if not t_min < T:
        raise ValueError(f"t_min ({t_min}) must be < T ({T})")
    x_T = family.prior(n, tuple(ref.shape[1:]), T=T, generator=generator, device=ref.device, dtype=dtype)
    oracle = Oracle(family, ref.to(dtype), labels=labels)
    return _from_ode(odeint(oracle, x_T, T, t_min, method=method, rtol=rtol, atol=atol, steps=steps,
                            max_steps=max_steps, callback=callback, progress=progress, model_kwargs=model_kwargs))


def straightness(path: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """How straight each trajectory is: ||x_end - x_start|| / (length of the polyline), in (0, 1].

    Args:
        path: a list of K >= 2 states (B, *shape) along the trajectories (e.g. collected with a callback at fixed
            steps), or a (K, B, *shape) tensor.

    Returns:
        (B,) float64; 1 for a straight line (rectified flow's ideal), smaller for curved paths.
    """
    p = torch.stack(list(path)) if not isinstance(path, torch.Tensor) else path
    if p.dim() < 2 or p.shape[0] < 2:
        raise ValueError(f"path must hold at least 2 states, got {p.shape[0] if p.dim() else 0}")
    p = p.detach().reshape(p.shape[0], p.shape[1], -1).double()
    if not V.all_finite(p):
        raise ValueError("path contains NaN or inf: straightness is undefined there (a trajectory that diverged)")
    length = torch.linalg.vector_norm(p[1:] - p[:-1], dim=2).sum(0)
    chord = torch.linalg.vector_norm(p[-1] - p[0], dim=1)
    return chord / length.clamp_min(torch.finfo(torch.float64).tiny)

