"""Benchmark of the ODE solvers behind the samplers: overhead per evaluation, NFE and time end to end, side by side.

Providers (every one solves the same ODE to rtol = atol = 1e-4 with an explicit 5(4) Runge-Kutta pair):

- ``scipy_rk45``: the official route. PFGM's official sampler (``get_rk45_sampler_pfgm`` in
  github.com/Newbeeer/Poisson_flow, ``sampling.py``) ported faithfully: the batch flattened into one float64 NumPy
  vector, ``scipy.integrate.solve_ivp(method="RK45")``, a NumPy -> torch float32 conversion and back on every
  evaluation, one shared ODE (one step size) for the whole batch. On the PFGM workload it is that sampler verbatim:
  z = exp(t) shared by the batch, a z channel concatenated to the state (and integrated), dx/dz = v_x / (v_z + 1e-5).
  On the analytic workloads it is the same conversion pattern around the analytic field.
- ``torchdiffeq``: ``torchdiffeq.odeint(method="dopri5")``, one shared step for the batch (its default RMS norm
  over the whole batch tensor).
- ``torchode``: ``torchode.Dopri5`` + ``IntegralController`` + ``AutoDiffAdjoint``, per-sample steps; every
  evaluation still gets the whole batch (finished samples are masked, not dropped). Eager (no torch.compile).
- ``fastflow``: ``fastflow.odeint(method="dopri5")`` (PFGM: ``fastflow.pfgm.sample``), per-sample steps;
  finished samples leave the batch that f gets.
- ``fastflow_shared``: ``fastflow.odeint`` on the batch flattened into one sample, i.e. one shared clock and one
  RMS norm over the whole batch: the shared-step baseline with fastflow's own controller and kernels.
- ``k_diffusion`` (the ``edm_*`` workloads only): k-diffusion's ``sampling.sample_heun`` / ``sample_dpmpp_2m``
  (``disable=True``: no tqdm bar). When ``import k_diffusion`` fails for its heavy optional imports (torchvision,
  scikit-image, clip, ...), those functions are compiled from the installed package's own ``sampling.py`` text
  (with ``utils.append_dims`` from its ``utils.py``), which is k-diffusion's code unchanged; the row's note says
  which. ``pip install --no-deps k-diffusion`` is enough for that; not installed: the rows are skipped.
- ``flow_matching`` (the ``flow_euler`` workload): Meta's flow_matching ``ODESolver.sample`` with Euler at step
  1/steps (torchdiffeq's fixed grid underneath; ``pip install --no-deps flow_matching torchdiffeq``), against
  ``fastflow.flow_sample(method="euler", steps=...)``, on the exact velocity of Gaussian data (one elementwise
  pass, so the overhead is what is measured).
  On these workloads ``fastflow`` is ``fastflow.edm_sample(solver="heun" | "dpmpp_2m", sigmas=...)``.

Workloads:

- ``analytic``: x (1000, 3072) float32, dx/dt = lambda_i x + omega J x (J rotates coordinate pairs), lambda_i
  log-uniform in [0.5, 2], omega = 2 pi, integrated backward from t = 1 to t = 0 (a decay by e^-lambda_i with one
  turn). The field costs a few elementwise passes, so the solver's own cost shows. Exact solution:
  x(t) = e^(lambda (t - 1)) R(omega (t - 1)) x(1).
- ``mixed``: the same field on (1000, 256), lambda_i log-uniform over three decades [1, 1000]: a batch of mixed
  stiffness, where a shared step follows the stiffest sample (dopri5's stability limit, h lambda <~ 3.3).
- ``pfgm``: PFGM's backward ODE on scikit-learn's digits (1797 x 8 x 8 scaled to [-1, 1]) with the exact
  empirical field ``fastflow.pfgm.target(x, z, ref=digits)`` as the network: B = 256 samples from
  ``pfgm.prior`` (official clipped radius, z_max and upper_norm from ``pfgm.hyperparameters``) integrated from
  z_max to z_min = 1e-3 in log z. torchdiffeq, torchode and fastflow_shared integrate fastflow's form of the ODE
  (v_z clamped at -1e-5; never active here: the exact field has v_z <= -1.6e-3).
- ``edm_heun``, ``edm_dpmpp_2m``: EDM sampling, x (1000, 3072) float32 from sigma_max = 80 on ``edm_sigmas(18)``
  (float64 for fastflow, float32 for k-diffusion as its get_sigmas_karras gives; 35 resp. 18 denoiser calls), with the exact denoiser of Gaussian data N(0, 0.5^2 I),
  D(x, sigma) = x s^2 / (s^2 + sigma^2): one elementwise pass, so what is measured is each sampler's own cost
  per model evaluation. Quality: relative error ||x - x_exact|| / ||x_exact|| per sample against the ODE's exact
  end point x_exact = s / sqrt(s^2 + sigma_max^2) x_T (the same for both providers: same algorithm, same grid).

Measured, per run: the time end to end (perf_counter around the solve; CUDA: synchronised), the time inside f
(each call of the field/network bracketed by perf_counter, synchronised on CUDA), the number of calls of f and the
sample-evaluations (sum over calls of the batch size f got). Overhead per evaluation = (end to end - inside f) /
calls: everything a solver adds around the network (stage combinations, error norms, step control, host syncs,
conversions, compaction). Also per sample-evaluation (a call on fewer rows is cheaper). NFE per sample: each
solver's own count where it keeps one per sample (fastflow, torchode), else the number of calls.

Quality, so that speed is not bought with wrong answers: analytic workloads, err/tol = RMS over d of
(x - x_exact) / (atol + rtol |x_exact|) per sample (median, max; the tolerance is per step, so a global value of
a few is normal); PFGM, the distance of each sample to its nearest digit (median, max), against the median
nearest-neighbour distance between digits (~2.0).

Repeats are interleaved (one run of every provider per round, so a burst of load from other processes hits them
alike), after one untimed warm-up run of each; medians over the rounds.

Usage::

    python benchmarks/bench_solvers.py --quick          # small sizes, one round, well under a minute
    python benchmarks/bench_solvers.py                  # the full run (~10 min on 2 CPU cores)
    python benchmarks/bench_solvers.py --workloads mixed --providers torchdiffeq fastflow fastflow_shared
    python benchmarks/bench_solvers.py --workloads edm_heun edm_dpmpp_2m   # edm_sample beside k-diffusion
    python benchmarks/bench_solvers.py --profile        # plus a cProfile of fastflow per workload

Rows are merged into ``--out`` (default ``benchmarks/results/solvers_<device>.json``): a row replaces an earlier
row of the same device, workload and provider; ``--fresh`` discards the earlier rows.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import math
import pstats
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

import fastflow
from fastflow import pfgm

PROVIDERS = ("scipy_rk45", "torchdiffeq", "torchode", "fastflow", "fastflow_shared", "k_diffusion", "flow_matching")
#: the providers that solve each kind of workload
APPLIES = {"linear": ("scipy_rk45", "torchdiffeq", "torchode", "fastflow", "fastflow_shared"),
           "pfgm": ("scipy_rk45", "torchdiffeq", "torchode", "fastflow", "fastflow_shared"),
           "edm": ("fastflow", "k_diffusion"),
           "flow": ("fastflow", "flow_matching")}
RTOL = ATOL = 1e-4
#: name -> parameters; "quick" variants for --quick
WORKLOADS = {
    "analytic": dict(B=1000, d=3072, lam=(0.5, 2.0), omega=2 * math.pi, t0=1.0, t1=0.0),
    "mixed": dict(B=1000, d=256, lam=(1.0, 1000.0), omega=2 * math.pi, t0=1.0, t1=0.0),
    "pfgm": dict(B=256, z_min=1e-3),
    "edm_heun": dict(B=1000, d=3072, steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0, s=0.5, solver="heun"),
    "edm_dpmpp_2m": dict(B=1000, d=3072, steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0, s=0.5,
                         solver="dpmpp_2m"),
    "flow_euler": dict(B=1000, d=3072, steps=50, s=0.5),
}
QUICK = {
    "analytic": dict(B=64, d=768, lam=(0.5, 2.0), omega=2 * math.pi, t0=1.0, t1=0.0),
    "mixed": dict(B=128, d=64, lam=(1.0, 100.0), omega=2 * math.pi, t0=1.0, t1=0.0),
    "pfgm": dict(B=32, z_min=1e-3),
    "edm_heun": dict(B=64, d=768, steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0, s=0.5, solver="heun"),
    "edm_dpmpp_2m": dict(B=64, d=768, steps=18, sigma_min=0.002, sigma_max=80.0, rho=7.0, s=0.5,
                         solver="dpmpp_2m"),
    "flow_euler": dict(B=64, d=768, steps=50, s=0.5),
}
#: the issue's goals
GOAL_OVH_VS_SCIPY = 10.0
GOAL_OVH_VS_TORCHDIFFEQ = 2.0
#: issue 13: at most 0.5x the overhead per model evaluation of k-diffusion's samplers and flow_matching's ODESolver
GOAL_OVH_VS_SAMPLER_PEERS = 2.0
GOAL_MIXED_NFE_RATIO = 0.7


# ---------------------------------------------------------------------------------------------- instrumented f


class Timed:
    """Wraps the field (or network): counts calls and rows, and the seconds spent inside it (CUDA: synchronised
    before and after each call, so that the kernels it queued count as its own)."""

    def __init__(self, fn: Callable, device: torch.device):
        self.fn, self.device = fn, device
        self.reset()

    def reset(self):
        self.calls, self.rows, self.seconds = 0, 0, 0.0

    def __call__(self, x, *args):
        C.synchronize(self.device)
        t0 = time.perf_counter()
        out = self.fn(x, *args)
        C.synchronize(self.device)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        self.rows += x.shape[0]
        return out


# --------------------------------------------------------------------------------------------------- workloads


@dataclass
class Workload:
    """One problem: the initial state, the time span and what f is; ``net`` is the timed field or network."""

    name: str
    kind: str  # "linear", "pfgm", "edm" or "flow"
    x0: torch.Tensor  # (B, *shape) float32
    t0: float
    t1: float
    net: Timed
    params: dict
    exact: torch.Tensor | None = None  # linear, edm: (B, d) float64 x(t1)
    ref: torch.Tensor | None = None  # pfgm: (R, *shape)
    extra: dict = field(default_factory=dict)
    sigmas: torch.Tensor | None = None  # edm: (steps + 1,) float64 grid, ending in 0

    @property
    def B(self) -> int:
        return self.x0.shape[0]

    @property
    def d(self) -> int:
        return math.prod(self.x0.shape[1:])


def linear_field(x: torch.Tensor, lam: torch.Tensor, omega: float) -> torch.Tensor:
    """dx/dt = lam_i x + omega J x, J rotating each coordinate pair (x_2k, x_2k+1) by +90 degrees.

    x (n, d) with d even, lam (n,); returns (n, d). Three elementwise passes.
    """
    out = x * lam.to(x.dtype)[:, None]
    xv, ov = x.reshape(x.shape[0], -1, 2), out.view(x.shape[0], -1, 2)
    ov[..., 0].add_(xv[..., 1], alpha=-omega)
    ov[..., 1].add_(xv[..., 0], alpha=omega)
    return out


def linear_exact(x0: torch.Tensor, lam: torch.Tensor, omega: float, dt: float) -> torch.Tensor:
    """x(t0 + dt) = e^(lam dt) R(omega dt) x0 in float64, (B, d)."""
    B = x0.shape[0]
    xv = x0.double().reshape(B, -1, 2)
    c, s = math.cos(omega * dt), math.sin(omega * dt)
    out = torch.stack((c * xv[..., 0] - s * xv[..., 1], s * xv[..., 0] + c * xv[..., 1]), dim=-1)
    return out.reshape(B, -1) * torch.exp(lam.double() * dt)[:, None]


def make_linear(name: str, p: dict, seed: int, device: torch.device) -> Workload:
    g = torch.Generator().manual_seed(seed + (1 if name == "mixed" else 0))
    B, d = p["B"], p["d"]
    x0 = torch.randn(B, d, generator=g)
    lo, hi = math.log(p["lam"][0]), math.log(p["lam"][1])
    lam = torch.rand(B, generator=g).mul_(hi - lo).add_(lo).exp_().to(torch.float64)
    omega = p["omega"]
    lam_dev = lam.to(device=device, dtype=torch.float32)

    def f(x, t, idx=None):  # idx: the rows' positions in the batch (fastflow drops finished samples)
        return linear_field(x, lam_dev if idx is None else lam_dev.index_select(0, idx), omega)

    exact = linear_exact(x0, lam, omega, p["t1"] - p["t0"])
    return Workload(name, "linear", x0.to(device), p["t0"], p["t1"], Timed(f, device), p, exact=exact,
                    extra={"lambda_range": list(p["lam"]), "omega": omega})


def load_digits_ref(device: torch.device) -> torch.Tensor:
    """scikit-learn's digits, (1797, 1, 8, 8) float32 scaled from [0, 16] to [-1, 1]."""
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images, dtype=torch.float32) / 8.0 - 1.0
    return x[:, None].to(device)


