"""``fastflow demo``: train a small network on scikit-learn's bundled 8x8 digits with fastflow's targets, sample
it with fastflow's samplers, and report sample quality and memorisation honestly.

Recipes (``method``), each a denoiser or field network trained against a target averaged over a reference batch
(the training batch plus extra training digits), which has far less variance than the one-sample target:

- ``pfgmpp`` (default): PFGM++ with D = 128 (Xu et al. 2023). sigma ~ EDM's log-normal, r = sigma sqrt(D),
  x = x0 + perturbation of radius law Poisson(D); target ``fastflow.pfgmpp_target`` (the posterior mean over the
  reference batch); EDM preconditioning and loss weight; sampled by ``fastflow.edm_sample`` (Heun on the
  rho-schedule) from the Poisson(D) prior.
- ``stf``: the same with the Gaussian family and ``fastflow.stf_target`` (stable target field, Xu et al. 2023).
- ``pfgm``: PFGM (D = 1; Xu et al. 2022): ``fastflow.pfgm.perturb`` / ``target`` / ``prior`` / ``sample`` with
  ``fastflow.pfgm.hyperparameters`` of the digits; the network predicts the normalised (d+1)-field.
- ``rf``: rectified flow; the target is the exact empirical velocity of the reference batch
  (``RectifiedFlow().velocity``); sampled by ``fastflow.flow_sample`` (dopri5).

Metrics (``metrics.json``), all against 360 held-out digits the network never saw:

- ``swd``: sliced Wasserstein-2 distance (512 random directions, float64) between the samples and the held-out
  digits, beside two baselines: the training digits themselves (what real data scores: the floor), and a Gaussian
  fitted to the training digits (what matching mean and covariance alone scores).
- ``nn_ratio``: median distance from a sample to its nearest training digit, over the same median for held-out
  digits. About 1: samples sit as far from the training set as new data does; near 0: the samples copy it.
- ``copies``: the fraction of samples whose nearest training digit is 3x closer than the second nearest
  (Carlini et al. 2023's criterion), beside the same fraction for held-out digits.
- The exact empirical field of the training set (``fastflow.family_sample``, no network) is sampled too, as the
  memorising baseline: it lands on training digits (``nn_ratio`` ~ 0, ``copies`` ~ 1).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from . import pfgm as _pfgm
from .families import Gaussian, Poisson, RectifiedFlow
from .samplers import edm_sample, family_sample, flow_sample
from .targets import pfgmpp_target, stf_target

METHODS = ("pfgmpp", "stf", "pfgm", "rf")
SHAPE = (64,)  # 8x8 digits, flattened
N_TEST = 360


@dataclass
class DemoConfig:
    """Everything a run depends on (written into metrics.json)."""

    method: str = "pfgmpp"
    iters: int = 6000          # optimiser steps (~30 s on 2 CPU cores)
    batch: int = 256           # training batch
    ref: int = 1024            # reference batch for the target (includes the training batch)
    lr: float = 2e-3
    hidden: int = 256
    n_samples: int = 1000
    sample_steps: int = 18     # EDM schedule steps (pfgmpp, stf): 2 * steps - 1 evaluations
    D: float = 128.0           # pfgmpp's augmented dimensions
    device: str = "cpu"
    seed: int = 0
    out: str = "fastflow_demo"
    progress: bool = True


# ---------------------------------------------------------------------------------------------------- data


def load_digits(seed: int = 0, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 digits as (N, 64) float32 in [-1, 1], shuffled with ``seed`` and split into
    (train (1437, 64), test (360, 64))."""
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as e:  # pragma: no cover - the demo extra installs it
        raise ImportError("fastflow demo needs scikit-learn for its bundled digits: pip install scikit-learn") from e
    data = torch.as_tensor(_load().data, dtype=torch.float32) / 8.0 - 1.0
    perm = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(seed))
    data = data[perm].to(device)
    return data[N_TEST:], data[:N_TEST]


# --------------------------------------------------------------------------------------------------- network


