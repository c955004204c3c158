"""Launchers of the Triton step kernels (``fastflow.kernels.ode``): allocate, compute the grid, launch.

Each launch is one pass over the stage buffers: combine reads y and the stages with a nonzero coefficient and
writes out; the error norm reads y, y_new and the stages with a nonzero e_j and writes the (B,) norm, or, when the
rows alone are too few to fill the GPU (B = 1 at d = 196608), (B, n_splits) partial sums that one torch reduction
turns into the norm.

Not yet measured on a GPU: the tiles follow the memory-bound rule of thumb for H100 (1024 elements, 4 warps:
8 fp32 per thread, two 16-byte loads per stage). Benchmark before tuning.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ..kernels.ode import _rk_combine_kernel, _rk_error_norm_kernel

#: elements per program. On a GPU: 1024 with 4 warps. Under the interpreter each program costs ~2.5 ms per
#: stage whatever its size: big tiles, few programs.
GPU_TILE = 1024
INTERPRET_TILE = 8192


def _tiles(B: int, D: int, device: torch.device, block_d: int | None, block_b: int | None):
    """(BLOCK_B, BLOCK_D, num_warps): BLOCK_D covers d up to the tile size, the rest of the tile goes to rows."""
    tile = INTERPRET_TILE if device.type == "cpu" else GPU_TILE
    bd = block_d or min(triton.next_power_of_2(D), tile)
    bb = block_b or max(1, min(tile // bd, triton.next_power_of_2(B)))
    return bb, bd, max(1, min(4, bb * bd // 256))


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _check_rows(**tensors):
    for name, v in tensors.items():
        if v.stride(-1) != 1:
            raise ValueError(f"{name} must have contiguous columns (stride 1); got strides {tuple(v.stride())}")


def combine_triton(y: torch.Tensor, K: torch.Tensor, h: torch.Tensor, coeffs: Sequence[float], out: torch.Tensor,
                   *, block_d: int | None = None, block_b: int | None = None) -> torch.Tensor:
    """out = y + h sum_j coeffs[j] K[j]. y, out (B, d); K (S, B, d) of y's dtype, columns contiguous; h (B,).

    Returns out (filled in place).
    """
    B, D = y.shape
    _check_rows(y=y, K=K, out=out)
    h = h.contiguous()
    bb, bd, warps = _tiles(B, D, y.device, block_d, block_b)
    grid = (triton.cdiv(B, bb), triton.cdiv(D, bd))
    _rk_combine_kernel[grid](
        y, K, h, out, B, D, y.stride(0), K.stride(0), K.stride(1), out.stride(0),
        COEFFS=tuple(float(c) for c in coeffs), ACC=_acc_dtype(y.dtype), BLOCK_B=bb, BLOCK_D=bd,
        num_warps=warps)
    return out


def _column_splits(row_tiles: int, col_tiles: int, device: torch.device) -> int:
    """How many programs share a row tile's columns: 1 (no partial sums, one launch) when the row tiles alone give
    every SM ~4 programs, else enough splits to get there. Under the interpreter: 1 (fewest programs)."""
    if device.type != "cuda":
        return 1
    target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(col_tiles, triton.cdiv(target, row_tiles)))


def error_norm_triton(y: torch.Tensor, y_new: torch.Tensor, K: torch.Tensor, h: torch.Tensor,
                      e_coeffs: Sequence[float], rtol: float, atol: float, *, block_d: int | None = None,
                      block_b: int | None = None, splits: int | None = None) -> torch.Tensor:
    """Per-sample RMS of the scaled error. y, y_new (B, d); K (S, B, d), columns contiguous; h (B,).

    Returns (B,) in float64 for float64 states, else float32.
    """
    B, D = y.shape
    _check_rows(y=y, y_new=y_new, K=K)
    h = h.contiguous()
    bb, bd, warps = _tiles(B, D, y.device, block_d, block_b)
    row_tiles, col_tiles = triton.cdiv(B, bb), triton.cdiv(D, bd)
    n_split = min(col_tiles, splits or _column_splits(row_tiles, col_tiles, y.device))
    d_per_prog = triton.cdiv(col_tiles, n_split) * bd
    n_split = triton.cdiv(D, d_per_prog)
    cdt = torch.float64 if y.dtype == torch.float64 else torch.float32
    out = torch.empty(B, dtype=cdt, device=y.device) if n_split == 1 else \
        torch.empty(B, n_split, dtype=cdt, device=y.device)
    _rk_error_norm_kernel[(row_tiles, n_split)](
        y, y_new, K, h, out, B, D, d_per_prog, y.stride(0), y_new.stride(0), K.stride(0), K.stride(1),
        out.stride(0), COEFFS=tuple(float(c) for c in e_coeffs), RTOL=float(rtol), ATOL=float(atol),
        ACC=_acc_dtype(y.dtype), FINAL=n_split == 1, BLOCK_B=bb, BLOCK_D=bd, num_warps=warps)
    return out if n_split == 1 else out.sum(dim=1).div_(D).sqrt_()