def make_pfgm(name: str, p: dict, seed: int, device: torch.device) -> Workload:
    ref = load_digits_ref(device)
    hp = pfgm.hyperparameters(ref)
    g = torch.Generator().manual_seed(seed + 2)
    # The official prior: radius clipped to [1, upper_norm] (an unclipped heavy tail would only add a few far
    # samples that every solver must bring in).
    x0 = pfgm.prior(p["B"], tuple(ref.shape[1:]), z_max=hp["z_max"], upper_norm=hp["upper_norm"], generator=g)

    def net(x, z):
        return pfgm.target(x, z, ref)  # (n, d+1): the exact normalised Poisson field, gamma = 5

    r = ref.reshape(ref.shape[0], -1).double()
    dd = torch.cdist(r, r)
    dd.fill_diagonal_(float("inf"))
    return Workload(name, "pfgm", x0.to(device), math.log(hp["z_max"]), math.log(p["z_min"]), Timed(net, device),
                    p, ref=ref, extra={"z_max": hp["z_max"], "z_min": p["z_min"], "upper_norm": hp["upper_norm"],
                                       "M": hp["M"], "R": ref.shape[0], "dataset": "sklearn digits 8x8, [-1, 1]",
                                       "digit_nn_median": float(dd.min(dim=1).values.median())})


