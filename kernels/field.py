"""Triton kernels of the field engine (MATH.md §4): attention with a distance logit, in two passes per chunk.

1. ``_field_logits_kernel``: the distance GEMM x_c . y_c over d with the log-weight epilogue; it writes the
   (B, N) log-weights relative to each (row, column tile)'s smallest distance, and per (row, tile) the
   j-dependent part m = a^2 ||y||^2 - 2 a x.y of that distance (s = ||x||^2 + m is never rounded as a whole)
   and the partial sums of exp and exp^2 (the row max / log-sum-exp, never rounding l itself).
2. ``_field_wsum_kernel``: out = alpha * out + sum_j exp(l_ij - l_i*) y_j, the exponentials formed on the fly.

Dot products are IEEE fp32 unless the launcher passes PRECISION="tf32" or "bf16" (explicit opt-in).
"""
import triton
import triton.language as tl

# log-weight kinds, as in fastflow/field/logweights.py
POISSON: tl.constexpr = tl.constexpr(0)
GAUSSIAN: tl.constexpr = tl.constexpr(1)
TANH: tl.constexpr = tl.constexpr(2)
EXP: tl.constexpr = tl.constexpr(3)
LOG2: tl.constexpr = tl.constexpr(0.6931471805599453)
TINY: tl.constexpr = tl.constexpr(1.1754943508222875e-38)  # float32's smallest normal: clamps log s


@triton.jit
def _log1p(z):
    """log(1 + z) to a few ulp for z >= 0, inf included (Goldberg): log(u) * z / (u - 1), u = fl(1 + z)."""
    u = 1.0 + z
    exact = u == 1.0
    # past 2^24, z / (u - 1) is 1 in fp32; skipping it keeps z = inf (a far point) at log(u) = inf, not NaN
    big = z > 16777216.0
    return tl.where(exact, z, tl.where(big, tl.log(u), tl.log(u) * (z / tl.where(exact | big, 1.0, u - 1.0))))