class MLP(nn.Module):
    """x (B, d) and a per-sample noise input c (B,) -> (B, out): Fourier features of c, then residual SiLU
    layers."""

    def __init__(self, d: int, out: int, hidden: int = 256, n_freq: int = 32, depth: int = 3):
        super().__init__()
        self.register_buffer("freqs", torch.randn(n_freq, generator=torch.Generator().manual_seed(1234)) * 4.0)
        self.inp = nn.Linear(d + 2 * n_freq, hidden)
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, out)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        ang = c[:, None] * self.freqs[None, :]
        h = nn.functional.silu(self.inp(torch.cat((x, torch.sin(ang), torch.cos(ang)), dim=1)))
        for lin in self.blocks:
            h = h + nn.functional.silu(lin(h))
        return self.out(h)


class EDMDenoiser(nn.Module):
    """Karras et al. (2022)'s preconditioning: D(x, sigma) = c_skip x + c_out F(c_in x, log(sigma) / 4). For
    PFGM++ the same with sigma = r / sqrt(D) (the perturbation's per-coordinate scale)."""

    def __init__(self, d: int, hidden: int, sigma_data: float):
        super().__init__()
        self.net = MLP(d, d, hidden)
        self.sigma_data = sigma_data

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sd = self.sigma_data
        s = sigma.to(x.dtype)[:, None]
        c_skip = sd * sd / (s * s + sd * sd)
        c_out = s * sd / (s * s + sd * sd).sqrt()
        c_in = 1 / (s * s + sd * sd).sqrt()
        return c_skip * x + c_out * self.net(c_in * x, s[:, 0].log() / 4)


# ----------------------------------------------------------------------------------------------- recipes


class Recipe:
    """One training recipe: ``loss(x0, ref, gen)`` for a batch and its reference batch, and ``sample(n, gen)``."""

    def __init__(self, cfg: DemoConfig, train: torch.Tensor):
        self.cfg, self.d = cfg, train.shape[1]
        self.sigma_data = float(train.std())

    def parameters(self):
        return self.model.parameters()


class EDMRecipe(Recipe):
    """pfgmpp (Poisson(D), pfgmpp_target) and stf (Gaussian, stf_target): EDM's sigma law, weight and sampler."""

    P_MEAN, P_STD = -1.2, 1.2  # EDM's log-normal training sigmas
    SIGMA_MIN, SIGMA_MAX = 0.002, 80.0

    def __init__(self, cfg, train):
        super().__init__(cfg, train)
        self.D = cfg.D if cfg.method == "pfgmpp" else None
        self.family = Poisson(self.D) if self.D is not None else Gaussian()
        self.model = EDMDenoiser(self.d, cfg.hidden, self.sigma_data).to(train.device)

    def _t(self, sigma):  # the family's time: r = sigma sqrt(D) for Poisson(D), sigma for Gaussian
        return sigma * math.sqrt(self.D) if self.D is not None else sigma

    def loss(self, x0, ref, gen):
        B = x0.shape[0]
        sigma = (torch.randn(B, generator=gen, device=x0.device) * self.P_STD + self.P_MEAN).exp()
        x = self.family.perturb(x0, self._t(sigma), generator=gen)
        with torch.no_grad():
            target = (pfgmpp_target(x, sigma, ref, D=self.D) if self.D is not None else stf_target(x, sigma, ref))
        sd = self.sigma_data
        weight = (sigma * sigma + sd * sd) / (sigma * sd) ** 2
        return (weight[:, None] * (self.model(x, sigma) - target) ** 2).mean()

    @torch.no_grad()
    def sample(self, n, gen):
        x = self.family.prior(n, SHAPE, T=self._t(self.SIGMA_MAX), generator=gen, device=self.cfg.device)
        res = edm_sample(self.model, x, sigma_min=self.SIGMA_MIN, sigma_max=self.SIGMA_MAX,
                         steps=self.cfg.sample_steps, D=self.D, progress=self.cfg.progress)
        return res.x, res.nfe