def make_edm(name: str, p: dict, seed: int, device: torch.device) -> Workload:
    g = torch.Generator().manual_seed(seed + 3)
    B, d, s, smax = p["B"], p["d"], p["s"], p["sigma_max"]
    x0 = torch.randn(B, d, generator=g) * smax
    s2 = s * s

    def den(x, sigma):  # E[x0 | x_sigma = x] for x0 ~ N(0, s^2 I): one elementwise pass
        return x * (s2 / (s2 + sigma * sigma))[:, None]

    exact = x0.double() * (s / math.sqrt(s2 + smax * smax))
    sig = fastflow.edm_sigmas(p["steps"], p["sigma_min"], smax, p["rho"], device=device)
    return Workload(name, "edm", x0.to(device), smax, 0.0, Timed(den, device), p, exact=exact,
                    extra={"solver": p["solver"], "steps": p["steps"], "sigma_min": p["sigma_min"],
                           "sigma_max": smax, "rho": p["rho"], "data_std": s}, sigmas=sig)


def make_flow(name: str, p: dict, seed: int, device: torch.device) -> Workload:
    """Rectified flow (x_t = (1 - t) x0 + t eps) of Gaussian data N(0, s^2 I): the exact velocity in one
    elementwise pass, Euler on a uniform grid from t = 1 to 0; the exact flow maps eps to s eps."""
    g = torch.Generator().manual_seed(seed + 4)
    B, d, s = p["B"], p["d"], p["s"]
    x0 = torch.randn(B, d, generator=g)
    s2 = s * s

    def vel(x, t):  # (x - E[x0 | x_t = x]) / t, E[x0 | x] = (1 - t) s^2 / ((1 - t)^2 s^2 + t^2) x
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        a = 1.0 - t
        return x * ((1.0 - a * s2 / (a * a * s2 + t * t)) / t)[:, None]

    return Workload(name, "flow", x0.to(device), 1.0, 0.0, Timed(vel, device), p, exact=x0.double() * s,
                    extra={"steps": p["steps"], "method": "euler", "data_std": s})


def make_workload(name: str, quick: bool, seed: int, device: torch.device) -> Workload:
    p = (QUICK if quick else WORKLOADS)[name]
    if name.startswith("flow"):
        return make_flow(name, p, seed, device)
    if name.startswith("edm"):
        return make_edm(name, p, seed, device)
    return make_pfgm(name, p, seed, device) if name == "pfgm" else make_linear(name, p, seed, device)


def pfgm_drift(net: Callable, x: torch.Tensor, logz: torch.Tensor, shape: tuple) -> torch.Tensor:
    """fastflow.pfgm.sample's right-hand side: dx/dlog z = z v_x / v_z, v_z clamped at -1e-5; x (n, d), logz (n,)."""
    n, d = x.shape[0], x.shape[1]
    z = torch.exp(logz).to(x.dtype)
    v = net(x.reshape(n, *shape), z)
    vx, vz = v[:, :d], v[:, d].clamp(max=-1e-5)
    return vx * (z / vz)[:, None]


# --------------------------------------------------------------------------------------------------- providers


@dataclass
class Solved:
    x: torch.Tensor  # (B, *shape)
    nfe: torch.Tensor | None = None  # (B,) per-sample evaluations where the solver counts them
    success: bool = True
    note: str | None = None


