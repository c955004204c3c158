"""Reference sets across ``torch.distributed`` ranks.

A data-parallel training step sees only its own batch, but the field's target is better (lower variance, closer
to the population field) with a larger reference set. :func:`gather_reference` concatenates every rank's
reference rows, in rank order, so each rank can compute its targets against the global set::

    ref = fastflow.distributed.gather_reference(x0)          # (sum of the ranks' batches, *shape) on every rank
    x, z = fastflow.pfgm.perturb(x0)
    target = fastflow.pfgm.target(x, z, ref)                  # the same rows as one process with the whole batch

Works with any backend that implements all_gather: NCCL (CUDA tensors), gloo (CPU tensors). The ranks may hold
different numbers of rows (padded to the largest for the collective, then trimmed).

Memory per rank: the global set, R_total x d x (bytes per element), plus a padded copy of the same size during the
gather (e.g. 8 ranks x 128 CIFAR images in float32: 8 x 128 x 3072 x 4 B = 12.6 MB, twice during the call); the
field then streams over it in O(B x C + (B + R_total) x d) (README: Backends). The result carries no autograd
history (targets are computed without gradients).
"""
from __future__ import annotations

import torch

from ._core import validate as V

__all__ = ["gather_reference"]

_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def gather_reference(ref: torch.Tensor, group: torch.distributed.ProcessGroup | None = None) -> torch.Tensor:
    """Concatenate every rank's reference rows, in rank order.

    Args:
        ref: (R_k, *shape) this rank's rows (R_k may differ between ranks and may be 0; shape and dtype may not).
        group: the process group (default: the world).

    Returns:
        (sum_k R_k, *shape) on ref's device, in ref's dtype, identical on every rank.

    Raises:
        RuntimeError: torch.distributed is not initialised.
        ValueError: the ranks disagree on the per-row shape or the dtype (raised on every rank, so none hangs).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("gather_reference needs torch.distributed: call torch.distributed.init_process_group "
                           "first (or pass the local reference set directly on a single process)")
    if not isinstance(ref, torch.Tensor) or ref.dim() < 1:
        raise TypeError(f"ref must be a tensor of shape (R, *shape); got {getattr(ref, 'shape', type(ref))}")
    if ref.dtype not in _DTYPES:
        raise ValueError(f"ref must be a floating tensor ({', '.join(map(str, _DTYPES))}); got {ref.dtype}")
    rank_shape = tuple(ref.shape[1:])
    if len(rank_shape) > 8:
        raise ValueError(f"ref may have at most 8 per-row dimensions; got {len(rank_shape)}")
    world = dist.get_world_size(group)
    finite = ref.numel() == 0 or V.all_finite(ref)
    if world == 1:
        if not finite:
            raise ValueError("ref contains NaN or inf")
        return ref.detach()
    # one small gather first: rows, dtype, finiteness and per-row shape of every rank, checked identically on every
    # rank, so that a bad input raises everywhere instead of leaving the other ranks waiting in the collective
    meta = torch.tensor([ref.shape[0], _DTYPES.index(ref.dtype), int(finite), len(rank_shape), *rank_shape,
                         *([0] * (8 - len(rank_shape)))], dtype=torch.int64, device=ref.device)
    metas = [torch.empty_like(meta) for _ in range(world)]
    dist.all_gather(metas, meta, group=group)
    metas = [m.tolist() for m in metas]
    if len({(m[1], *m[3:]) for m in metas}) != 1:
        seen = [f"rank {k}: shape {tuple(m[4:4 + m[3]])}, {_DTYPES[m[1]]}" for k, m in enumerate(metas)]
        raise ValueError("gather_reference: the ranks' reference sets differ in per-row shape or dtype (" +
                         "; ".join(seen) + ")")
    bad = [k for k, m in enumerate(metas) if not m[2]]
    if bad:
        raise ValueError(f"gather_reference: ref contains NaN or inf on rank(s) {bad}")
    sizes = [m[0] for m in metas]
    most = max(sizes)
    local = ref.detach().contiguous()
    if local.shape[0] < most:
        local = torch.cat((local, local.new_zeros(most - local.shape[0], *rank_shape)))
    parts = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(parts, local, group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])
