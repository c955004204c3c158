"""Launchers of the Triton field kernels (``fastflow.kernels.field``).

Per chunk of N reference rows: ``_field_logits_kernel`` writes the (B, N) relative log-weights and per-tile
partial stats; a few (B, n_tiles) torch ops merge them into the running minimum distance and sums;
``_field_wsum_kernel`` rescales the (B, d) fp32 accumulator and adds the chunk's weighted sum.
Extra memory is O(B*N + B*d + d).

The launcher is registered as the operator ``torch.ops.fastflow.field_triton`` with
:func:`torch.library.triton_op`, its kernels launched through :func:`torch.library.wrap_triton`. In eager mode
the op runs the launcher as plain Python (the kernels launch directly). Under ``torch.compile`` the op is
opaque to Dynamo (fake outputs come from running the launcher on fake tensors), and AOTAutograd then
decomposes it into the torch ops and the two Triton kernel calls, which Inductor compiles as user-defined
Triton kernels beside its own. The body therefore reads no tensor values on the host.

The Triton interpreter (TRITON_INTERPRET=1, the CPU tests) runs the op eagerly, but cannot trace it: its kernels
are not JITFunctions, which ``wrap_triton`` needs (torch 2.11 rejects them; later versions hand them back
unwrapped, and they would read fake tensors' data).
"""
from __future__ import annotations

import torch
import triton
from torch.library import triton_op, wrap_triton
from triton.runtime.jit import JITFunction

from .._core import config
from ..kernels.field import _field_logits_kernel, _field_wsum_kernel
from .logweights import gap_log_weight, split_distance
from .torch_backend import exact_log_norm

#: Tile sizes. On a GPU the IEEE-fp32 dot runs on the FMA units; 64x64 output tiles with 32-wide k steps
#: keep the register footprint of a 4-warp program at 64*64/128 = 32 accumulators per thread.
GPU_TILES = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, BLOCK_D=64, num_warps=4, num_stages=3)
#: Under the interpreter each program costs ~2.5 ms per loop step whatever its size: big tiles, few programs.
INTERPRET_TILES = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=256, BLOCK_D=256)

#: default rows of the reference set per chunk (the (B, N) log-weight buffer is the only O(B*N) temporary)
DEFAULT_CHUNK = 16384


#: TRITON_INTERPRET=1 at decoration: the kernels are the interpreter's, which launch as they are
_INTERPRETED = not isinstance(_field_logits_kernel, JITFunction)


def _tiles(device: torch.device):
    cfg = dict(INTERPRET_TILES if device.type == "cpu" else GPU_TILES)
    cfg.update(config.triton_tiles())  # e.g. FASTFLOW_TRITON_TILES="BLOCK_M=16,BLOCK_K=1024" in tests
    return cfg


def field_triton(x, ref, t, a, kind, p, q, *, precision="ieee", chunk_size=None):
    """Triton posterior mean. x: (B, d), ref: (R, d) float32/16/bf16; t, a: (B,) float32.

    Returns (xbar (B, d), log_norm (B,), ess (B,)) in float32.
    """
    return torch.ops.fastflow.field_triton(x, ref, t, a, int(kind), float(p), float(q), precision, chunk_size)