def load_k_diffusion():
    """(namespace with sample_heun and sample_dpmpp_2m, how it was loaded) from the installed k-diffusion.

    ``import k_diffusion`` imports its whole package (torchvision, scikit-image, clip, wandb, ...); when that
    fails, the two functions (and ``to_d``) are compiled from the installed ``k_diffusion/sampling.py`` as they
    stand, with ``utils.append_dims`` from ``k_diffusion/utils.py``: k-diffusion's own code, unchanged. Raises
    ImportError with the reason when k-diffusion is not installed.
    """
    import importlib.metadata
    import importlib.util

    version = importlib.metadata.version("k-diffusion") if importlib.util.find_spec("k_diffusion") else None
    if version is None:
        raise ImportError("k-diffusion is not installed; pip install --no-deps k-diffusion")
    try:
        import k_diffusion.sampling as ks

        return ks, f"k-diffusion {version}, imported"
    except Exception as e:  # any failure of its optional imports
        why = f"{type(e).__name__}: {e}"
    import ast
    import types

    from tqdm.auto import tqdm, trange

    pkg = Path(importlib.util.find_spec("k_diffusion").origin).parent

    def functions(path: Path, names: set) -> types.CodeType:
        tree = ast.parse(path.read_text())
        body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
        if {n.name for n in body} != names:
            raise ImportError(f"{path} lacks {sorted(names - {n.name for n in body})}")
        return compile(ast.Module(body=body, type_ignores=[]), str(path), "exec")

    utils = types.SimpleNamespace(__name__="k_diffusion.utils")
    exec(functions(pkg / "utils.py", {"append_dims"}), vars(utils))
    ns = types.SimpleNamespace(__name__="k_diffusion.sampling", torch=torch, math=math, trange=trange, tqdm=tqdm,
                               utils=utils)
    exec(functions(pkg / "sampling.py", {"to_d", "sample_heun", "sample_dpmpp_2m"}), vars(ns))
    return ns, (f"k-diffusion {version}: sample_heun / sample_dpmpp_2m compiled from its installed sampling.py "
                f"(import k_diffusion failed: {why})")


def missing(provider: str, wl_kind: str) -> str | None:
    """Why a provider cannot run here (its package is missing), or None."""
    if provider == "k_diffusion":
        try:
            load_k_diffusion()
        except ImportError as e:
            return str(e)
        return None
    mod = {"scipy_rk45": "scipy", "torchdiffeq": "torchdiffeq", "torchode": "torchode",
           "flow_matching": "flow_matching"}.get(provider)
    if mod is None:
        return None
    try:
        __import__(mod)
    except ImportError as e:
        return f"{mod} is not installed ({e.msg}); pip install {mod}"
    return None


def run_scipy_linear(wl: Workload) -> Solved:
    """The official route around the analytic field: float64 NumPy state, RK45, torch float32 on every call."""
    from scipy import integrate

    shape, device, net = tuple(wl.x0.shape), wl.x0.device, wl.net

    def ode_func(t, y):
        x = torch.from_numpy(y.reshape(shape)).to(device).type(torch.float32)  # from_flattened_numpy
        vec_t = torch.ones(shape[0], device=device) * t
        return net(x, vec_t).detach().cpu().numpy().reshape((-1,))  # to_flattened_numpy

    sol = integrate.solve_ivp(ode_func, (wl.t0, wl.t1), wl.x0.detach().cpu().numpy().reshape((-1,)), rtol=RTOL,
                              atol=ATOL, method="RK45")
    x = torch.tensor(sol.y[:, -1]).reshape(shape).to(device).type(torch.float32)
    return Solved(x, success=bool(sol.success))


def run_scipy_pfgm(wl: Workload) -> Solved:
    """PFGM's official RK45 sampler (get_rk45_sampler_pfgm), ported line by line; z_exp substitution off."""
    import numpy as np
    from scipy import integrate

    device, net = wl.x0.device, wl.net
    shape = tuple(wl.x0.shape)  # (B, C, H, W)
    B, Ch, H, W = shape
    z_max, eps = wl.extra["z_max"], wl.extra["z_min"]
    with torch.no_grad():
        x = wl.x0
        z = torch.ones((len(x), 1, 1, 1)).to(x.device)
        z = z.repeat((1, 1, H, W)) * z_max
        x = x.view(shape)
        x = torch.cat((x, z), dim=1)  # the z channel is integrated with the state
        x = x.float()
        new_shape = (len(x), Ch + 1, H, W)

        def ode_func(t, x):
            x = torch.from_numpy(x.reshape(new_shape)).to(device).type(torch.float32)
            z = np.exp(t)
            v_out = net(x[:, :-1], torch.ones((len(x)), device=device) * z)
            x_drift, z_drift = v_out[:, :-1], v_out[:, -1]  # the network's (x_drift, z_drift)
            x_drift = x_drift.view(len(x_drift), -1)
            v = torch.cat([x_drift, z_drift[:, None]], dim=1)
            dt_dz = 1 / (v[:, -1] + 1e-5)
            dx_dt = v[:, :-1].view(shape)
            dx_dz = dx_dt * dt_dz.view(-1, *([1] * len(x.size()[1:])))
            drift = torch.cat([z * dx_dz, torch.ones((len(dx_dz), 1, H, W)).to(dx_dz.device) * z], dim=1)
            return drift.detach().cpu().numpy().reshape((-1,))

        solution = integrate.solve_ivp(ode_func, (np.log(z_max), np.log(eps)), x.detach().cpu().numpy().reshape((-1,)),
                                       rtol=RTOL, atol=ATOL, method="RK45")
        x = torch.tensor(solution.y[:, -1]).reshape(new_shape).to(device).type(torch.float32)
    return Solved(x[:, :-1].contiguous(), success=bool(solution.success))


