"""The ``reference`` backend: direct differences, obviously correct, meant to run in float64.

It materialises (b, R, d) differences for a block of b queries at a time, so it is O(b*R*d) in memory and
4x slower than the GEMM form; the tests compare every fast backend with it.
"""
from __future__ import annotations

import torch


def field_reference(x, ref, t, a, log_weight_fn, *, block_elems: int = 1 << 24):
    """x: (B, d), ref: (R, d), t, a: (B,); ``log_weight_fn(r2, t)`` -> log-weights, written from docs/math.md's table.

    Returns (xbar (B, d), log_norm (B,), ess (B,)) in x's dtype.
    """
    B, d = x.shape
    R = ref.shape[0]
    rows = max(1, block_elems // max(1, R * d))
    out, log_norm, ess = [], [], []
    for i in range(0, B, rows):
        xi, ti, ai = x[i:i + rows], t[i:i + rows], a[i:i + rows]
        diff = xi[:, None, :] - ai[:, None, None] * ref[None, :, :]       # (b, R, d)
        r2 = (diff * diff).sum(dim=-1)                                      # (b, R)
        ell = log_weight_fn(r2, ti[:, None])
        lse = torch.logsumexp(ell, dim=1)
        w = torch.exp(ell - lse[:, None])                                   # normalised weights
        out.append(w @ ref)
        log_norm.append(lse)
        ess.append(1.0 / (w * w).sum(dim=1))
    return torch.cat(out), torch.cat(log_norm), torch.cat(ess)
