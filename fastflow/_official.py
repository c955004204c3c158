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