def _rhs(wl: Workload) -> Callable:
    """f(x (n, d), t (n,) or scalar) -> (n, d) on flat rows, for the peer solvers (no index: the whole batch)."""
    shape = tuple(wl.x0.shape[1:])
    if wl.kind == "linear":
        return lambda x, t: wl.net(x, t)
    return lambda x, t: pfgm_drift(wl.net, x, t.expand(x.shape[0]) if t.dim() == 0 else t, shape)


def run_torchdiffeq(wl: Workload) -> Solved:
    import torchdiffeq

    rhs = _rhs(wl)
    y0 = wl.x0.reshape(wl.B, -1)
    t = torch.tensor([wl.t0, wl.t1], dtype=torch.float64, device=y0.device)
    ys = torchdiffeq.odeint(lambda tt, y: rhs(y, tt), y0, t, rtol=RTOL, atol=ATOL, method="dopri5")
    return Solved(ys[-1].reshape(wl.x0.shape))


def run_torchode(wl: Workload) -> Solved:
    import torchode as to

    rhs = _rhs(wl)
    y0 = wl.x0.reshape(wl.B, -1)
    term = to.ODETerm(lambda t, y: rhs(y, t))
    solver = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=ATOL, rtol=RTOL, term=term))
    kw = dict(dtype=torch.float64, device=y0.device)
    sol = solver.solve(to.InitialValueProblem(y0=y0, t_start=torch.full((wl.B,), wl.t0, **kw),
                                              t_end=torch.full((wl.B,), wl.t1, **kw)))
    return Solved(sol.ys[:, -1].reshape(wl.x0.shape), nfe=sol.stats["n_f_evals"].reshape(-1),
                  success=bool((sol.status == 0).all()))


def run_k_diffusion(wl: Workload) -> Solved:
    ks, _ = load_k_diffusion()
    fn = ks.sample_heun if wl.params["solver"] == "heun" else ks.sample_dpmpp_2m
    # the grid in float32, as k-diffusion's get_sigmas_karras makes it: a float64 grid would turn sample_heun's
    # float32 state into float64 (to_d divides by append_dims(sigma), a (1, 1) float64 tensor, not a 0-d one)
    return Solved(fn(wl.net, wl.x0, wl.sigmas.to(torch.float32), disable=True))


def run_flow_matching(wl: Workload) -> Solved:
    from flow_matching.solver import ODESolver

    # flow_matching runs time from the source at 0 to the data at 1; a descending grid solves our t = 1 -> 0
    x = ODESolver(velocity_model=lambda x, t: wl.net(x, t)).sample(
        x_init=wl.x0, step_size=1.0 / wl.params["steps"], method="euler", time_grid=torch.tensor([1.0, 0.0]))
    return Solved(x)


def run_fastflow(wl: Workload) -> Solved:
    if wl.kind == "flow":
        res = fastflow.flow_sample(wl.net, wl.x0, method="euler", steps=wl.params["steps"])
        return Solved(res.x, nfe=res.nfe, success=bool(res.success.all()))
    if wl.kind == "edm":
        res = fastflow.edm_sample(wl.net, wl.x0, sigmas=wl.sigmas, solver=wl.params["solver"])
        return Solved(res.x, nfe=res.nfe, success=bool(res.success.all()))
    if wl.kind == "linear":
        res = fastflow.odeint(wl.net, wl.x0, wl.t0, wl.t1, method="dopri5", rtol=RTOL, atol=ATOL, with_index=True)
    else:
        res = pfgm.sample(wl.net, wl.x0, z_max=wl.extra["z_max"], z_min=wl.extra["z_min"], method="dopri5",
                          rtol=RTOL, atol=ATOL)
    return Solved(res.x, nfe=res.nfe, success=bool(res.success.all()))


def run_fastflow_shared(wl: Workload) -> Solved:
    """fastflow.odeint on the batch as one sample: one clock, one step size, one RMS norm for all."""
    rhs, B = _rhs(wl), wl.B

    def f(x, t):  # x (1, B d), t (1,)
        return rhs(x.reshape(B, -1), t.expand(B) if wl.kind == "pfgm" else t).reshape(1, -1)

    res = fastflow.odeint(f, wl.x0.reshape(1, -1), wl.t0, wl.t1, method="dopri5", rtol=RTOL, atol=ATOL)
    return Solved(res.x.reshape(wl.x0.shape), success=bool(res.success.all()))


RUNNERS = {
    "scipy_rk45": lambda wl: run_scipy_linear(wl) if wl.kind == "linear" else run_scipy_pfgm(wl),
    "torchdiffeq": run_torchdiffeq,
    "torchode": run_torchode,
    "fastflow": run_fastflow,
    "fastflow_shared": run_fastflow_shared,
    "k_diffusion": run_k_diffusion,
    "flow_matching": run_flow_matching,
}
NOTES = {
    "scipy_rk45": "official route: float64 numpy, RK45, conversion per call, shared step",
    "torchdiffeq": "dopri5, shared step, RMS over the batch",
    "torchode": "Dopri5 + IntegralController, per-sample steps, f gets the full batch",
    "fastflow": "dopri5, per-sample steps, finished samples dropped",
    "fastflow_shared": "fastflow.odeint on the batch as one sample (shared step)",
    "k_diffusion": "k-diffusion sample_heun / sample_dpmpp_2m, disable=True",
    "flow_matching": "flow_matching ODESolver.sample, euler (torchdiffeq fixed grid), step 1/steps",
}


# ------------------------------------------------------------------------------------------------------- runner


@dataclass
class RunStats:
    e2e_s: float
    f_s: float
    calls: int
    rows: int
    solved: Solved


def _ovh(r: RunStats) -> float:
    """Overhead per call of one run, in ms: (end to end - inside f) / calls."""
    return (r.e2e_s - r.f_s) / max(r.calls, 1) * 1e3


def run_once(provider: str, wl: Workload) -> RunStats:
    wl.net.reset()
    device = wl.x0.device
    C.synchronize(device)
    with torch.no_grad():
        t0 = time.perf_counter()
        solved = RUNNERS[provider](wl)
        C.synchronize(device)
        e2e = time.perf_counter() - t0
    return RunStats(e2e, wl.net.seconds, wl.net.calls, wl.net.rows, solved)