class PFGMRecipe(Recipe):
    """PFGM (D = 1): the official perturbation, target and sampler, with the digits' own hyperparameters."""

    def __init__(self, cfg, train):
        super().__init__(cfg, train)
        self.hp = _pfgm.hyperparameters(train)
        self.model = MLP(self.d, self.d + 1, cfg.hidden).to(train.device)

    def _net(self, x, z):
        # the perturbed points spread ~z per coordinate: scale the input to O(1), as EDM's c_in does
        c_in = (self.sigma_data ** 2 + z.to(x.dtype) ** 2).rsqrt()[:, None]
        return self.model(c_in * x, z.log() / 4)

    def loss(self, x0, ref, gen):
        x, z = _pfgm.perturb(x0, M=self.hp["M"], generator=gen)
        with torch.no_grad():
            target = _pfgm.target(x, z, ref)
        return ((self._net(x, z) - target) ** 2).sum(dim=1).mean()

    @torch.no_grad()
    def sample(self, n, gen):
        x = _pfgm.prior(n, SHAPE, z_max=self.hp["z_max"], upper_norm=self.hp["upper_norm"], generator=gen,
                        device=self.cfg.device)
        res = _pfgm.sample(self._net, x, z_max=self.hp["z_max"], progress=self.cfg.progress)
        return res.x, res.nfe


class RFRecipe(Recipe):
    """Rectified flow with the exact empirical velocity of the reference batch as the target."""

    T_MIN = 1e-3

    def __init__(self, cfg, train):
        super().__init__(cfg, train)
        self.family = RectifiedFlow()
        self.model = MLP(self.d, self.d, cfg.hidden).to(train.device)

    def loss(self, x0, ref, gen):
        t = torch.rand(x0.shape[0], generator=gen, device=x0.device) * (1 - self.T_MIN) + self.T_MIN
        x = self.family.perturb(x0, t, generator=gen)
        with torch.no_grad():
            target = self.family.velocity(x, t, ref)
        return ((self.model(x, t) - target) ** 2).mean()

    @torch.no_grad()
    def sample(self, n, gen):
        x = self.family.prior(n, SHAPE, T=1.0, generator=gen, device=self.cfg.device)
        res = flow_sample(self.model, x, t_end=self.T_MIN, rtol=1e-4, atol=1e-4, progress=self.cfg.progress)
        return res.x, res.nfe


RECIPES = {"pfgmpp": EDMRecipe, "stf": EDMRecipe, "pfgm": PFGMRecipe, "rf": RFRecipe}


# ------------------------------------------------------------------------------------------------- metrics


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_proj: int = 512, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance between two point clouds (n, d) and (m, d), in float64: the root mean over
    ``n_proj`` random unit directions of the squared W2 distance of the projections (compared at 256 common
    quantile levels, so n and m may differ)."""
    a, b = a.double().cpu(), b.double().cpu()
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], n_proj, generator=g, dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    q = (torch.arange(256, dtype=torch.float64) + 0.5) / 256
    pa = torch.quantile(a @ dirs, q, dim=0)
    pb = torch.quantile(b @ dirs, q, dim=0)
    return float(((pa - pb) ** 2).mean().sqrt())


def nearest_two(x: torch.Tensor, train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances (n,) from each row of x to its nearest and second-nearest training rows, float64."""
    dist = torch.cdist(x.double().cpu(), train.double().cpu())
    two = dist.topk(2, dim=1, largest=False).values
    return two[:, 0], two[:, 1]


def memorisation(samples: torch.Tensor, train: torch.Tensor, test: torch.Tensor) -> dict:
    """nn_ratio and copies (module docstring) of the samples, with the held-out digits' copies for scale."""
    s1, s2 = nearest_two(samples, train)
    t1, t2 = nearest_two(test, train)
    return {"nn_ratio": float(s1.median() / t1.median()),
            "nn_median_samples": float(s1.median()), "nn_median_heldout": float(t1.median()),
            "copies": float((s1 < s2 / 3).double().mean()), "copies_heldout": float((t1 < t2 / 3).double().mean())}


