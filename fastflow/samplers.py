"""Samplers built on :func:`fastflow.odeint`, and the exact-field oracle.

- :func:`edm_sigmas`, :func:`edm_sample`: EDM's deterministic sampler (Karras et al. 2022, Algorithm 1) for the
  Gaussian (VE/EDM) family and for PFGM++ (sigma = r / sqrt(D), Xu et al. 2023).
- :func:`flow_sample`: a velocity model (rectified flow / flow matching) integrated from t = 1 to t = 0.
- :func:`family_sample` and :class:`Oracle`: the model-free velocity of any family from its exact empirical field
  (``family.velocity(x, t, ref)``), to compare solvers and constructions without training anything.

Conventions: every sampler takes x_init drawn by the caller (``family.prior``), returns a :class:`SampleResult`,
and accepts ``callback`` and ``progress`` (a tqdm bar).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._core import nvtx
from ._core import validate as V
from ._core.progress import bar as progress_bar
from ._core.types import DeviceLike
from .families import Family
from .ode import ODEResult, StepInfo, odeint

__all__ = ["SampleResult", "edm_sigmas", "edm_sample", "flow_sample", "family_sample", "Oracle", "straightness"]


@dataclass
class SampleResult:
    """What the samplers return.

    Attributes:
        x: (B, *shape) the samples, in x_init's dtype.
        nfe: (B,) int64 evaluations of the model per sample.
        success: (B,) bool: the sample reached the end time (False: the solver's max_steps ran out).
        t: (B,) the time each sample reached (the sampler's own variable: sigma, t, or log z for PFGM).
    """

    x: torch.Tensor
    nfe: torch.Tensor
    success: torch.Tensor
    t: torch.Tensor


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


@nvtx.annotate("fastflow.edm_sample")
def edm_sample(denoiser: Callable, x_init: torch.Tensor, *, sigma_min: float = 0.002, sigma_max: float = 80.0,
               steps: int = 18, rho: float = 7.0, D: float | None = None,
               callback: Callable[[dict], object] | None = None, progress: bool = False) -> SampleResult:
    """EDM's deterministic 2nd-order sampler (Karras et al. 2022, Algorithm 1) on the rho-schedule.

    dx/dsigma = (x - D(x, sigma)) / sigma; Heun steps between consecutive sigmas of :func:`edm_sigmas`, and an
    Euler step for the last one (to sigma = 0). 2 steps - 1 evaluations of the denoiser.

    PFGM++ (``D`` given): the same ODE, because with r = sigma sqrt(D) the Poisson(D) velocity (x - xbar) / r
    integrates in sigma to (x - xbar) / sigma. Draw x_init from ``fastflow.Poisson(D).prior(n, shape,
    T=sigma_max * sqrt(D))``, and train the denoiser with r = sigma sqrt(D) (``fastflow.pfgmpp_target``). For the
    Gaussian family, x_init = ``fastflow.Gaussian().prior(n, shape, T=sigma_max)``.

    Args:
        denoiser: ``denoiser(x, sigma) -> x0 estimate``, x (B, *shape), sigma (B,) in x's dtype.
        x_init: (B, *shape) the starting points at sigma_max.
        sigma_min, sigma_max, steps, rho: the schedule (EDM's defaults: 0.002, 80, 18, 7).
        D: PFGM++'s augmented dimension, only to check it is >= 1 and to document the run (the ODE in sigma is the
            same); None for the Gaussian family.
        callback: ``callback({"i", "sigma", "sigma_next", "x", "denoised"})`` after each step.
        progress: a tqdm bar over the steps.

    Returns:
        :class:`SampleResult` (t is 0 for every sample: the end of the schedule).
    """
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable as denoiser(x, sigma), got {type(denoiser).__name__}")
    x = V.tensor("x_init", x_init)
    if not V.all_finite(x):
        raise ValueError("x_init contains NaN or inf")
    if D is not None:
        D = V.number("D", D)
        if D < 1:
            raise ValueError(f"D must be >= 1 (PFGM++'s augmented dimensions), got {D}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    sig = edm_sigmas(steps, sigma_min, sigma_max, rho)
    B = x.shape[0]
    io = x.dtype
    state = x.to(torch.float32 if io in (torch.float16, torch.bfloat16) else io)

    def den(y, s):
        out = denoiser(y.to(io), torch.full((B,), s, dtype=io, device=y.device))
        if not isinstance(out, torch.Tensor) or out.shape != y.shape:
            raise ValueError(f"denoiser must return a tensor of shape {tuple(y.shape)}, got "
                             f"{getattr(out, 'shape', type(out).__name__)}")
        out = out.to(state.dtype)
        if not V.all_finite(out):
            raise FloatingPointError(f"denoiser returned NaN or inf at sigma = {s:g}")
        return out

    nfe = 0
    bar = progress_bar(progress, steps, "edm_sample", unit="step", leave=False)
    # sampling, not training: no graph through 2 * steps - 1 calls of the network (at B = 256 a small MLP's
    # graph over the run held 300 MiB)
    with torch.no_grad():
        try:
            for i in range(steps):
                s, s_next = float(sig[i]), float(sig[i + 1])
                d_cur_den = den(state, s)
                d_cur = (state - d_cur_den) / s
                x_next = state + (s_next - s) * d_cur
                nfe += 1
                if s_next > 0:  # Heun's correction (2nd order), except on the last step to sigma = 0
                    d_next = (x_next - den(x_next, s_next)) / s_next
                    x_next = state + (s_next - s) * (0.5 * d_cur + 0.5 * d_next)
                    nfe += 1
                state = x_next
                if callback is not None:
                    callback({"i": i, "sigma": s, "sigma_next": s_next, "x": state, "denoised": d_cur_den})
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    dev = x.device
    return SampleResult(x=state.to(io), nfe=torch.full((B,), nfe, dtype=torch.long, device=dev),
                        success=torch.ones(B, dtype=torch.bool, device=dev),
                        t=torch.zeros(B, dtype=torch.float64, device=dev))


def _check_family(name: str, family) -> None:
    if not isinstance(family, Family):
        hint = (f"; a name such as {family!r} is not accepted, pass an instance, e.g. fastflow.Gaussian()"
                if isinstance(family, str) else "")
        raise TypeError(f"{name} must be a fastflow family (Poisson, Gaussian, RadialCDF, RectifiedFlow), got "
                        f"{type(family).__name__}{hint}")


def _from_ode(res: ODEResult) -> SampleResult:
    return SampleResult(x=res.x, nfe=res.nfe, success=res.success, t=res.t)


@nvtx.annotate("fastflow.flow_sample")
def flow_sample(velocity: Callable, x_init: torch.Tensor, *, t_start: float = 1.0, t_end: float = 0.0,
                method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None,
                max_steps: int = 10_000, callback: Callable[[StepInfo], object] | None = None,
                progress: bool = False) -> SampleResult:
    """A velocity model integrated from noise (t = 1) to data (t = 0): rectified flow / flow matching.

    dx/dt = v(x, t) with x_t = (1 - t) x0 + t eps (fastflow.RectifiedFlow's convention: noise at t = 1), solved
    by :func:`fastflow.odeint` backward from ``t_start`` to ``t_end``.

    Args:
        velocity: ``v(x, t) -> dx/dt``, x (n, *shape), t (n,) in x's dtype (n: samples still integrating).
        x_init: (B, *shape) noise, e.g. ``fastflow.RectifiedFlow().prior(B, shape, T=1.0)``.
        t_start, t_end: the time interval (default 1 -> 0).
        method, rtol, atol, steps, max_steps, callback, progress: as :func:`fastflow.odeint`.

    Returns:
        :class:`SampleResult`.
    """
    if not callable(velocity):
        raise TypeError(f"velocity must be callable as v(x, t), got {type(velocity).__name__}")
    return _from_ode(odeint(velocity, x_init, t_start, t_end, method=method, rtol=rtol, atol=atol, steps=steps,
                            max_steps=max_steps, callback=callback, progress=progress))


class Oracle:
    """The exact empirical velocity of a family as a model-free f(x, t) for :func:`fastflow.odeint`.

    ``Oracle(fam, ref)(x, t) = fam.velocity(x, t, ref)``, dx/dt = (x - xbar(x, t)) / t: the velocity that a
    perfectly trained network would have on the reference set. Integrating it from ``fam.prior`` at T down to a
    small t lands on the reference points (it memorises), each equally often. Use it to compare solvers (NFE to a
    tolerance, on a field that is exact) and constructions (how straight their trajectories are).

    Args:
        family: a :class:`fastflow.Family`.  ref: (R, *shape) reference points.
        backend, precision: as :meth:`fastflow.Family.velocity`.

    Attributes:
        calls: evaluations so far; rows: total rows evaluated (sum over calls of the batch size).
    """

    def __init__(self, family: Family, ref: torch.Tensor, *, backend: str | None = None, precision: str = "ieee"):
        _check_family("family", family)
        self.family = family
        self.ref = V.tensor("ref", ref)
        if self.ref.shape[0] == 0:
            raise ValueError("ref is empty: the oracle needs at least one reference point")
        self.backend, self.precision = backend, precision
        self.calls = 0
        self.rows = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows += x.shape[0]
        return self.family.velocity(x, t, self.ref, backend=self.backend, precision=self.precision)

    def velocity_and_divergence(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(velocity (B, *shape) in x's dtype, exact divergence (B,) in the compute dtype), from one pass of the
        field (:meth:`fastflow.Family.divergence`); :func:`fastflow.log_likelihood` uses it for the exact trace.
        Counts as one call."""
        self.calls += 1
        self.rows += x.shape[0]
        div, v = self.family.divergence(x, t, self.ref, return_velocity=True, backend=self.backend,
                                        precision=self.precision)
        return v, div

    def nearest(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For each row of x: (index of the nearest reference point (B,) int64, its distance (B,) float64)."""
        x2 = x.reshape(x.shape[0], -1).double()
        r2 = self.ref.reshape(self.ref.shape[0], -1).double().to(x2.device)
        dist = torch.cdist(x2, r2)
        m, j = dist.min(dim=1)
        return j, m


@nvtx.annotate("fastflow.family_sample")
def family_sample(family: Family, ref: torch.Tensor, n: int, *, T: float, t_min: float, method: str = "dopri5",
                  rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None, max_steps: int = 10_000,
                  generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
                  callback: Callable[[StepInfo], object] | None = None, progress: bool = False) -> SampleResult:
    """n samples of a family's exact empirical ODE: x_T ~ ``family.prior`` at T, integrated to t_min.

    The samples land on the reference points (within ~t_min): this checks prior, field and solver together,
    and :class:`Oracle` counts the evaluations.

    Args:
        family: a :class:`fastflow.Family`.  ref: (R, *shape) the reference set.  n: number of samples.
        T: the prior time (<= 1 for RectifiedFlow).  t_min: the end time, 0 < t_min < T.
        method ... progress: as :func:`fastflow.odeint`.  generator: for the prior draw.  dtype: state dtype.

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
    oracle = Oracle(family, ref.to(dtype))
    return _from_ode(odeint(oracle, x_T, T, t_min, method=method, rtol=rtol, atol=atol, steps=steps,
                            max_steps=max_steps, callback=callback, progress=progress))


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