def quality(wl: Workload, x: torch.Tensor) -> dict:
    """linear: err/tol per sample (median, max); pfgm: nearest-digit distance (median, max)."""
    xf = x.reshape(wl.B, -1).double().cpu()
    if not bool(torch.isfinite(xf).all()):
        return {"quality_kind": "nonfinite", "q_median": None, "q_max": None}
    if wl.kind in ("edm", "flow"):
        e = (xf - wl.exact).norm(dim=1) / wl.exact.norm(dim=1)
        return {"quality_kind": "rel err", "q_median": float(e.median()), "q_max": float(e.max())}
    if wl.kind == "linear":
        e = ((xf - wl.exact) / (ATOL + RTOL * wl.exact.abs())).pow(2).mean(dim=1).sqrt()
        return {"quality_kind": "err/tol", "q_median": float(e.median()), "q_max": float(e.max())}
    r = wl.ref.reshape(wl.ref.shape[0], -1).double().cpu()
    dist = torch.cdist(xf, r).min(dim=1).values
    return {"quality_kind": "nn dist", "q_median": float(dist.median()), "q_max": float(dist.max())}


def bench_workload(name: str, providers, args, device: torch.device, meta: dict) -> list[dict]:
    t_setup = time.perf_counter()
    wl = make_workload(name, args.quick, args.seed, device)
    base = dict(meta, workload=name, B=wl.B, d=wl.d, shape=list(wl.x0.shape[1:]), rtol=RTOL, atol=ATOL,
                t0=wl.t0, t1=wl.t1, dtype="float32", workload_params=wl.extra, timestamp=C.utc_now())
    print(f"\n== {name}: B={wl.B}, d={wl.d}, t {wl.t0:.4g} -> {wl.t1:.4g}, "
          + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in wl.extra.items())
          + f"  (setup {time.perf_counter() - t_setup:.1f} s)", flush=True)
    rows, active = {}, []
    providers = [p for p in providers if p in APPLIES[wl.kind]]
    for prov in providers:
        reason = missing(prov, wl.kind)
        if reason is not None:
            rows[prov] = dict(base, provider=prov, skipped=True, reason=reason, note=NOTES[prov])
            print(f"   {prov:16s} skipped: {reason}", flush=True)
        else:
            active.append(prov)
            if prov == "k_diffusion":
                NOTES[prov] = "sample_heun / sample_dpmpp_2m, disable=True; " + load_k_diffusion()[1]

    runs: dict[str, list[RunStats]] = {p: [] for p in active}
    # Warm-up: one untimed run each (allocator pools at this size, lazy imports, thread pools); it also gives the
    # answer, checked below, and the round's duration for the progress line.
    warm = {}
    if not args.no_warmup:
        for prov in active:
            warm[prov] = run_once(prov, wl)
            print(f"   {prov:16s} warm-up {warm[prov].e2e_s:7.2f} s, {warm[prov].calls} calls", flush=True)
    for rnd in range(args.repeats):
        for prov in active:
            runs[prov].append(run_once(prov, wl))
        if args.repeats > 1:
            print(f"   round {rnd + 1}/{args.repeats}: " + ", ".join(f"{p} {runs[p][-1].e2e_s:.2f} s" for p in active),
                  flush=True)

    for prov in active:
        rs = runs[prov]
        last = rs[-1]
        tm = C.Timing([r.e2e_s * 1e3 for r in rs])
        f_ms = C.Timing([r.f_s * 1e3 for r in rs])
        ovh = C.Timing([_ovh(r) for r in rs])
        ovh_row = C.Timing([(r.e2e_s - r.f_s) / max(r.rows, 1) * 1e6 for r in rs])
        nfe = last.solved.nfe
        if nfe is not None:
            nfe = nfe.detach().cpu().long()
            nfe_med, nfe_min, nfe_max = int(nfe.median()), int(nfe.min()), int(nfe.max())
            nfe_src = "solver's per-sample count"
        else:
            nfe_med = nfe_min = nfe_max = last.calls
            nfe_src = "calls (shared step: every sample takes every evaluation)"
        row = dict(base, provider=prov, skipped=False, reason=None, note=NOTES[prov], **tm.as_dict(),
                   f_median_ms=f_ms.median, overhead_per_call_ms=ovh.median, overhead_per_call_min_ms=min(ovh.times_ms),
                   overhead_per_call_rounds_ms=ovh.times_ms, overhead_per_call_iqr_ms=ovh.as_dict()[
                       "iqr_ms"], overhead_per_sample_eval_us=ovh_row.median, calls=last.calls,
                   sample_evals=last.rows, sample_evals_per_sample=last.rows / wl.B, nfe_median=nfe_med,
                   nfe_min=nfe_min, nfe_max=nfe_max, nfe_source=nfe_src, success=last.solved.success,
                   f_share=f_ms.median / tm.median if tm.median else None,
                   cpu_pressure_avg10=C.cpu_pressure() if device.type == "cpu" else None, **quality(wl, last.solved.x))
        if any(r.calls != last.calls for r in rs):
            row["note"] += f"; calls varied over rounds: {sorted({r.calls for r in rs})}"
        rows[prov] = row
        print(f"   {prov:16s} {tm.median:9.1f} ms e2e (IQR {tm.as_dict()['iqr_ms']:.3g}), f {f_ms.median:8.1f} ms, "
              f"{last.calls:5d} calls, {last.rows:8d} sample-evals, overhead {ovh.median:7.3f} ms/call, "
              f"{row['quality_kind']} {C.fmt_num(row['q_median'], '.3g')} (max {C.fmt_num(row['q_max'], '.3g')})",
              flush=True)

    # Ratios: the others' overhead per call over this one's (how many times lower this one's is), paired round by
    # round (both measured within seconds of each other, under the same load from other processes), then the
    # median over the rounds; and total sample-evaluations over torchdiffeq's.
    ordered = [rows[p] for p in providers if p in rows]
    for r in ordered:
        if r.get("skipped"):
            continue
        mine = runs[r["provider"]]
        for other in ("scipy_rk45", "torchdiffeq", "torchode", "k_diffusion", "flow_matching"):
            key = f"overhead_lower_than_{other}"
            if other not in runs:
                r[key] = r[key + "_rounds"] = None
                continue
            paired = [_ovh(o) / _ovh(m) for m, o in zip(mine, runs[other]) if _ovh(m) > 0]
            r[key] = C.Timing(paired).median if paired else None
            r[key + "_rounds"] = paired
        td = rows.get("torchdiffeq")
        r["sample_evals_vs_torchdiffeq"] = (r["sample_evals"] / td["sample_evals"]
                                            if td and not td.get("skipped") else None)
    if args.profile and "fastflow" in active:
        profile_fastflow(wl, args.profile_top)
    del wl
    return [C.json_safe(r) for r in ordered]


