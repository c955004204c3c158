"""PFGM's recipe (MATH.md §5), drop-in for the official implementation's training target.

The official code builds a [B, R, d+1] tensor for the target (6.4 GB at B=128, R=4096, d=3072);
:func:`target` streams over the reference set instead, in O((B + R) d) memory.
"""
from __future__ import annotations

import math
import numbers

import torch

from . import _validate as V
from .families import Poisson


def target(x, z, ref, *, gamma: float = 5.0, backend=None, precision="ieee", chunk_size=None):
    """PFGM's normalised empirical Poisson field: sqrt(d) * E / (||E|| + gamma), with E = (xbar - x, -z).

    E is the field of the augmented points y = (x, z) from the sources (ref_j, 0) with weights
    ||y - (ref_j, 0)||^-(d+1), i.e. the Poisson(D=1) posterior mean xbar at t = z.

    Args:
        x: (B, *shape) perturbed points.  z: float or (B,) tensor > 0, their augmented coordinate.
        ref: (R, *shape) the reference batch (in PFGM training, the whole batch, x's sources included).
        gamma: the official normalisation constant (5).
        backend, precision, chunk_size: as :meth:`fastflow.Poisson.posterior_mean`.

    Returns:
        (B, d+1) tensor, d = prod(shape); the last column is the z part.
    """
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    fam = Poisson(D=1)
    x2, zz, xbar, _, _, dtype = fam._field(x, z, ref, backend, precision, chunk_size, t_name="z")
    B, d = x2.shape
    E = torch.empty(B, d + 1, dtype=xbar.dtype, device=xbar.device)
    torch.sub(xbar, x2.to(xbar.dtype), out=E[:, :d])
    E[:, d] = -zz
    E.mul_(math.sqrt(d) / (torch.linalg.vector_norm(E, dim=1, keepdim=True) + gamma))
    return E.to(dtype)


__all__ = ["target"]