@triton.jit
def _gap_log_weight(g, s0, t, KIND: tl.constexpr, p, q):
    """l(s0 + g, t) - l(s0, t) for g >= 0, never forming s or l (fastflow/field/logweights.py: gap_log_weight)."""
    if KIND == POISSON:
        rel = -p * _log1p(g / tl.maximum(t * t + s0, TINY))
    elif KIND == GAUSSIAN:
        rel = -p * ((g / t) / t)
    else:
        s = s0 + g
        r = tl.sqrt(s)
        r0 = tl.sqrt(s0)
        u = r / t
        # u - u0 from the gap: at small t, u ~ 1e3 and the difference of the rounded u's would lose 3 digits
        r_sum = r + r0
        du = tl.where(r_sum > 0.0, g / (t * tl.where(r_sum > 0.0, r_sum, 1.0)), 0.0)
        if KIND == TANH:
            # log sech^2(u) = -2 (u + log1p(e^{-2u}) - log 2): finite for every u >= 0
            d_log_dpsi = -2.0 * (du + _log1p(tl.exp(-2.0 * u)) - _log1p(tl.exp(-2.0 * (r0 / t))))
        else:
            d_log_dpsi = -du
        sc0 = tl.maximum(s0, TINY)
        num = tl.where(s0 >= TINY, g, tl.maximum(s, TINY) - TINY)
        # q = 0 (d = 1) must not meet log1p(inf) = inf (a far point next to an exact hit): 0 * inf is NaN
        log_ratio = tl.where(q == 0.0, 0.0, _log1p(num / sc0))
        rel = d_log_dpsi - q * log_ratio
    return rel


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr):
    if PRECISION == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    else:
        return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _field_logits_kernel(
    X, Y, CEN,              # x (B, D), y chunk (N, D), centre c (D,) fp32: distances use x - a c and y - c
    T, A,                   # t (B,), a (B,) fp32
    REL,                    # out: (B, N) fp32 l(s_ij) - l(s*_tile), s*_tile the tile's row minimum of s
    XN,                     # out: (B,) fp32 ||x_i - a_i c||^2 (written by the first column tile)
    SP, JP, LP, L2P,        # out: (B, n_col_tiles) fp32 m*_tile (s*_tile = XN + m*_tile), int32 its column,
                            #      sum exp(REL), sum exp(2 REL)
    B, N, D,                # sizes
    stride_xb, stride_yn,   # row strides of x and y (the columns are contiguous)
    stride_lb, stride_pb,   # row strides of LOGITS and of the partial-stat buffers
    p, q,                   # log-weight parameters (fp32)
    KIND: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = rm < B
    mask_n = rn < N
    rm64 = rm.to(tl.int64)  # row offsets in int64: N * D passes 2^31 at LSUN sizes (196608 * 16384)
    rn64 = rn.to(tl.int64)
    a = tl.load(A + rm, mask=mask_m, other=1.0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    xn = tl.zeros((BLOCK_M,), dtype=tl.float32)  # ||x_i - a_i c||^2, from the same rounded values as the dot
    yn = tl.zeros((BLOCK_N,), dtype=tl.float32)  # ||y_j - c||^2
    for k0 in range(0, D, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        mask_k = rk < D
        c = tl.load(CEN + rk, mask=mask_k, other=0.0)
        xt = tl.load(X + rm64[:, None] * stride_xb + rk[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        yt = tl.load(Y + rn64[:, None] * stride_yn + rk[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        # centre in fp32 before the dot: cancellation in ||x||^2 + ||y||^2 - 2 x.y scales with ||x||^2
        xt = xt.to(tl.float32) - a[:, None] * c[None, :]
        yt = yt.to(tl.float32) - c[None, :]
        acc = _dot(xt, tl.trans(yt), acc, PRECISION)
        xn += tl.sum(xt * xt, axis=1)
        yn += tl.sum(yt * yt, axis=1)
    t = tl.load(T + rm, mask=mask_m, other=1.0)
    # s = xn + m with m = a^2 yn - 2 a x.y; s is never rounded as a whole (xn ~ t^2 d far out at large t)
    m = (a * a)[:, None] * yn[None, :] - 2.0 * a[:, None] * acc
    m_tile, j_tile = tl.min(tl.where(mask_n[None, :], m, float("inf")), axis=1, return_indices=True)
    m = tl.where(mask_n[None, :], m, m_tile[:, None])  # padding columns: finite values, masked below
    s0_raw = xn + m_tile
    s0 = tl.maximum(s0_raw, 0.0)  # rounding can make a tiny distance negative; the clamp carries over to all s
    g = tl.maximum(m - m_tile[:, None] + tl.minimum(s0_raw, 0.0)[:, None], 0.0)
    rel = _gap_log_weight(g, s0[:, None], t[:, None], KIND, p, q)
    rel = tl.where(mask_n[None, :], rel, float("-inf"))
    tl.store(REL + rm64[:, None] * stride_lb + rn[None, :], rel, mask=mask_m[:, None] & mask_n[None, :])
    if pid_n == 0:
        tl.store(XN + rm, xn, mask=mask_m)
    e = tl.exp(rel)
    tl.store(SP + rm * stride_pb + pid_n, m_tile, mask=mask_m)  # every kind decreases in s: the max weight
    tl.store(JP + rm * stride_pb + pid_n, pid_n * BLOCK_N + j_tile, mask=mask_m)
    tl.store(LP + rm * stride_pb + pid_n, tl.sum(e, axis=1), mask=mask_m)
    tl.store(L2P + rm * stride_pb + pid_n, tl.sum(e * e, axis=1), mask=mask_m)


@triton.jit
def _field_wsum_kernel(
    REL, SHIFT, ALPHA,      # (B, N) from the logits kernel; (B, n_col_tiles) l(s*_tile) - l(s*); (B,) rescale
    Y, OUT,                 # y chunk (N, D) input dtype; out (B, D) fp32, updated in place
    B, N, D,
    stride_lb, stride_pb, stride_yn, stride_ob,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_m = rm < B
    mask_d = rd < D
    rm64 = rm.to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        mask_n = rn < N
        rel = tl.load(REL + rm64[:, None] * stride_lb + rn[None, :],
                      mask=mask_m[:, None] & mask_n[None, :], other=float("-inf"))
        # BLOCK_N equals the logits kernel's: one shift per (row, column tile)
        shift = tl.load(SHIFT + rm * stride_pb + n0 // BLOCK_N, mask=mask_m, other=0.0)
        w = tl.exp(rel + shift[:, None])  # l(s_ij) - l(s*) <= 0: in [0, 1]
        yt = tl.load(Y + rn.to(tl.int64)[:, None] * stride_yn + rd[None, :],
                     mask=mask_n[:, None] & mask_d[None, :], other=0.0)
        acc = _dot(w, yt.to(tl.float32), acc, PRECISION)
    alpha = tl.load(ALPHA + rm, mask=mask_m, other=0.0)
    optr = OUT + rm64[:, None] * stride_ob + rd[None, :]
    omask = mask_m[:, None] & mask_d[None, :]
    old = tl.load(optr, mask=omask, other=0.0)
    tl.store(optr, old * alpha[:, None] + acc, mask=omask)