def profile_fastflow(wl: Workload, top: int) -> None:
    """cProfile of one fastflow run: where the time outside f goes (per-step Python, syncs, compaction)."""
    pr = cProfile.Profile()
    wl.net.reset()
    with torch.no_grad():
        pr.enable()
        RUNNERS["fastflow"](wl)
        pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(top)
    print(f"\n-- cProfile of fastflow on {wl.name} ({wl.net.calls} calls of f, {wl.net.seconds:.3f} s inside f), "
          f"top {top} by own time:")
    print("\n".join(line for line in s.getvalue().splitlines() if line.strip())[:6000])


# ---------------------------------------------------------------------------------------------------------- goals


def _row(rows, workload, provider):
    return next((r for r in rows if r.get("workload") == workload and r.get("provider") == provider
                 and not r.get("skipped")), None)


def evaluate_goals(rows: list[dict]) -> list[dict]:
    """The issue's goals (PASS / FAIL / N/A), judged on the rows; reported, never asserted."""
    goals = []

    def add(scope, text, value, ok, detail):
        status = "N/A" if ok is None else ("PASS" if ok else "FAIL")
        goals.append({"scope": scope, "goal": text, "status": status, "value": value, "detail": detail})

    pairs = {"analytic": (("scipy_rk45", GOAL_OVH_VS_SCIPY), ("torchdiffeq", GOAL_OVH_VS_TORCHDIFFEQ)),
             "pfgm": (("scipy_rk45", GOAL_OVH_VS_SCIPY), ("torchdiffeq", GOAL_OVH_VS_TORCHDIFFEQ)),
             "edm_heun": (("k_diffusion", GOAL_OVH_VS_SAMPLER_PEERS),),
             "edm_dpmpp_2m": (("k_diffusion", GOAL_OVH_VS_SAMPLER_PEERS),),
             "flow_euler": (("flow_matching", GOAL_OVH_VS_SAMPLER_PEERS),)}
    for wl, others in pairs.items():
        if wl not in ("analytic", "pfgm") and not any(r.get("workload") == wl for r in rows):
            continue  # the sampler workloads' goals only where they ran
        ff = _row(rows, wl, "fastflow")
        for other, thr in others:
            text = f"fastflow: >= {thr:g}x lower overhead per evaluation than {other}"
            o = _row(rows, wl, other)
            if ff is None or o is None:
                add(wl, text, None, None, f"no {'fastflow' if ff is None else other} row for {wl}")
                continue
            # The median of the per-round paired ratios (rows of one run); the ratio of the medians otherwise.
            v = ff.get(f"overhead_lower_than_{other}") or o["overhead_per_call_ms"] / ff["overhead_per_call_ms"]
            rounds = ff.get(f"overhead_lower_than_{other}_rounds") or []
            add(wl, text, v, v >= thr, f"medians {o['overhead_per_call_ms']:.3g} vs {ff['overhead_per_call_ms']:.3g} "
                                       f"ms per call; paired per round: {', '.join(f'{x:.3g}x' for x in rounds)}; "
                                       f"median {v:.3g}x")
    ff = _row(rows, "mixed", "fastflow")
    for other, what in (("torchdiffeq", "torchdiffeq's shared-step dopri5"),
                        ("fastflow_shared", "fastflow's dopri5 on one shared clock")):
        text = f"fastflow: total NFE <= {GOAL_MIXED_NFE_RATIO:g}x that of {what}"
        o = _row(rows, "mixed", other)
        if ff is None or o is None:
            add("mixed", text, None, None, f"no {'fastflow' if ff is None else other} row for mixed")
            continue
        v = ff["sample_evals"] / o["sample_evals"]
        add("mixed", text, v, v <= GOAL_MIXED_NFE_RATIO, f"{ff['sample_evals']} / {o['sample_evals']} "
                                                          f"sample-evaluations = {v:.3g}x")
    return goals


# ----------------------------------------------------------------------------------------------------------- main


def _ratio(r, key):
    v = r.get(key)
    return C.fmt_num(v, ".3g") + "x" if v is not None else "-"


