"""The demo's metrics: sliced Wasserstein distance and memorisation, with their baselines."""
from __future__ import annotations

import torch

from ...field.nearest import nearest


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
    """Distances (n,) from each row of x to its nearest and second-nearest training rows, float64
    (:func:`fastflow.nearest`: streamed over the training rows, each distance by a direct difference)."""
    two = nearest(x.double().cpu(), train.double().cpu(), 2)[0]
    return two[:, 0], two[:, 1]


def field_gap_summary(gap: dict, t_axis: torch.Tensor, t_name: str) -> dict:
    """The JSON-ready part of :func:`fastflow.evaluate.field_gap`'s result: per source set, the per-t lists of
    excess, its standard error, mse, loss floor, field mse and median relative error; ``t`` in the recipe's own
    noise level ``t_name`` (sigma for the EDM recipes)."""
    keys = ("excess", "excess_stderr", "mse", "loss_floor", "field_mse", "rel_error")
    out = {"t": [float(v) for v in t_axis], "t_name": t_name, "target": gap["target"], "n": gap["n"]}
    for name in ("train", "held_out"):
        out[name] = {k: [float(v) for v in gap[name][k]] for k in keys}
    return out


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
