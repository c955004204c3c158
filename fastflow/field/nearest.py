"""Streaming k-nearest neighbours in Euclidean distance: :func:`nearest` (``fastflow.nearest``).

The squared distance ||x_i - y_j||^2 = ||x_i - c||^2 + ||y_j - c||^2 - 2 (x_i - c).(y_j - c) is formed per chunk of
the reference set by one GEMM, on data centred on the reference mean c as the field engine forms its distances
(:func:`fastflow.field.torch_backend.centring`, which also skips the centring on the CPU where it would not pay).
A row's ranking needs only m_ij = ||y_j - c||^2 - 2 (x_i - c).(y_j - c) (its ||x_i - c||^2 is a constant of the
row), so the candidates are the smallest m; the running candidates are merged with each chunk's by
``torch.topk`` (each chunk's own k smallest, then those of the union), ties going to the lower index. A few spare
candidates beyond k are kept, and the distances of all of them are then recomputed by direct differences
x_i - y_j accumulated in float64: the returned distances carry no GEMM cancellation, and near-ties that the GEMM's
rounding would misorder are ranked by the exact distances.

Memory: O((B + R) d + B C) with C reference rows per chunk (from the field's memory budget,
``FASTFLOW_FIELD_BUDGET_MB``); neither a B x R x d tensor nor (when R exceeds C) the B x R matrix is ever formed.
"""
from __future__ import annotations

import torch

from .._core import dispatch, nvtx
from .._core import validate as V
from .torch_backend import centring, chunk, chunk_rows

__all__ = ["nearest"]

#: candidates kept beyond k, re-ranked by the exact distances (near-ties within the GEMM's rounding)
SPARE = 8


def _smallest(vals: torch.Tensor, key_of, k: int) -> torch.Tensor:
    """Positions (B, k) of the k smallest of ``vals`` (B, n) per row, ties at the k-th value going to the smallest
    ``key_of(dtype)`` (a (n,) or (B, n) tensor of distinct integers: the reference indices): every entry below the
    k-th value, then the lowest keys among those equal to it."""
    thr = vals.topk(k, dim=1, largest=False, sorted=False).values.amax(dim=1, keepdim=True)
    # key: -1 for the entries that must be in, the index for the tied ones, +inf for the rest
    key = torch.where(vals == thr, key_of(), float("inf"))
    key.masked_fill_(vals < thr, -1.0)
    return key.topk(k, dim=1, largest=False, sorted=False).indices


def _merge(vals, idx, m, start: int, kc: int):
    """The running candidates (vals, idx) (B, <= kc) merged with the chunk's m (B, C) of reference rows start..:
    the chunk's own kc smallest first (no (B, C) index tensor), then those of the union."""
    C = m.shape[1]
    kk = min(kc, C)
    # the chunk's positions as exact integers in a float dtype (float32 holds integers up to 2^24)
    kdt = m.dtype if C <= 2**24 else torch.float64
    pos = _smallest(m, lambda: torch.arange(C, device=m.device, dtype=kdt), kk)
    vals = torch.cat((vals, m.gather(1, pos)), dim=1)
    idx = torch.cat((idx, pos + start), dim=1)
    if vals.shape[1] <= kc:
        return vals, idx
    pos = _smallest(vals, lambda: idx.to(torch.float64), kc)
    return vals.gather(1, pos), idx.gather(1, pos)


def _exact_distances(x: torch.Tensor, ref: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """||x_i - ref_idx[i, m]|| (B, K) float64 by direct differences, one (B, d) float64 buffer per column."""
    x64 = x.to(torch.float64)
    cols = [torch.linalg.vector_norm(x64 - ref.index_select(0, idx[:, m]).to(torch.float64), dim=1)
            for m in range(idx.shape[1])]
    return torch.stack(cols, dim=1) if cols else x64.new_zeros(x.shape[0], 0)


@nvtx.annotate("fastflow.nearest")
@V.checked
def nearest(x: torch.Tensor, ref: torch.Tensor, k: int = 1, *,
            chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest reference points of each row of x in Euclidean distance, streamed over ref.

    Args:
        x: (B, *shape) query points (any strides; B = 0 is allowed).
        ref: (R, *shape) reference points, R >= 1, with x's per-point shape, dtype and device.
        k: neighbours per row, 1 <= k <= R.
        chunk_size: reference rows per streaming step (a positive int; default from the field's memory budget).

    Returns:
        (distances, indices): distances (B, k) float64, ascending along each row, each recomputed by a direct
        difference ||x_i - ref_j|| accumulated in float64; indices (B, k) int64 into ref. Equal distances go to
        the lower index. The selection is by float32 GEMMs for float32/float16/bfloat16 input (float64 for
        float64), with SPARE = 8 extra candidates re-ranked exactly: only neighbours whose squared distances are
        within the GEMM's rounding (~eps ||x - c||^2) of several others can be misordered. Distances are
        differentiable in x and ref (indices are constants).

    Raises:
        TypeError: x or ref is not a floating-point tensor, k is not an int.
        ValueError: mismatched per-point shapes, dtypes or devices, an empty ref, k < 1 or k > R, NaN or inf.
    """
    x2, ref2 = V.points_and_ref(x, ref)
    B, d = x2.shape
    R = ref2.shape[0]
    k = V.count("k", k, minimum=1)
    if k > R:
        raise ValueError(f"k must be <= R, the number of reference points: got k = {k} and R = {R}")
    chunk_size = V.chunk_size("chunk_size", chunk_size)
    if B == 0:
        return (torch.zeros(0, k, dtype=torch.float64, device=x2.device),
                torch.zeros(0, k, dtype=torch.int64, device=x2.device))
    cdt = dispatch.compute_dtype(x2.dtype)
    kc = min(R, k + SPARE)
    C = chunk_size or chunk_rows(B, d, torch.finfo(cdt).bits // 8)
    with torch.no_grad():
        xd, refd = x2.detach(), ref2.detach()
        c, xc, _, yn_raw = centring(xd, refd, torch.ones(B, dtype=cdt, device=x2.device), cdt)
        vals = torch.zeros(B, 0, dtype=cdt, device=x2.device)
        idx = torch.zeros(B, 0, dtype=torch.int64, device=x2.device)
        with dispatch.fp32_matmul_precision("ieee", x2.device):
            for start in range(0, R, C):
                yc, yn = chunk(refd, start, C, c, yn_raw, cdt)
                m = torch.addmm(yn[None, :], xc, yc.t(), alpha=-2.0)  # (B, C): ||y - c||^2 - 2 (x - c).(y - c)
                vals, idx = _merge(vals, idx, m, start, kc)
        # re-rank the candidates by their exact distances, ties by index: sort by index, then stably by distance
        idx = idx.sort(dim=1).values
        dist = _exact_distances(xd, refd, idx)
        order = dist.argsort(dim=1, stable=True)[:, :k]
        idx = idx.gather(1, order)
        dist = dist.gather(1, order)
    if torch.is_grad_enabled() and (x2.requires_grad or ref2.requires_grad):
        dist = _exact_distances(x2, ref2, idx)
    return dist, idx
