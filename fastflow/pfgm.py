"""PFGM's recipe (docs/math.md), drop-in for the official implementation (github.com/Newbeeer/Poisson_flow).

- :func:`perturb`: the training perturbation (official ``forward_pz``), same law.
- :func:`target`: the training target. The official code builds a [B, R, d+1] tensor for it (6.4 GB at
  B=128, R=4096, d=3072); :func:`target` streams over the reference set instead, in O((B + R) d) memory.
- :func:`prior`: the prior on the plane z = z_max, exact by default, or clipped as the official code does.
- :func:`hyperparameters`: the official M, z_max and upper_norm for a dataset.
- :func:`sample`: the backward ODE dx/dz = v_x / v_z from z_max to z_min in log z, on the device with per-sample
  steps (the official sampler runs scipy's RK45 on the CPU in float64, copying the state at every evaluation), or
  the official fixed-grid forward Euler and improved Euler.
- :data:`configs`: the official CIFAR-10, CelebA 64 and LSUN bedroom 256 settings.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping

import torch

from . import draws as S
from ._core import nvtx
from ._core import validate as V
from ._core.dispatch import compute_dtype
from ._core.types import DeviceLike, Shape, Time
from .families import Poisson
from .field import evaluate
from .likelihood import LikelihoodResult, log_likelihood
from .ode import StepInfo
from .samplers import SampleResult


@nvtx.annotate("fastflow.pfgm.target")
@V.checked
def target(x: torch.Tensor, z: Time, ref: torch.Tensor, *, gamma: float = 5.0, backend: str | None = None,
           precision: str = "ieee", chunk_size: int | None = None) -> torch.Tensor:
    """PFGM's normalised empirical Poisson field: sqrt(d) * E / (||E|| + gamma), with E = (xbar - x, -z).

    E is the field of the augmented points y = (x, z) from the sources (ref_j, 0) with weights
    ||y - (ref_j, 0)||^-(d+1), i.e. the Poisson(D=1) posterior mean xbar at t = z.

    Args:
        x: (B, *shape) perturbed points.  z: float or (B,) tensor > 0, their augmented coordinate.
        ref: (R, *shape) the reference batch (in PFGM training, the whole batch, x's sources included).
        gamma: the official normalisation constant (5).
        backend, precision, chunk_size: as :meth:`fastflow.Poisson.posterior_mean`.

    Returns:
        (B, d+1) tensor, d = prod(shape); the last column is the z part. Differentiable in x, z and ref (the
        field's streamed backward, :mod:`fastflow.field.autograd`).
    """
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    res = evaluate(Poisson(D=1), x, z, ref, t_name="z", backend=backend, precision=precision, chunk_size=chunk_size)
    B, d = res.x.shape
    E = torch.empty(B, d + 1, dtype=res.xbar.dtype, device=res.xbar.device)
    E[:, :d] = res.xbar - res.x  # (a strided out= view would stop torch.compile)
    E[:, d] = -res.t
    # ||E|| as m ||E / m||, m = max |E_k|: z^2 overflows float32 beyond z = 1.8e19 while the direction is exact
    m = E.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(E.dtype).tiny)  # (B, 1); amax keeps its result
    scale = math.sqrt(d) / (m * torch.linalg.vector_norm(E / m, dim=1, keepdim=True) + gamma)
    E = E * scale if E.requires_grad else E.mul_(scale)  # autograd keeps E (for abs and E / m): not in place
    return E.to(res.dtype)


#: The official restrict_M rule (forward_pz): a sample whose |z| (before the (1+tau)^m factor) is below this
#: threshold redraws its exponent m from U[0, int(0.7 M)].
RESTRICT_Z = 0.005
RESTRICT_FRACTION = 0.7


@nvtx.annotate("fastflow.pfgm.perturb")
@V.checked
def perturb(x0: torch.Tensor, *, M: float = 291, tau: float = 0.03, sigma_end: float = 0.01, restrict_M: bool = True,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PFGM's training perturbation (official ``forward_pz``): x = x0 + (1+tau)^m eps, z = (1+tau)^m |s| sigma_end.

    m ~ U[0, M]; s ~ N(0, 1); eps ~ N(0, sigma_end^2 I_d). With ``restrict_M``, every sample whose |s| sigma_end
    < 0.005 redraws m ~ U[0, int(0.7 M)] (the official code tests z after taking its absolute value, and
    truncates 0.7 M to an int: 203 for M = 291).

    The official code writes the x perturbation as ||eps|| (1+tau)^m u with a second Gaussian for the uniform
    direction u; ||eps|| u has the law of eps itself (a Gaussian's norm and direction are independent), so one
    Gaussian draw gives the same law.

    Args:
        x0: (B, *shape) data points.
        M: the largest exponent (> 0).  tau: the base's excess (1 + tau), > 0.  sigma_end: the noise scale, > 0.
        restrict_M: apply the official restriction of m for small z.
        generator: a torch.Generator on x0's device, or None.

    Returns:
        x: (B, *shape) in x0's dtype (float16/bfloat16 drawn in float32 and rounded once).
        z: (B,) > 0, in float64 for float64 x0, else float32: z spans ~1e-8 to 1e2 and float16 would flush its
        small end to 0. (z is clamped to the dtype's smallest normal, which only a |s| < 1e-36 would reach.)
    """
    x0 = V.tensor("x0", x0)
    M = V.number("M", M)
    tau = V.number("tau", tau)
    sigma_end = V.number("sigma_end", sigma_end)
    restrict_M = V.flag("restrict_M", restrict_M)
    B, d = x0.shape[0], math.prod(x0.shape[1:])
    if d == 0:
        raise ValueError(f"x0 must have at least one element per point, got shape {tuple(x0.shape)}")
    dev = x0.device
    V.generator("generator", generator, dev)
    z = S.chi(B, 1, generator=generator, device=dev).mul_(sigma_end)        # |N(0, sigma_end^2)|
    m = S.uniform(B, generator=generator, device=dev).mul_(M)
    if restrict_M:
        m_small = S.uniform(B, generator=generator, device=dev).mul_(int(M * RESTRICT_FRACTION))
        m = torch.where(z < RESTRICT_Z, m_small, m)
    mult = torch.pow(1.0 + tau, m)
    ones = torch.ones(B, dtype=torch.float64, device=dev)
    x = S.draw(x0.reshape(B, d), ones, sigma_end * mult, B, d, S.Radius(), generator=generator, device=dev,
               dtype=x0.dtype)                                                 # x0 + sigma_end (1+tau)^m g
    cdt = compute_dtype(x0.dtype)
    zz = (z * mult).to(cdt).clamp_min_(torch.finfo(cdt).tiny)
    out = x.to(x0.dtype)
    for v in (zz, out):
        V.require_finite(v, lambda v=v: FloatingPointError(
            f"pfgm.perturb: the noise scale (1 + tau)^m with m up to M = {M:g}, tau = {tau:g} reaches "
            f"e^{M * math.log1p(tau):.4g}, which overflows {v.dtype}: lower M or tau (the official CIFAR-10 values "
            "are M = 291, tau = 0.03), or draw in float32 / float64"))
    return out.reshape(x0.shape), zz


@nvtx.annotate("fastflow.pfgm.prior")
@V.checked
def prior(n: int, shape: Shape, *, z_max: Time, upper_norm: float | None = None,
          generator: torch.Generator | None = None, device: DeviceLike = None,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Points on the plane z = z_max: radius r = z_max ||g|| / |s| in a uniform direction (docs/math.md).

    (r / z_max)^2 = ||g||^2 / s^2 ~ BetaPrime(d/2, 1/2), i.e. r = z_max sqrt(u / (1-u)) with u ~ Beta(d/2, 1/2)
    as in the official code, drawn without the beta, as a ratio of Gaussians: a Beta(d/2, 1/2) draw rounded to
    float32 can reach 1 (an infinite radius). The official code draws its beta in float64 (numpy) and clips the
    radius to [1, upper_norm], which truncates the heavy tail; ``upper_norm`` reproduces that clip on request.

    Args:
        n: number of points (>= 0).  shape: the per-point shape (an int or a tuple).
        z_max: float or (n,) tensor > 0, the plane's height.
        upper_norm: None (default) draws the exact heavy-tailed law; a float >= 1 clips the radius to
            [1, upper_norm], as the official sampler does (``np.clip(r, 1, upper_norm)``).
        generator: a torch.Generator on ``device``, or None.
        device: where to draw; None: the generator's device, else torch's default device.
        dtype: output dtype; float16/bfloat16 are drawn in float32 and rounded once.

    Returns:
        (n, *shape) tensor of ``dtype``: the x part; the z part is z_max.
    """
    n = V.count("n", n)
    shape = V.point_shape("shape", shape)
    dtype = V.float_dtype("dtype", dtype)
    device = V.sample_device(device, generator)
    V.generator("generator", generator, device)
    zz = V.times("z_max", z_max, n, dtype=torch.float64, device=device)
    if upper_norm is not None:
        upper_norm = V.number("upper_norm", upper_norm, lower=1.0, strict=False)
    ddt = S.draw_dtype(dtype)
    d = math.prod(shape)
    if upper_norm is None:  # z_max g / |s|: Poisson(1)'s prior
        out = S.draw(None, None, zz, n, d, S.Radius(S.RADIUS_CHI, 1.0), generator=generator, device=device,
                     dtype=dtype).to(dtype)
    else:  # the clip needs ||g|| before scaling: the pure-torch pieces
        s = S.chi(n, 1, generator=generator, device=device)
        g, norm = S.nonzero_normal(n, d, generator=generator, device=device, dtype=ddt)
        r = (zz * norm / s).clamp_(1.0, upper_norm)
        out = g.mul_((r / norm).to(ddt)[:, None]).to(dtype)
    V.require_finite(out, lambda: FloatingPointError(
        f"pfgm.prior: the draw overflows {dtype} (a heavy-tailed radius beyond its range); draw in float32 or "
        "float64, or pass upper_norm"))
    return out.reshape((n,) + shape)


def _average_norm(data: torch.Tensor, chunk: int = 4096) -> float:
    """The average L2 norm of the data points, (1/N) sum_i ||data_i||, accumulated in float64."""
    flat = data.reshape(data.shape[0], -1)
    total = sum(float(torch.linalg.vector_norm(flat[i:i + chunk].double(), dim=1).sum())
                for i in range(0, flat.shape[0], chunk))
    return total / flat.shape[0]


def hyperparameters(data: torch.Tensor, *, tau: float = 0.03, sigma: float = 0.01) -> dict:
    """PFGM's M, z_max and upper_norm for a dataset (official ``hyper-parameters.py``; docs/math.md).

    M = int(0.75 ln(r^2 / (2 sqrt(d) sigma^2)) / ln(1 + tau)) + 1;  z_max = sqrt(2/pi) sigma (1+tau)^M;
    upper_norm = sqrt(d) sigma (1+tau)^M. r is the *average* L2 norm of the data points: the official script's
    ``--data_norm`` ("Average norm of data", default 30). r = 32 at d = 3072 gives CIFAR-10's M = 291.

    Args:
        data: (N, *shape) the dataset (or a representative sample of it), d = prod(shape).
        tau: the perturbation's (1 + tau) base, > 0.  sigma: the official sigma_end, > 0.

    Returns:
        {"M": int, "z_max": float, "upper_norm": float}.
    """
    data = V.tensor("data", data)
    tau = V.number("tau", tau)
    sigma = V.number("sigma", sigma)
    if data.shape[0] == 0:
        raise ValueError(f"data is empty: need at least one point, got shape {tuple(data.shape)}")
    d = math.prod(data.shape[1:])
    norm = _average_norm(data)
    if norm == 0:
        raise ValueError("data has average norm 0: M is undefined (ln 0)")
    # in logs: sigma^2 underflows at sigma = 1e-200, and (1 + tau)^M overflows long before z_max does
    log_ratio = 2 * math.log(norm) - math.log(2) - 0.5 * math.log(d) - 2 * math.log(sigma)
    M = int(0.75 * log_ratio / math.log1p(tau)) + 1
    if M < 1:
        raise ValueError(f"the data's average norm {norm:g} is too small for sigma = {sigma:g} (M = {M} < 1)")
    log_scale = math.log(sigma) + M * math.log1p(tau)  # log(sigma (1 + tau)^M)
    if log_scale + 0.5 * math.log(d) > 709.0:
        raise ValueError(f"sigma = {sigma:g} and tau = {tau:g} give z_max = e^{log_scale:.4g}, beyond float64 "
                         "(the official sigma_end is 0.01)")
    return {"M": M, "z_max": math.sqrt(2 / math.pi) * math.exp(log_scale),
            "upper_norm": math.sqrt(d) * math.exp(log_scale)}


def _split_field(out, B: int, shape: tuple, d: int):
    """net_fn's output as (v_x (B, d), v_z (B,)): a (B, d+1) tensor, or a tuple (v_x (B, *shape), v_z (B,))."""
    if isinstance(out, (tuple, list)):
        if len(out) != 2:
            raise ValueError(f"net_fn must return a (B, d+1) tensor or a tuple (v_x, v_z); got a tuple of {len(out)}")
        vx, vz = out
        if not isinstance(vx, torch.Tensor) or vx.shape[0] != B or math.prod(vx.shape[1:]) != d:
            raise ValueError(f"net_fn's v_x must have shape ({B}, *{shape}); got {getattr(vx, 'shape', vx)}")
        if not isinstance(vz, torch.Tensor) or vz.reshape(-1).shape != (B,):
            raise ValueError(f"net_fn's v_z must have shape ({B},); got {getattr(vz, 'shape', vz)}")
        return vx.reshape(B, d), vz.reshape(B)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (B, d + 1):
        raise ValueError(f"net_fn must return a ({B}, {d + 1}) tensor (the field, z last) or a tuple (v_x, v_z); "
                         f"got {getattr(out, 'shape', type(out).__name__)}")
    return out[:, :d], out[:, d]


#: The methods of :func:`sample`: odeint's (dopri5 adaptive; heun and rk4 on equal steps in log z), and the official
#: fixed-grid samplers of github.com/Newbeeer/Poisson_flow (sampling.py, ``get_ode_sampler``): "euler" (official
#: ``forward_euler``, also accepted under that name) and "improved_euler".
METHODS = ("dopri5", "euler", "forward_euler", "improved_euler", "heun", "rk4")
_OFFICIAL_GRID = ("euler", "forward_euler", "improved_euler")
#: The denominators of dx/dz = v_x / v_z: "clamp" (fastflow: v_z clamped to at most ``vz_max``) or "official"
#: (the official v_z + 1e-5, unclamped).
DENOMINATORS = ("clamp", "official")
OFFICIAL_VZ_SHIFT = 1e-5


def _inverse_scaler(inverse_scaler):
    """``inverse_scaler`` as a callable or None: True is the official centred-data inverse (x + 1) / 2."""
    if inverse_scaler is False or inverse_scaler is None:
        return None
    if inverse_scaler is True:
        return lambda x: (x + 1.0) / 2.0  # official datasets.get_data_inverse_scaler with data.centered
    if callable(inverse_scaler):
        return inverse_scaler
    raise TypeError("inverse_scaler must be a bool (True: the official (x + 1) / 2 of centred data) or a callable "
                    f"x -> x, got {type(inverse_scaler).__name__}")


def _official_grid(net_fn, x_init, log_zmax, log_zmin, N, improved, drift, callback, progress, model_kwargs):
    """The official fixed-grid loop (``get_ode_sampler`` with ``ForwardEulerPredictor`` / ``ImprovedEulerPredictor``),
    each sample on its own grid t_k = log z_max + (k / N) (log z_min - log z_max), k = 0..N, with the constant step
    dt = -(log z_max - log z_min) / N. Improved Euler is Heun's step on every interval but the last, which is a
    forward Euler step: 2N - 1 evaluations. Every row stays active; model_kwargs go through unsliced."""
    from ._core.progress import bar as progress_bar

    B, shape = x_init.shape[0], tuple(x_init.shape[1:])
    io = x_init.dtype
    sdt = io if io in (torch.float32, torch.float64) else torch.float32
    k = torch.arange(N + 1, dtype=torch.float64, device=x_init.device)
    grid = log_zmax[None, :] + (k / N)[:, None] * (log_zmin - log_zmax)[None, :]  # (N + 1, B)
    grid[N] = log_zmin
    dt = ((log_zmin - log_zmax) / N).to(sdt).reshape(B, *([1] * len(shape)))  # (B, 1, ...)
    nfe = torch.zeros(B, dtype=torch.long, device=x_init.device)
    index = torch.arange(B, device=x_init.device)

    def f(x, t):
        nfe.add_(1)
        return drift(x.to(io), torch.exp(t).to(io), model_kwargs).to(sdt)

    x = x_init.detach().to(sdt, copy=True)
    bar = progress_bar(progress, N, "pfgm.sample[" + ("improved_euler" if improved else "euler") + "]", unit="step")
    try:
        with torch.no_grad():
            for i in range(N):
                d0 = f(x, grid[i])
                x_new = x + d0 * dt
                if improved and i < N - 1:
                    d1 = f(x_new, grid[i + 1])
                    x = x + (0.5 * d0 + 0.5 * d1) * dt
                else:
                    x = x_new
                if callback is not None:
                    callback(StepInfo(step=i + 1, index=index, t=grid[i + 1].clone(), x=x.to(io),
                                      h=dt.reshape(B).to(torch.float64), nfe=nfe.clone(), n_active=B))
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if not V.all_finite(x):
        raise FloatingPointError("pfgm.sample: the state became NaN or inf on the fixed grid (net_fn returned NaN "
                                 "or inf, or dx/dz blew up: v_z + 1e-5 near 0 with denominator='official')")
    return x.to(io), nfe


@nvtx.annotate("fastflow.pfgm.sample")
def sample(net_fn: Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor]],
           x_init: torch.Tensor, *, z_max: Time, z_min: float = 1e-3, method: str = "dopri5", rtol: float = 1e-4,
           atol: float = 1e-4, steps: int | None = None, z_exp: float | None = None, gamma: float = 5.0,
           vz_max: float = -1e-5, denominator: str = "clamp", max_steps: int = 10_000,
           callback: Callable[[StepInfo], object] | None = None, progress: bool = False,
           model_kwargs: dict | None = None,
           inverse_scaler: bool | Callable[[torch.Tensor], torch.Tensor] = False) -> SampleResult:
    """PFGM's sampler: dx/dz = v_x / v_z backward from z_max to z_min, in t' = log z (docs/math.md).

    dx/dt' = z v_x / v_z. The methods:

    - ``"dopri5"`` (default): :func:`fastflow.odeint`'s adaptive Dormand-Prince, each sample on its own clock and
      step size (the official ``get_rk45_sampler_pfgm`` solves one shared ODE with scipy's RK45, z the batch mean,
      on the CPU; rtol = atol = 1e-4 as there).
    - ``"euler"`` (or its official name ``"forward_euler"``): the official forward Euler (``get_ode_sampler`` with
      ``ForwardEulerPredictor``): ``steps`` = N steps of dt = -(log z_max - log z_min) / N on the grid
      t_k = linspace(log z_max, log z_min, N + 1), N evaluations.
    - ``"improved_euler"``: the official improved Euler (``ImprovedEulerPredictor``) on the same grid: Heun's
      step (the mean of the slopes at t_k and t_(k+1)) on every interval but the last, which is a forward Euler
      step, so 2N - 1 evaluations (the official count).
    - ``"heun"``, ``"rk4"``: odeint's fixed steps, equal in log z: Heun on every interval, 2N evaluations (unlike
      ``"improved_euler"``); rk4, 4N.

    v_z of a sound field is negative (it points down towards the data plane z = 0). The official denominator
    v_z + 1e-5 blows up when a network predicts v_z near -1e-5 and flips the direction for v_z > -1e-5; by default
    (``denominator="clamp"``) v_z is clamped to at most ``vz_max`` (-1e-5) instead, so that the step dz/dt' never
    changes sign or explodes. ``denominator="official"`` divides by v_z + 1e-5 as the official code does (with
    ``"euler"`` / ``"improved_euler"``, the official samplers to rounding).

    With ``z_exp`` and gamma > 0 (the official rule: no substitution at gamma = 0), for z < z_exp v_z is replaced
    by PFGM's substitution (Appendix B.2.3): v_z = -sqrt(d) z / (sqrt((gamma n / (1 - n))^2 + z^2) + gamma),
    n = ||v_x|| / sqrt(d) (n kept below 1 - 1e-6).

    Args:
        net_fn: ``net_fn(x, z, **model_kwargs)`` with x (n, *shape), z (n,) in x's dtype, returning the normalised
            field: a (n, d+1) tensor (z part last, as :func:`target`) or a tuple (v_x (n, *shape), v_z (n,)).
        x_init: (B, *shape) points on the plane z = z_max (:func:`prior`).
        z_max: float or (B,) tensor, the start height.  z_min: the end height (official 1e-3), 0 < z_min < z_max.
        method: one of :data:`METHODS` (above).
        rtol, atol, max_steps: dopri5's, as :func:`fastflow.odeint` (official: RK45 with rtol = atol = 1e-4).
        steps: the number of steps N of the fixed-step methods (the official ``sampling.N``, 100 in the released
            configs), an int >= 1; required there, refused by dopri5.
        z_exp: None (default: off), or the height below which v_z is substituted (official 5, 1 and 0.1 for
            CIFAR-10, CelebA 64 and LSUN bedroom 256: :data:`configs`).
        gamma: the target's gamma (official 5), used by the substitution; 0 turns it off.
        vz_max: the clamp of v_z with ``denominator="clamp"`` (a negative number).
        denominator: "clamp" (default) or "official" (v_z + 1e-5).
        callback, progress: as :func:`fastflow.odeint` (on the official grid: after every step, all B rows).
        model_kwargs: per-sample inputs of the network (class labels, ...): tensors of one or more dimensions
            (first dimension B) follow the samples still integrating under odeint's methods; on the official grid
            every row is active at every step and they are passed as given.
        inverse_scaler: False (default), True for the official inverse of centred data, x -> (x + 1) / 2 (the
            official output when ``data.centered``), or a callable applied to the samples.

    Returns:
        :class:`fastflow.samplers.SampleResult`: x (B, *shape), nfe (B,), success (B,), t (B,) = log z reached.

    Raises:
        ValueError / TypeError: an unknown method or denominator, steps < 1 (or missing for a fixed-step method,
            or given to dopri5), z_max <= z_min, a bad vz_max, z_exp or gamma, a wrong output of net_fn.
        FloatingPointError: the state turned NaN or inf.
    """
    from .ode import odeint
    from .ode.loop import check_kwargs

    if not callable(net_fn):
        raise TypeError(f"net_fn must be callable as net_fn(x, z), got {type(net_fn).__name__}")
    V.choice("method", method, METHODS)
    V.choice("denominator", denominator, DENOMINATORS)
    x_init = V.tensor("x_init", x_init)
    B, shape = x_init.shape[0], tuple(x_init.shape[1:])
    d = math.prod(shape)
    zmax = V.times("z_max", z_max, B, dtype=torch.float64, device=x_init.device)
    z_min = V.number("z_min", z_min)
    if B and not bool((zmax > z_min).all()):
        raise ValueError(f"z_max must be > z_min ({z_min}) for every sample")
    if z_exp is not None:
        z_exp = V.number("z_exp", z_exp)
    gamma = V.number("gamma", gamma, strict=False)
    if isinstance(vz_max, bool) or not isinstance(vz_max, numbers.Real) or not (math.isfinite(vz_max) and vz_max < 0):
        raise ValueError(f"vz_max must be a finite negative number (v_z is clamped to at most it), got {vz_max!r}")
    scaler = _inverse_scaler(inverse_scaler)
    official_grid = method in _OFFICIAL_GRID
    if official_grid:
        if steps is None:
            raise ValueError(f"steps (the official sampling.N) is required for method={method!r}")
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
            raise TypeError(f"steps (the official sampling.N) must be an int, got {type(steps).__name__}")
        if steps < 1:
            raise ValueError(f"steps (the official sampling.N) must be >= 1, got {steps}")
    sqrt_d = math.sqrt(d)
    substitute = z_exp is not None and gamma > 0  # the official rule: `if z < z_exp and gamma > 0`

    def drift(x, z, kw):  # dx/dt' = z v_x / v_z at (x (n, *shape), z (n,)), both in x's dtype
        vx, vz = _split_field(net_fn(x, z, **kw), x.shape[0], shape, d)
        vx, vz = vx.to(x.dtype), vz.to(x.dtype)
        if substitute:
            n = (torch.linalg.vector_norm(vx, dim=1) / sqrt_d).clamp(max=1 - 1e-6)
            sub = -sqrt_d * z / (torch.sqrt((gamma * n / (1 - n)) ** 2 + z * z) + gamma)
            vz = torch.where(z < z_exp, sub, vz)
        vz = vz + OFFICIAL_VZ_SHIFT if denominator == "official" else vz.clamp(max=vz_max)
        return (vx * (z / vz)[:, None]).reshape(x.shape)

    if official_grid:
        if d == 0:
            raise ValueError(f"x_init must have at least one element per sample, got shape {tuple(x_init.shape)}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
        V.flag("progress", progress)
        kw = check_kwargs("model_kwargs", model_kwargs, B, x_init.device)
        log_zmin = torch.full((B,), math.log(z_min), dtype=torch.float64, device=x_init.device)
        x, nfe = _official_grid(net_fn, x_init, torch.log(zmax), log_zmin, int(steps), method == "improved_euler",
                                drift, callback, progress, kw)
        res = SampleResult(x=x, nfe=nfe, success=torch.ones(B, dtype=torch.bool, device=x_init.device),
                           t=log_zmin)
    else:
        def f(x, t, **kw):  # t = log z, (n,) in x's dtype
            return drift(x, torch.exp(t), kw)

        out = odeint(f, x_init, torch.log(zmax), math.log(z_min), method=method, rtol=rtol, atol=atol, steps=steps,
                     max_steps=max_steps, callback=callback, progress=progress, model_kwargs=model_kwargs)
        res = SampleResult(x=out.x, nfe=out.nfe, success=out.success, t=out.t)
    if scaler is not None:
        res = SampleResult(x=scaler(res.x), nfe=res.nfe, success=res.success, t=res.t)
    return res


# ---------------------------------------------------------------------------------------------------------------
# the official settings

@dataclasses.dataclass(frozen=True)
class PFGMConfig:
    """One official PFGM setting (github.com/Newbeeer/Poisson_flow, ``configs/``), as fastflow's arguments.

    Attributes:
        name: the preset's key in :data:`configs`.  shape: (C, H, W) of the data (``data.num_channels``,
            ``data.image_size``).  centered: the data are scaled to [-1, 1] (``data.centered``): the samples go back
            to [0, 1] through the official inverse scaler.
        M, tau, sigma_end, restrict_M: the perturbation (``training.M``, ``training.tau``, ``model.sigma_end``,
            ``training.restrict_M``): :func:`perturb`.  gamma: the target's (``training.gamma``): :func:`target`.
        batch_size, small_batch_size: the reference batch R and the perturbed batch B of the target
            (``training.batch_size``, ``training.small_batch_size``).
        z_max, upper_norm: the prior's plane and radius clip (``sampling.z_max``, ``sampling.upper_norm``):
            :func:`prior`.  z_min: the sampler's end height (``sampling.z_min``, the official ``eps``).
        z_exp: the height below which v_z is substituted (``sampling.z_exp``).  N: the steps of the fixed-grid
            samplers (``sampling.N``).  sampler: the official ``sampling.ode_solver`` ("rk45", "forward_euler" or
            "improved_euler").
    """

    name: str
    shape: tuple[int, int, int]
    centered: bool
    M: int
    tau: float
    sigma_end: float
    restrict_M: bool
    gamma: float
    batch_size: int
    small_batch_size: int
    z_max: float
    z_min: float
    upper_norm: float
    z_exp: float
    N: int
    sampler: str

    def perturb_kwargs(self) -> dict:
        """{M, tau, sigma_end, restrict_M} for :func:`perturb`."""
        return {"M": self.M, "tau": self.tau, "sigma_end": self.sigma_end, "restrict_M": self.restrict_M}

    def prior_kwargs(self) -> dict:
        """{z_max, upper_norm} for :func:`prior` (the official clipped prior)."""
        return {"z_max": self.z_max, "upper_norm": self.upper_norm}

    def sample_kwargs(self, method: str | None = None) -> dict:
        """Keyword arguments of :func:`sample` for this setting: z_max, z_min, z_exp, gamma, the method (the
        official ``sampler`` unless ``method`` is given; rk45 maps to dopri5 with rtol = atol = 1e-4, the fixed
        grids take ``steps`` = N), and ``inverse_scaler`` = ``centered``."""
        m = _SAMPLERS[self.sampler] if method is None else V.choice("method", method, METHODS)
        kw = {"z_max": self.z_max, "z_min": self.z_min, "z_exp": self.z_exp, "gamma": self.gamma, "method": m,
              "inverse_scaler": self.centered}
        if m == "dopri5":
            kw.update(rtol=1e-4, atol=1e-4)  # official get_rk45_sampler_pfgm defaults
        else:
            kw["steps"] = self.N
        return kw


_SAMPLERS = {"rk45": "dopri5", "forward_euler": "euler", "improved_euler": "improved_euler"}


class UnknownConfigError(KeyError, ValueError):
    """A name that is not a key of :data:`configs` (a KeyError for the mapping, a ValueError like fastflow's
    other bad input)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class _Configs(Mapping):
    """The official presets by name; an unknown name raises :class:`UnknownConfigError` naming the known ones.
    Short names (``"lsun256"`` for ``"lsun_bedroom256"``) are accepted too, and not listed by iteration."""

    _ALIASES = {"lsun256": "lsun_bedroom256"}

    def __init__(self, presets: dict):
        self._presets = presets

    def __getitem__(self, name: str) -> PFGMConfig:
        try:
            return self._presets[self._ALIASES.get(name, name)]  # an unhashable name: TypeError, caught below
        except (KeyError, TypeError):
            raise UnknownConfigError(f"no PFGM config named {name!r}; the official ones are "
                                     f"{sorted(self._presets)}") from None

    def __iter__(self):
        return iter(self._presets)

    def __len__(self) -> int:
        return len(self._presets)

    def __repr__(self) -> str:
        return f"pfgm.configs({sorted(self._presets)})"


def likelihood(net_fn: Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor, *,
               z_max: float, z_min: float = 1e-3, gamma: float = 5.0, z_exp: float | None = 5.0,
               normaliser: str = "official", divergence: str | None = "hutchinson", n_probes: int = 1,
               generator: torch.Generator | None = None, derivative: str = "auto", rtol: float = 1e-4,
               atol: float = 1e-4, max_steps: int = 10_000, progress: bool = False,
               model_kwargs: dict | None = None) -> LikelihoodResult:
    """PFGM's log-likelihood the official way (Poisson_flow's ``get_likelihood_fn_pfgm``), on
    :func:`fastflow.log_likelihood`.

    The data x at z = z_min flows up dx/dz = v_x / (v_z + 1e-5), v the network's field normalised to a unit vector
    (v / (|v| + 1e-7)) and, below z = ``z_exp`` when gamma > 0, v_z replaced by the substitution of
    :func:`sample`, to z = z_max (integrated in log z, each sample on its own clock: the official solves one scipy
    RK45 in z for the batch); the change of log-density is the integral of the divergence (Hutchinson's estimate
    with Rademacher probes by default, as the official). The prior is the hyperplane z = z_max:
    log p(x_T) = log(2 z_max) - (N + 1)/2 log(|x_T|^2 + z_max^2) + theta, with the official theta =
    -log(2 pi^(N/2) / Gamma(m + 1)), m = int(N/2 - 1) (its loop over log i), ``normaliser="official"``; or the
    exact density of the hyperplane law, theta = -log |S^N| = -log(2 pi^((N+1)/2) / Gamma((N+1)/2)),
    ``normaliser="exact"`` (the
    two differ by ~0.0016 bits/dim at N = 3072). Bits per dimension as official: ``result.bpd(offset=7.0)``
    (8-bit data scaled to [-1, 1]).

    Args:
        net_fn: ``net_fn(x, z, **model_kwargs)`` -> the (n, N+1) field (z part last) or (v_x, v_z), as
            :func:`sample` takes it.
        x: (B, *shape) data in the model's scale.  z_max: the prior's height.  z_min: the start (official eps).
        gamma, z_exp: the substitution (official: the training gamma, z_exp = 5 hard-coded; None: off).
        normaliser: "official" or "exact" (above).
        divergence, n_probes, generator, derivative, rtol, atol, max_steps, progress, model_kwargs: as
            :func:`fastflow.log_likelihood` (official: Hutchinson, rtol = atol = 1e-4).

    Returns:
        :class:`fastflow.LikelihoodResult` (logp, prior_logp, delta_logp, x_T, nfe, success).
    """
    if not callable(net_fn):
        raise TypeError(f"net_fn must be callable as net_fn(x, z), got {type(net_fn).__name__}")
    x = V.tensor("x", x)
    shape = tuple(x.shape[1:])
    N = math.prod(shape)
    z_max, z_min = V.number("z_max", z_max), V.number("z_min", z_min)
    if not z_min < z_max:
        raise ValueError(f"z_min ({z_min}) must be < z_max ({z_max})")
    gamma = V.number("gamma", gamma, strict=False)
    if z_exp is not None:
        z_exp = V.number("z_exp", z_exp)
    V.choice("normaliser", normaliser, ("official", "exact"))
    root_n = math.sqrt(N)

    def f(y, t, **kw):  # t = log z: dx/dlog z = z dx/dz
        n = y.shape[0]
        z = torch.exp(t)
        vx, vz = _split_field(net_fn(y, z, **kw), n, shape, N)
        vx, vz = vx.to(y.dtype), vz.to(y.dtype)
        if z_exp is not None and gamma > 0:
            xn = torch.linalg.vector_norm(vx, dim=1) / root_n
            vn = torch.sqrt((gamma * xn / (1 - xn)) ** 2 + z * z)
            vz = torch.where(z < z_exp, -root_n * z / (vn + gamma), vz)
        scale = 1.0 / (torch.sqrt(torch.linalg.vector_norm(vx, dim=1) ** 2 + vz * vz) + 1e-7)
        dx_dz = (vx * scale[:, None]) / (vz * scale + 1e-5)[:, None]
        return (dx_dz * z[:, None]).reshape(y.shape)

    if normaliser == "official":
        m = int(N * 0.5 - 1)
        theta = -(math.log(2.0) + 0.5 * N * math.log(math.pi) - math.lgamma(m + 1))
    else:
        theta = math.lgamma(0.5 * (N + 1)) - 0.5 * (N + 1) * math.log(math.pi) - math.log(2.0)  # -log |S^N|

    def prior_logp(y):
        r2 = y.reshape(y.shape[0], -1).to(torch.float64).square().sum(dim=1)
        return (-0.5 * (N + 1) * torch.log(r2 + z_max * z_max) + math.log(2 * z_max) + theta).to(
            torch.float64 if y.dtype == torch.float64 else torch.float32)

    return log_likelihood(f, x, math.log(z_min), math.log(z_max), prior_logp, divergence=divergence,
                          n_probes=n_probes, generator=generator, derivative=derivative, rtol=rtol, atol=atol,
                          max_steps=max_steps, progress=progress, model_kwargs=model_kwargs)


#: The official settings of the released checkpoints, read from github.com/Newbeeer/Poisson_flow (commit 6706418 of
#: configs/poisson/*.py, with the defaults each imports); ``configs["cifar10"]`` etc. Other stored revisions of the
#: same files differ (e.g. CIFAR-10 z_max = 50, upper_norm = 4000; LSUN z_max = 50, upper_norm = 20000); these are
#: the ones of the published checkpoints' configs (z_max = 40 and upper_norm = 3000 for CIFAR-10, as in the paper).
configs: Mapping[str, PFGMConfig] = _Configs({
    "cifar10": PFGMConfig(
        name="cifar10",
        shape=(3, 32, 32),       # configs/default_cifar10_configs.py: data.num_channels = 3, data.image_size = 32
        centered=True,           # configs/poisson/cifar10_ddpmpp.py: data.centered = True
        M=291,                   # configs/default_cifar10_configs.py: training.M = 291
        tau=0.03,                # configs/poisson/cifar10_ddpmpp.py: training.tau = 0.03
        sigma_end=0.01,          # configs/poisson/cifar10_ddpmpp.py: model.sigma_end = 0.01
        restrict_M=True,         # configs/poisson/cifar10_ddpmpp.py: training.restrict_M = True
        gamma=5.0,               # configs/poisson/cifar10_ddpmpp.py: training.gamma = 5
        batch_size=4096,         # configs/poisson/cifar10_ddpmpp.py: training.batch_size = 4096
        small_batch_size=128,    # configs/poisson/cifar10_ddpmpp.py: training.small_batch_size = 128
        z_max=40.0,              # configs/poisson/cifar10_ddpmpp.py: sampling.z_max = 40
        z_min=1e-3,              # configs/poisson/cifar10_ddpmpp.py: sampling.z_min = 1e-3
        upper_norm=3000.0,       # configs/poisson/cifar10_ddpmpp.py: sampling.upper_norm = 3000
        z_exp=5.0,               # configs/default_cifar10_configs.py: sampling.z_exp = 5
        N=100,                   # configs/poisson/cifar10_ddpmpp.py: sampling.N = 100
        sampler="rk45",          # configs/poisson/cifar10_ddpmpp.py: sampling.ode_solver = 'rk45'
    ),
    "celeba64": PFGMConfig(
        name="celeba64",
        shape=(3, 64, 64),       # configs/default_celeba_configs.py: data.num_channels = 3, data.image_size = 64
        centered=True,           # configs/poisson/celeba64_ddpmpp.py: data.centered = True
        M=291,                   # configs/default_celeba_configs.py: training.M = 291
        tau=0.03,                # configs/poisson/celeba64_ddpmpp.py: training.tau = 0.03
        sigma_end=0.01,          # configs/poisson/celeba64_ddpmpp.py: model.sigma_end = 0.01
        restrict_M=True,         # configs/poisson/celeba64_ddpmpp.py: training.restrict_M = True
        gamma=5.0,               # configs/poisson/celeba64_ddpmpp.py: training.gamma = 5
        batch_size=512,          # configs/poisson/celeba64_ddpmpp.py: training.batch_size = 512
        small_batch_size=128,    # configs/poisson/celeba64_ddpmpp.py: training.small_batch_size = 128
        z_max=60.0,              # configs/poisson/celeba64_ddpmpp.py: sampling.z_max = 60
        z_min=1e-3,              # configs/poisson/celeba64_ddpmpp.py: sampling.z_min = 1e-3
        upper_norm=6000.0,       # configs/poisson/celeba64_ddpmpp.py: sampling.upper_norm = 6000
        z_exp=1.0,               # configs/default_celeba_configs.py: sampling.z_exp = 1
        N=100,                   # configs/poisson/celeba64_ddpmpp.py: sampling.N = 100
        sampler="rk45",          # configs/poisson/celeba64_ddpmpp.py: sampling.ode_solver = 'rk45'
    ),
    "lsun_bedroom256": PFGMConfig(
        name="lsun_bedroom256",
        shape=(3, 256, 256),     # configs/default_lsun_configs.py: data.num_channels = 3, data.image_size = 256
        centered=True,           # configs/poisson/bedroom_ddpmpp.py: data.centered = True
        M=356,                   # configs/default_lsun_configs.py: training.M = 356
        tau=0.03,                # configs/poisson/bedroom_ddpmpp.py: training.tau = 0.03
        sigma_end=0.01,          # configs/poisson/bedroom_ddpmpp.py: model.sigma_end = 0.01
        restrict_M=True,         # configs/poisson/bedroom_ddpmpp.py: training.restrict_M = True
        gamma=5.0,               # configs/poisson/bedroom_ddpmpp.py: training.gamma = 5
        batch_size=32,           # configs/poisson/bedroom_ddpmpp.py: training.batch_size = 32
        small_batch_size=32,     # configs/poisson/bedroom_ddpmpp.py: training.small_batch_size = 32
        z_max=100.0,             # configs/poisson/bedroom_ddpmpp.py: sampling.z_max = 100
        z_min=1e-3,              # configs/poisson/bedroom_ddpmpp.py: sampling.z_min = 1e-3
        upper_norm=30000.0,      # configs/poisson/bedroom_ddpmpp.py: sampling.upper_norm = 30000
        z_exp=0.1,               # configs/default_lsun_configs.py: sampling.z_exp = 0.1
        N=100,                   # configs/poisson/bedroom_ddpmpp.py: sampling.N = 100
        sampler="rk45",          # configs/poisson/bedroom_ddpmpp.py: sampling.ode_solver = 'rk45'
    ),
})


__all__ = ["perturb", "target", "prior", "hyperparameters", "sample", "likelihood", "configs", "PFGMConfig",
           "METHODS", "UnknownConfigError"]
