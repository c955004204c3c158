"""Faithful ports of official algorithms, kept as references of record for tests and benchmarks.

Not for use in training: these materialise [B, R, d+1] tensors exactly as the originals do.
"""
from __future__ import annotations

import numpy as np
import torch


def pfgm_target_official(x: torch.Tensor, z: torch.Tensor, ref: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """The training target of PFGM's official code (losses.py, ``config.training.sde == 'poisson'``), ported.

    It works on augmented vectors (x, z) against (ref_j, 0), weights each source by the min-normalised power
    (min_k R_k / (R_j + 1e-7))^(d+1), normalises with a +1e-7 in the denominator, sums the differences, and
    rescales to sqrt(d) * E / (||E|| + gamma). Memory: a [B, R, d+1] difference tensor, as in the original.

    Args:
        x: (B, *shape) perturbed samples.  z: (B,) their augmented coordinate.  ref: (R, *shape) the batch.

    Returns:
        (B, d+1) target in x's dtype.
    """
    B = x.shape[0]
    data_dim = x[0].numel()
    perturbed_samples_vec = torch.cat((x.reshape(B, -1), z.reshape(B, 1).to(x.dtype)), dim=1)
    real_samples_vec = torch.cat(
        (ref.reshape(len(ref), -1), torch.zeros((len(ref), 1), dtype=ref.dtype, device=ref.device)), dim=1)
    gt_distance = torch.sum((perturbed_samples_vec.unsqueeze(1) - real_samples_vec) ** 2, dim=[-1]).sqrt()
    # For numerical stability, the official code divides each row by its minimum distance
    distance = torch.min(gt_distance, dim=1, keepdim=True)[0] / (gt_distance + 1e-7)
    distance = distance ** (data_dim + 1)
    distance = distance[:, :, None]
    coeff = distance / (torch.sum(distance, dim=1, keepdim=True) + 1e-7)
    diff = -(perturbed_samples_vec.unsqueeze(1) - real_samples_vec)
    gt_direction = torch.sum(coeff * diff, dim=1)
    gt_direction = gt_direction.view(gt_direction.size(0), -1)
    gt_norm = gt_direction.norm(p=2, dim=1)
    gt_direction /= gt_norm.view(-1, 1) + gamma
    gt_direction *= np.sqrt(data_dim)
    return gt_direction


def pfgm_perturb_official(x0: torch.Tensor, M: float = 291, tau: float = 0.03, sigma_end: float = 0.01,
                          restrict_M: bool = True, generator: torch.Generator | None = None):
    """PFGM's training perturbation as the official code draws it: a reference of record for two-sample KS tests.

    Ported line by line from github.com/Newbeeer/Poisson_flow: ``m = torch.rand(B) * sde.M`` in losses.py's
    poisson loss, then ``forward_pz`` in models/utils_poisson.py. Random draws come in the official order
    (m; z; the restricted m; the noise whose norm sets the radius; the Gaussian whose direction is used).
    Changes that leave the law alone: every draw takes ``generator`` and x0's device and dtype, z is (B,) rather
    than (B, 1, 1, 1), and ``.squeeze()`` is a reshape (so that B = 1 works).

    Args:
        x0: (B, *shape) data points (the official ``samples_batch``).  M, tau, sigma_end, restrict_M: the official
        config.training.M, config.training.tau, config.model.sigma_end and config.training.restrict_M.

    Returns:
        x: (B, *shape) perturbed points; z: (B,) their augmented coordinate (the official output's last column).
    """
    samples_batch = x0
    dev, dt = x0.device, x0.dtype
    m = torch.rand((samples_batch.shape[0],), device=dev, dtype=dt, generator=generator) * M
    z = torch.randn((len(samples_batch),), device=dev, dtype=dt, generator=generator) * sigma_end
    z = z.abs()
    # Confine the norms of perturbed data (Appendix B.1.1 of the PFGM paper): the test is on |z|
    if restrict_M:
        idx = (z < 0.005).reshape(-1)
        num = int(idx.int().sum())
        restrict_m = int(M * 0.7)
        m[idx] = torch.rand((num,), device=dev, dtype=dt, generator=generator) * restrict_m
    data_dim = samples_batch[0].numel()
    multiplier = (1 + tau) ** m
    noise = torch.randn(samples_batch.shape, device=dev, dtype=dt, generator=generator)
    noise = noise.reshape(len(samples_batch), -1) * sigma_end
    norm_m = torch.norm(noise, p=2, dim=1) * multiplier
    # Perturb z
    perturbed_z = z.reshape(-1) * multiplier
    # Sample uniform angle
    gaussian = torch.randn(len(samples_batch), data_dim, device=dev, dtype=dt, generator=generator)
    unit_gaussian = gaussian / torch.norm(gaussian, p=2, dim=1, keepdim=True)
    # Construct the perturbation for x
    perturbation_x = unit_gaussian * norm_m[:, None]
    perturbation_x = perturbation_x.view_as(samples_batch)
    perturbed_x = samples_batch + perturbation_x
    return perturbed_x, perturbed_z