@triton_op("fastflow::field_triton", mutates_args=())
def _field_triton_op(x: torch.Tensor, ref: torch.Tensor, t: torch.Tensor, a: torch.Tensor, kind: int, p: float,
                     q: float, precision: str, chunk_size: int | None) -> tuple[torch.Tensor, torch.Tensor,
                                                                                 torch.Tensor]:
    """:func:`field_triton` as an operator. Its body must trace on fake tensors: no host reads of values, and
    views by ``narrow`` / ``unsqueeze`` rather than ``[]`` (indexing a fake CUDA tensor needs a CUDA build of
    torch, which would keep the CPU tests from tracing it)."""
    B, d = x.shape
    R = ref.shape[0]
    dev = x.device
    f32 = torch.float32
    cfg = _tiles(dev)
    BM, BN, BK, BD = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"], cfg["BLOCK_D"]
    launch = {k: cfg[k] for k in ("num_warps", "num_stages") if k in cfg}
    x = x.contiguous()
    ref = ref.contiguous()
    t = t.to(f32).contiguous()
    a = a.to(f32).contiguous()
    c = torch.mean(ref, dim=0, dtype=f32)
    N = min(R, chunk_size or DEFAULT_CHUNK)
    n_tiles = triton.cdiv(N, BN)
    rel = torch.empty(B, N, dtype=f32, device=dev)
    sp = torch.empty(B, n_tiles, dtype=f32, device=dev)
    jp = torch.empty(B, n_tiles, dtype=torch.int32, device=dev)
    lp = torch.empty_like(sp)
    l2p = torch.empty_like(sp)
    out = torch.zeros(B, d, dtype=f32, device=dev)
    xn = torch.empty(B, dtype=f32, device=dev)  # ||x_i - a_i c||^2, written by the logits kernel
    mmin = torch.full((B,), float("inf"), dtype=f32, device=dev)
    jmin = torch.zeros(B, dtype=torch.int64, device=dev)
    l = torch.zeros(B, dtype=f32, device=dev)
    l2 = torch.zeros(B, dtype=f32, device=dev)
    if _INTERPRETED:
        logits_kernel, wsum_kernel = _field_logits_kernel, _field_wsum_kernel
    else:  # spelled out (not through a helper) so that torch finds the kernels for its compile-cache key
        logits_kernel, wsum_kernel = wrap_triton(_field_logits_kernel), wrap_triton(_field_wsum_kernel)
    for start in range(0, R, N):
        y = ref.narrow(0, start, min(N, R - start))
        n = y.shape[0]
        nt = triton.cdiv(n, BN)
        logits_kernel[(triton.cdiv(B, BM), nt)](
            x, y, c, t, a, rel, xn, sp, jp, lp, l2p,
            B, n, d, x.stride(0), y.stride(0), rel.stride(0), sp.stride(0),
            float(p), float(q),
            KIND=kind, PRECISION=precision, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, **launch)
        # merge the per-tile partial stats into the running ones (B x n_tiles, negligible)
        mt, lt, l2t = sp.narrow(1, 0, nt), lp.narrow(1, 0, nt), l2p.narrow(1, 0, nt)
        m_chunk, tile = mt.min(dim=1)
        m_new = torch.minimum(mmin, m_chunk)
        j_chunk = jp.narrow(1, 0, nt).gather(1, tile.unsqueeze(1)).squeeze(1).long() + start
        jmin = torch.where(m_chunk < mmin, j_chunk, jmin)
        g_old, s0 = split_distance(xn, mmin, m_new)
        alpha = torch.where(torch.isinf(mmin), torch.zeros_like(mmin),
                            torch.exp(gap_log_weight(g_old, s0, t, kind, p, q)))
        g_tile, _ = split_distance(xn.unsqueeze(1), mt, m_new.unsqueeze(1))
        shift = gap_log_weight(g_tile, s0.unsqueeze(1), t.unsqueeze(1), kind, p, q).contiguous()
        r = torch.exp(shift)
        l = l * alpha + (lt * r).sum(dim=1)
        l2 = l2 * alpha * alpha + (l2t * r * r).sum(dim=1)
        mmin = m_new
        wsum_kernel[(triton.cdiv(B, BM), triton.cdiv(d, BD))](
            rel, shift, alpha, y, out, B, n, d, rel.stride(0), shift.stride(0), y.stride(0), out.stride(0),
            PRECISION=precision, BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BD, **launch)
    return out / l.unsqueeze(1), exact_log_norm(x, ref, t, a, jmin, l, kind, p, q), l * l / l2