def gaussian_baseline(train: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """n draws from the Gaussian with the training digits' mean and covariance (float64)."""
    x = train.double().cpu()
    mu = x.mean(0)
    cov = torch.cov(x.T) + 1e-6 * torch.eye(x.shape[1], dtype=torch.float64)
    L = torch.linalg.cholesky(cov)
    return mu + torch.randn(n, x.shape[1], generator=gen, dtype=torch.float64) @ L.T


# --------------------------------------------------------------------------------------------------- plots


def _grid(x: torch.Tensor, rows: int, cols: int):
    """(rows*cols, 64) in [-1, 1] -> a (rows*9-1, cols*9-1) image with 1-pixel gaps."""
    img = torch.full((rows * 9 - 1, cols * 9 - 1), -0.6)  # light gray gaps
    x = x[: rows * cols].detach().float().cpu().clamp(-1, 1).reshape(-1, 8, 8)
    for k in range(x.shape[0]):
        i, j = divmod(k, cols)
        img[i * 9:i * 9 + 8, j * 9:j * 9 + 8] = x[k]
    return img.numpy()


def save_plots(out: Path, samples, test, losses, method: str, metrics: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
    for ax, x, title in ((axes[0], samples, f"fastflow {method}: samples"), (axes[1], test, "held-out digits")):
        ax.imshow(_grid(x, 10, 10), cmap="gray_r", vmin=-1, vmax=1)
        ax.set_title(title)
        ax.axis("off")
    fig.suptitle(f"SWD to held-out {metrics['swd']:.3f} (train digits {metrics['swd_train_digits']:.3f}, "
                 f"fitted Gaussian {metrics['swd_gaussian']:.3f}); nearest-train ratio "
                 f"{metrics['nn_ratio']:.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "samples.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    it = torch.arange(1, len(losses) + 1)
    ax.plot(it, losses, lw=0.5, alpha=0.4, label="loss")
    ema, smooth = losses[0], []
    for v in losses:
        ema = 0.98 * ema + 0.02 * v
        smooth.append(ema)
    ax.plot(it, smooth, lw=1.5, label="EMA (0.98)")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss")
    ax.set_title(f"fastflow demo ({method})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------ run


def run(cfg: DemoConfig) -> dict:
    """Train, sample, measure, plot; returns the metrics (also written to ``cfg.out``/metrics.json)."""
    if cfg.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {cfg.method!r}")
    for name in ("iters", "batch", "ref", "n_samples", "sample_steps", "hidden"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if cfg.ref < cfg.batch:
        raise ValueError(f"ref ({cfg.ref}) must be >= batch ({cfg.batch}): the reference batch holds the batch")
    from tqdm.auto import tqdm

    device = torch.device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    train, test = load_digits(cfg.seed, device)
    if cfg.ref > train.shape[0]:
        raise ValueError(f"ref ({cfg.ref}) must be <= the {train.shape[0]} training digits")
    recipe = RECIPES[cfg.method](cfg, train)
    opt = torch.optim.Adam(recipe.parameters(), lr=cfg.lr)
    warm = max(1, cfg.iters // 20)  # linear warm-up over 5% of the steps, then a cosine decay to 0
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(i, cfg.iters) / cfg.iters)))
    losses = []
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.iters), desc=f"train {cfg.method}", disable=not cfg.progress, mininterval=0.5)
    for _ in bar:
        idx = torch.randperm(train.shape[0], generator=gen, device=device)[:cfg.ref]
        ref = train[idx]
        loss = recipe.loss(ref[:cfg.batch], ref, gen)
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise FloatingPointError(f"the training loss became {lv}; lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(lv)
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4g}", refresh=False)
    train_s = time.perf_counter() - t0

    recipe.model.eval()
    t0 = time.perf_counter()
    samples, nfe = recipe.sample(cfg.n_samples, gen)
    sample_s = time.perf_counter() - t0
    if not torch.isfinite(samples).all():
        raise FloatingPointError("the samples contain NaN or inf")
    cpu = torch.Generator().manual_seed(cfg.seed + 1)
    # the memorising baseline: the exact field of the training digits (no network), 200 samples on the CPU
    oracle = family_sample(Gaussian(), train.double().cpu(), 200, T=80.0, t_min=2e-3, rtol=1e-4, atol=1e-4,
                           generator=cpu).x
    metrics = {
        "method": cfg.method,
        "swd": sliced_wasserstein(samples, test),
        "swd_train_digits": sliced_wasserstein(train, test),
        "swd_gaussian": sliced_wasserstein(gaussian_baseline(train, cfg.n_samples, cpu), test),
        **memorisation(samples, train, test),
        "exact_field_baseline": {k: v for k, v in memorisation(oracle, train, test).items()
                                 if k in ("nn_ratio", "copies")},
        "nfe_per_sample": float(nfe.double().mean()),
        "final_loss_ema": sum(losses[-100:]) / min(100, len(losses)),
        "train_seconds": round(train_s, 2),
        "sample_seconds": round(sample_s, 2),
        "config": asdict(cfg),
        "torch": torch.__version__,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    save_plots(out, samples, test, losses, cfg.method, metrics)
    return metrics
