"""Triton kernels of the Runge-Kutta step updates (fastflow/ode/step.py), each one pass over the stage buffers.

1. ``_rk_combine_kernel``: out = y + h sum_j c_j K_j: a stage's input, or the solution (c = b).
2. ``_rk_error_norm_kernel``: the sum over the columns of (err / sc)^2, err = h sum_j e_j K_j,
   sc = atol + rtol max(|y|, |y_new|). With enough rows to fill the GPU a program walks its rows' whole width and
   writes the norm; otherwise the columns are split across programs, which write (B, n_splits) partial sums that
   the launcher adds in a fixed order. Either way the norm is deterministic (no atomics).
3. ``_rk_control_kernel``: the per-sample step-size control after a trial step (fastflow/ode/control.py), one
   lane per sample: a single launch where the torch expressions take ~50.

The coefficients and rtol / atol are constexpr: zero stages are never loaded (dopri5's b and e have one or two
zeros each), and every constant is materialised in the accumulation dtype with ``tl.full`` (a bare Python float
can be rounded to fp32 first, 1e-8 relative error in a float64 state). Accumulation is in fp32 for fp32, fp16 and
bf16 states and in fp64 for fp64 states.

A program owns a BLOCK_B x BLOCK_D tile: one row split in column tiles at image sizes (d = 3072: 1 x 1024), several
rows per program for small d (2-D toy ODEs: 512 x 2), so that every program moves about the same number of bytes.
"""
import triton
import triton.language as tl


