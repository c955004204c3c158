"""The demo's metrics: sliced Wasserstein distance and memorisation, with their baselines."""
from __future__ import annotations

import torch


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