COLUMNS = [
    ("workload", lambda r: r["workload"]),
    ("B", lambda r: r.get("B", "-")),
    ("d", lambda r: r.get("d", "-")),
    ("provider", lambda r: r["provider"]),
    ("e2e ms", lambda r: C.fmt_num(r.get("median_ms"), ".5g")),
    ("IQR ms", lambda r: C.fmt_num(r.get("iqr_ms"), ".2g")),
    ("n", lambda r: r.get("n_repeats", "-")),
    ("in f ms", lambda r: C.fmt_num(r.get("f_median_ms"), ".4g")),
    ("calls", lambda r: r.get("calls", "-")),
    ("sample-evals", lambda r: r.get("sample_evals", "-")),
    ("NFE/sample med [min-max]", lambda r: f"{r['nfe_median']} [{r['nfe_min']}-{r['nfe_max']}]"
     if r.get("nfe_median") is not None else "-"),
    ("ovh ms/call", lambda r: C.fmt_num(r.get("overhead_per_call_ms"), ".3g")),
    ("ovh us/row", lambda r: C.fmt_num(r.get("overhead_per_sample_eval_us"), ".3g")),
    ("scipy/this", lambda r: _ratio(r, "overhead_lower_than_scipy_rk45")),
    ("tdq/this", lambda r: _ratio(r, "overhead_lower_than_torchdiffeq")),
    ("kdiff/this", lambda r: _ratio(r, "overhead_lower_than_k_diffusion")),
    ("fm/this", lambda r: _ratio(r, "overhead_lower_than_flow_matching")),
    ("evals/tdq", lambda r: _ratio(r, "sample_evals_vs_torchdiffeq")),
    ("quality med (max)", lambda r: f"{r['quality_kind']} {C.fmt_num(r.get('q_median'), '.3g')} "
     f"({C.fmt_num(r.get('q_max'), '.3g')})" if r.get("quality_kind") else "-"),
    ("note", lambda r: ("SKIPPED: " + r["reason"]) if r.get("skipped") else ("" if r.get("success", True)
                                                                             else "NOT ALL SAMPLES FINISHED")),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    p.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small sizes, one round (a smoke run, < 1 min)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3, quick 1); medians reported")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up run of each provider")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="print a cProfile of fastflow on each workload")
    p.add_argument("--profile-top", type=int, default=25, help="functions shown by --profile")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file (default benchmarks/results/solvers_<device>.json)")
    p.add_argument("--fresh", action="store_true", help="do not keep the earlier rows of --out")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = C.start_run(args)

    peers = {}
    for mod in ("scipy", "torchdiffeq", "torchode", "sklearn", "flow_matching"):
        peers[mod] = None
        with contextlib.suppress(Exception):
            peers[mod] = getattr(__import__(mod), "__version__", "?")
    peers["k_diffusion"] = None  # its package import may fail (heavy optional imports): the distribution's version
    with contextlib.suppress(Exception):
        import importlib.metadata

        peers["k_diffusion"] = importlib.metadata.version("k-diffusion")
    run_ts = C.utc_now()
    meta = dict(benchmark="bench_solvers", timestamp=run_ts, **C.device_info(device), **C.versions(),
                peer_versions=peers, quick=args.quick, seed=args.seed,
                cpu_pressure_avg10=C.cpu_pressure() if device.type == "cpu" else None)
    out_path = args.out or C.RESULTS_DIR / f"solvers_{C.device_kind(device)}.json"
    print(f"bench_solvers: {meta['device_name']} ({device.type}, {meta['num_threads']} threads), torch {meta['torch']}, "
          f"python {meta['python']}, fastflow {meta['fastflow']}; "
          + ", ".join(f"{k} {v or 'missing'}" for k, v in peers.items()))
    print(f"workloads: {', '.join(args.workloads)}; providers: {', '.join(args.providers)}; rtol = atol = {RTOL:g}; "
          f"{args.repeats} timed round(s){'' if args.no_warmup else ' after a warm-up run'}")
    C.start_notes(meta)

    t_start = time.perf_counter()
    rows = []
    for name in args.workloads:
        if name == "pfgm" and peers["sklearn"] is None:
            print("\n== pfgm: skipped: scikit-learn is not installed (its digits are the dataset); "
                  "pip install scikit-learn")
            rows += [C.json_safe(dict(meta, workload=name, provider=p, skipped=True, note=NOTES[p],
                                      reason="scikit-learn is not installed (the digits dataset)"))
                     for p in args.providers]
            continue
        rows += bench_workload(name, args.providers, args, device, meta)
    elapsed = time.perf_counter() - t_start

    print(f"\nresults ({elapsed:.0f} s; medians over {args.repeats} round(s)). e2e: the solve end to end; in f: time "
          "inside the field/network; sample-evals: sum over calls of the rows f got;\nNFE/sample: per-sample count "
          "(fastflow, torchode) or calls; ovh: (e2e - in f) per call and per row; scipy/this, tdq/this, kdiff/this: their "
          "overhead per call over this one's\n(paired round by round, median over rounds); evals/tdq: sample-evals over torchdiffeq's; quality: err/tol vs the "
          "exact solution (analytic), distance to the nearest digit (pfgm),\nrelative error vs the ODE's exact end "
          "point (edm_*)\n")
    C.print_table(rows, COLUMNS)

    old = [] if args.fresh else C.load_rows(out_path)
    merged, kept = C.merge_rows(old, rows, key=("device", "device_name", "quick", "workload", "provider"))
    wl_order = {w: i for i, w in enumerate(WORKLOADS)}
    p_order = {p: i for i, p in enumerate(PROVIDERS)}
    merged.sort(key=lambda r: (r.get("device", ""), r.get("device_name", ""), wl_order.get(r.get("workload"), 99),
                               p_order.get(r.get("provider"), 99)))
    same_dev = [r for r in merged if r.get("device") == device.type and r.get("device_name") == meta["device_name"]
                and r.get("quick", False) == args.quick]
    goals = evaluate_goals(same_dev)
    print(f"\ngoals on {device.type} (reported, not asserted)"
          + (f"; judged on this run's rows plus rows kept from earlier runs in {out_path.name}" if kept else ""))
    for g in goals:
        print(f"  [{g['status']:4s}] {g['scope']}: {g['goal']} -- {g['detail']}")
    if args.quick:
        print("  (quick sizes: the goals are stated for the full sizes)")

    C.pressure_note(rows, device, "Solvers made of many small ops suffer most (each parallel region can stall "
                    "for a scheduler tick)")

    C.write_results(out_path, benchmark="bench_solvers",
                    description="ODE solvers side by side: overhead per evaluation, NFE, end-to-end time (see bench_solvers.py)",
                    run_ts=run_ts, device=device, meta=meta, elapsed=elapsed, goals=goals, merged=merged,
                    n_new=len(rows), kept=kept)
    return 0


if __name__ == "__main__":
    sys.exit(main())