@triton.jit
def _stage_sum(K, offs, mask, stride_ks, COEFFS: tl.constexpr, ACC: tl.constexpr,
               BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """sum_j COEFFS[j] K[j] over the tile at element offsets ``offs`` of each stage, skipping zero coefficients."""
    acc = tl.zeros((BLOCK_B, BLOCK_D), dtype=ACC)
    kp = K + offs
    for j in tl.static_range(len(COEFFS)):
        if COEFFS[j] != 0.0:
            k = tl.load(kp, mask=mask, other=0.0)
            acc += tl.full((), COEFFS[j], ACC) * k.to(ACC)
        kp += stride_ks  # pointer increments: j * stride_ks could pass 2^31 in int32 (K of 7 x 2^29 elements)
    return acc


@triton.jit
def _rk_combine_kernel(
    Y, K, H, OUT,           # y (B, D); stages K (S, B, D) of y's dtype; h (B,) fp32 or fp64; out (B, D) y's dtype
    B, D,                   # sizes
    stride_yb, stride_ks, stride_kb, stride_ob,  # the columns of y, K, out are contiguous
    COEFFS: tl.constexpr,   # tuple of Python floats, len(COEFFS) <= S
    ACC: tl.constexpr,      # accumulation dtype: tl.float64 for fp64 states, else tl.float32
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rd = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_b = rb < B
    mask = mask_b[:, None] & (rd < D)[None, :]
    rb64 = rb.to(tl.int64)  # row offsets in int64: B * D passes 2^31 at 256 x 3 x 1024 x 1024
    acc = _stage_sum(K, rb64[:, None] * stride_kb + rd[None, :], mask, stride_ks, COEFFS, ACC, BLOCK_B, BLOCK_D)
    h = tl.load(H + rb, mask=mask_b, other=0.0).to(ACC)
    y = tl.load(Y + rb64[:, None] * stride_yb + rd[None, :], mask=mask, other=0.0)
    out = y.to(ACC) + h[:, None] * acc
    tl.store(OUT + rb64[:, None] * stride_ob + rd[None, :], out.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _rk_error_norm_kernel(
    Y, YNEW, K, H,          # y, y_new (B, D); stages K (S, B, D) of y's dtype; h (B,) fp32 or fp64
    OUT,                    # out: FINAL: (B,) norms in ACC; else (B, n_splits) partial sums of (err / sc)^2 in ACC
    B, D, D_PER_PROG,       # sizes; columns per program along axis 1 (a multiple of BLOCK_D)
    stride_yb, stride_nb, stride_ks, stride_kb, stride_ob,  # the columns of y, y_new, K are contiguous
    COEFFS: tl.constexpr,   # tuple of Python floats e = b - b_hat, len(COEFFS) <= S
    RTOL: tl.constexpr, ATOL: tl.constexpr,  # Python floats: constant over a solve
    ACC: tl.constexpr,      # accumulation dtype: tl.float64 for fp64 states, else tl.float32
    FINAL: tl.constexpr,    # one program per row tile covers all D columns: write sqrt(sum / D) itself
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_d = tl.program_id(1)
    rb = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_b = rb < B
    rb64 = rb.to(tl.int64)
    h = tl.load(H + rb, mask=mask_b, other=0.0).to(ACC)
    ssq = tl.zeros((BLOCK_B,), dtype=ACC)
    for d0 in range(0, D_PER_PROG, BLOCK_D):
        rd = pid_d * D_PER_PROG + d0 + tl.arange(0, BLOCK_D)
        mask = mask_b[:, None] & (rd < D)[None, :]
        err = _stage_sum(K, rb64[:, None] * stride_kb + rd[None, :], mask, stride_ks, COEFFS, ACC, BLOCK_B, BLOCK_D)
        err = err * h[:, None]
        y = tl.load(Y + rb64[:, None] * stride_yb + rd[None, :], mask=mask, other=0.0).to(ACC)
        yn = tl.load(YNEW + rb64[:, None] * stride_nb + rd[None, :], mask=mask, other=0.0).to(ACC)
        # NaN propagates as in torch.maximum: a NaN state must give a NaN norm (a rejected step), never a small one
        big = tl.maximum(tl.abs(y), tl.abs(yn), propagate_nan=tl.PropagateNan.ALL)
        sc = big * tl.full((), RTOL, ACC) + tl.full((), ATOL, ACC)
        r = tl.where(mask, err / sc, 0.0)  # padding: 0 / atol, or 0 / 0 when atol = 0
        ssq += tl.sum(r * r, axis=1)
    if FINAL:
        ms = ssq / D
        if ACC == tl.float64:
            nrm = tl.sqrt(ms)  # IEEE for fp64
        else:
            nrm = tl.sqrt_rn(ms)  # tl.sqrt is sqrt.approx for fp32
        tl.store(OUT + rb, nrm, mask=mask_b)
    else:
        tl.store(OUT + rb * stride_ob + pid_d, ssq, mask=mask_b)


@triton.jit
def _rk_control_kernel(
    T_, H, HTRY, TNEXT, EPREV,  # (n,) time dtype, updated in place: t, h, h_try, t_next, err_prev
    STATUS,                     # (n, 6) uint8 (a bool tensor's bytes): done, stalled, bad, accept, lands, rejected
    T1, ERR, XMAX,              # (n,) t1 (time dtype); err and max |x_new| (any float dtype)
    n,
    GAINS: tl.constexpr,        # safety, fac_min, fac_max, alpha/k, beta/k, 1/k, err_prev_min, land_stretch
    BLOCK: tl.constexpr,
):
    """fastflow.ode.control.control_reference, one sample per lane (specification there). Powers are
    exp(p log x) on x >= 1e-10; the gains are materialised in the time dtype (tl.full: exact in fp64)."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    t = tl.load(T_ + i, mask=m, other=0.0)
    TD = t.dtype
    safety = tl.full((), GAINS[0], TD)
    fac_min = tl.full((), GAINS[1], TD)
    fac_max = tl.full((), GAINS[2], TD)
    one = tl.full((), 1.0, TD)
    inf = tl.full((), float("inf"), TD)
    e_raw = tl.load(ERR + i, mask=m, other=0.0).to(TD)
    xm = tl.load(XMAX + i, mask=m, other=0.0)
    finite = (tl.abs(xm) < float("inf")) & (tl.abs(e_raw) < inf)  # false for NaN and +-inf
    accept = finite & (e_raw <= one)
    e = tl.where(finite, tl.maximum(e_raw, tl.full((), 1e-10, TD)), one)  # err = 0: the clamp to fac_max decides
    ep = tl.load(EPREV + i, mask=m, other=1.0)
    st = STATUS + i * 6
    rej_prev = tl.load(st + 5, mask=m, other=0) != 0
    log_e = tl.log(e)
    fac_acc = safety * tl.exp(log_e * tl.full((), -GAINS[3], TD)) * tl.exp(tl.log(ep) * tl.full((), GAINS[4], TD))
    fac_acc = tl.minimum(tl.maximum(fac_acc, fac_min), fac_max)
    fac_acc = tl.where(rej_prev, tl.minimum(fac_acc, one), fac_acc)  # no growth right after a rejection
    fac_rej = tl.minimum(tl.maximum(safety * tl.exp(log_e * tl.full((), -GAINS[5], TD)), fac_min), one)
    fac_rej = tl.where(finite, fac_rej, fac_min)
    h_new = tl.load(HTRY + i, mask=m, other=0.0) * tl.where(accept, fac_acc, fac_rej)
    ep = tl.where(accept, tl.maximum(e_raw, tl.full((), GAINS[6], TD)), ep)
    t_new = tl.where(accept, tl.load(TNEXT + i, mask=m, other=0.0), t)
    done = accept & (tl.load(st + 4, mask=m, other=0) != 0)
    stalled = (~done) & ((t_new + h_new) == t_new)  # in the time dtype: a float32 clock stalls where float32 does
    bad = (tl.load(st + 2, mask=m, other=0) != 0) | (~finite)
    t1 = tl.load(T1 + i, mask=m, other=0.0)
    rem = t1 - t_new
    lands = tl.abs(rem) <= tl.full((), GAINS[7], TD) * tl.abs(h_new)
    h_try = tl.where(lands, rem, h_new)
    tl.store(st + 0, done.to(tl.uint8), mask=m)
    tl.store(st + 1, stalled.to(tl.uint8), mask=m)
    tl.store(st + 2, bad.to(tl.uint8), mask=m)
    tl.store(st + 3, accept.to(tl.uint8), mask=m)
    tl.store(st + 4, lands.to(tl.uint8), mask=m)
    tl.store(st + 5, (~accept).to(tl.uint8), mask=m)
    tl.store(HTRY + i, h_try, mask=m)
    tl.store(TNEXT + i, tl.where(lands, t1, t_new + h_try), mask=m)
    tl.store(EPREV + i, ep, mask=m)
    tl.store(T_ + i, t_new, mask=m)
    tl.store(H + i, h_new, mask=m)
