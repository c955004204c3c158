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
- ``field_gap`` (and ``field_gap.png``): :func:`fastflow.evaluate.field_gap` of the trained network at 8 noise
  levels, 64 training and 64 held-out digits each: its loss above the exact loss floor (the excess: what the network
  could still gain), beside the exact field's own (0 on training digits, large on held-out ones: it memorises).
  The floor is the posterior variance under the training digits' empirical law, so a held-out excess below 0
  means the network denoises new digits better than the exact field of the training digits can (it generalises).
  The denoiser against the posterior mean for pfgmpp / stf (in sigma), the velocity against the exact velocity
  for rf; skipped for pfgm, whose network predicts PFGM's normalised (d+1)-field, neither a denoiser nor a
  velocity of the digits.
"""
from __future__ import annotations

import importlib.util
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..._core import validate as V
from ...evaluate import field_gap
from ...families import Gaussian
from ...samplers import family_sample
from .data import load_digits
from .metrics import field_gap_summary, gaussian_baseline, memorisation, sliced_wasserstein
from .plots import save_field_gap, save_plots
from .recipes import RECIPES

METHODS = ("pfgmpp", "stf", "pfgm", "rf")
#: what the demo imports beyond fastflow's own dependencies: checked before any work, so that a missing one does
#: not surface after the whole training run (module name -> pip package)
OPTIONAL = {"sklearn": "scikit-learn", "matplotlib": "matplotlib"}


def require_optional() -> None:
    """Raise ImportError naming the packages to install when the demo's optional dependencies are missing."""
    missing = [pkg for mod, pkg in OPTIONAL.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise ImportError(f"fastflow demo needs {' and '.join(missing)} (the bundled digits and the plots): "
                          f"pip install {' '.join(missing)}, or install fastflow with the demo extra: "
                          "pip install --no-build-isolation -e \".[demo]\"")


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
    require_optional()
    device = V.device("device", cfg.device)
    from tqdm.auto import tqdm

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
    gap = recipe_gap(recipe, train, test, torch.Generator(device=device).manual_seed(cfg.seed + 2))
    metrics = {
        "method": cfg.method,
        "swd": sliced_wasserstein(samples, test),
        "swd_train_digits": sliced_wasserstein(train, test),
        "swd_gaussian": sliced_wasserstein(gaussian_baseline(train, cfg.n_samples, cpu), test),
        **memorisation(samples, train, test),
        "exact_field_baseline": {k: v for k, v in memorisation(oracle, train, test).items()
                                 if k in ("nn_ratio", "copies")},
        "field_gap": gap,
        "nfe_per_sample": float(nfe.double().mean()),
        "final_loss_ema": sum(losses[-100:]) / min(100, len(losses)),
        "train_seconds": round(train_s, 2),
        "sample_seconds": round(sample_s, 2),
        "config": asdict(cfg),
        "torch": torch.__version__,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    save_plots(out, samples, test, losses, cfg.method, metrics)
    if "skipped" not in gap:
        save_field_gap(out, gap, cfg.method)
    return metrics


#: sources per set (training, held-out) and per noise level in the field-gap measurement
GAP_N = 64


def recipe_gap(recipe, train: torch.Tensor, test: torch.Tensor, gen: torch.Generator) -> dict:
    """:func:`fastflow.evaluate.field_gap` of the trained network and of the exact field (the memorising
    baseline), over the training digits, with held-out digits; the JSON-ready summary of
    :func:`.metrics.field_gap_summary` with the baseline under ``"exact_field"``."""
    spec = recipe.gap_model()
    if spec is None:
        return {"skipped": "the pfgm network predicts PFGM's normalised (d+1)-field, neither a denoiser nor a "
                           "velocity of the digits"}
    family, model, target, ts, t_axis, t_name = spec
    field = family.velocity if target == "velocity" else family.posterior_mean
    seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device))
    out = {}
    for key, fn in (("network", model), ("exact_field", lambda x, t: field(x, t, train))):
        g = torch.Generator(device=gen.device).manual_seed(seed)  # the same sources and draws for both
        out[key] = field_gap_summary(field_gap(fn, family, train, ts, n=GAP_N, held_out=test, target=target,
                                               generator=g), t_axis, t_name)
    return {**out["network"], "exact_field": {k: out["exact_field"][k] for k in ("train", "held_out")}}
