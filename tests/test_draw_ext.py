"""The fused sampler ``torch.ops.fastflow.draw_`` against a numpy transcription of Philox4x32-10 and Box-Muller.

The reference below is written from the published algorithm (Salmon et al., SC 2011) and checked against
Random123's known-answer vectors. The op's uniforms are compared bit for bit: Box-Muller is invertible, so the
32-bit words of (u1, u2) are recovered exactly from a float64 pair (g0, g1) (u1 = exp(-(g0^2 + g1^2) / 2),
u2 = atan2(g1, g0) / 2 pi, both to ~1e-15, far below the 2^-32 spacing of the words). The Gaussians themselves
are compared to the float64 reference at rtol 1e-12 (glibc's log/sin/cos against numpy's: a few ulp), and float32
within a few float32 ulp.

The laws of the draws (KS tests) are in test_sampling.py, which runs on both paths.
"""
import numpy as np
import pytest
import torch

from fastflow._core import loader as _loader

if not _loader.has_C():
    pytest.skip(f"the compiled extension fastflow._C is not built ({_loader._C_error()}); build it with "
                "`pip install --no-build-isolation -e .`", allow_module_level=True)

import fastflow
import fastflow._core.ops

OP = torch.ops.fastflow.draw_
M32 = np.uint64(0xFFFFFFFF)


# ---------------------------------------------------------------------------------------------- numpy reference
def philox4x32_10(ctr, key):
    """Philox4x32-10 of counters ctr (4, m) uint32 under key (k0, k1): (4, m) uint32."""
    c = [np.asarray(w, dtype=np.uint64) for w in ctr]
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for r in range(10):
        if r > 0:
            k0 = (k0 + np.uint64(0x9E3779B9)) & M32
            k1 = (k1 + np.uint64(0xBB67AE85)) & M32
        p0 = np.uint64(0xD2511F53) * c[0]
        p1 = np.uint64(0xCD9E8D57) * c[2]
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & M32, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & M32]
    return np.stack(c).astype(np.uint32)


def words(seed, groups, row, offset, stream):
    """(4, len(groups)) words of counter (group, row, offset, stream), key = the 64-bit seed."""
    m = len(groups)
    ctr = [np.asarray(groups, dtype=np.uint64), np.full(m, row, np.uint64), np.full(m, offset, np.uint64),
           np.full(m, stream, np.uint64)]
    return philox4x32_10(ctr, (seed & 0xFFFFFFFF, seed >> 32))


def uniform64(k):
    return (2.0 * k.astype(np.float64) + 1.0) * 2.0 ** -33


def uniform32(k):
    return ((((k >> np.uint32(9)) << np.uint32(1)) | np.uint32(1)).astype(np.float32) * np.float32(2.0 ** -24))


def normals(seed, row, offset, stream, n, dtype=np.float64):
    """The first n Gaussians of (row, offset, stream), Box-Muller in ``dtype``: pairs (x, y) and (z, w)."""
    w = words(seed, np.arange((n + 3) // 4), row, offset, stream)
    u = uniform64 if dtype == np.float64 else uniform32
    out = np.empty((w.shape[1], 4), dtype)
    for a, b in ((0, 1), (2, 3)):
        r = np.sqrt(dtype(-2) * np.log(u(w[a])))
        th = dtype(2 * np.pi) * u(w[b])
        out[:, a], out[:, b] = r * np.cos(th), r * np.sin(th)
    return out.reshape(-1)[:n]


def uniform53(hi, lo):
    k = (int(hi) << 20) | (int(lo) >> 12)
    return (2 * k + 1) * 2.0 ** -53


def log_gamma_mt(alpha, seed, row, offset):
    """log G, G ~ Gamma(alpha), alpha >= 1: Marsaglia-Tsang, attempt j on group j of the row's h stream."""
    c = alpha - 1.0 / 3.0
    k = 1.0 / np.sqrt(9.0 * c)
    for j in range(1000):
        w = words(seed, [j], row, offset, 1)[:, 0]
        x = np.sqrt(-2.0 * np.log(uniform64(w[0]))) * np.cos(2 * np.pi * uniform64(w[1]))
        v1 = 1.0 + k * x
        if v1 <= 0:
            continue
        v = v1 ** 3
        u = uniform53(w[2], w[3])
        if u < 1.0 - 0.0331 * x ** 4 or np.log(u) < 0.5 * x * x + c * (1.0 - v + np.log(v)):
            return np.log(c) + np.log(v)
    raise AssertionError("no acceptance in 1000 attempts")


def inverse_chi(D, seed, row, offset):
    """1 / ||h||, h ~ N(0, I_D): the sum of D squares for an integer D <= 8, else 2 Gamma(D/2) (boosted below 2)."""
    if D <= 8 and D == int(D):
        return 1.0 / np.sqrt((normals(seed, row, offset, 1, int(D)) ** 2).sum())
    alpha = D / 2
    if alpha >= 1:
        lg = log_gamma_mt(alpha, seed, row, offset)
    else:
        w = words(seed, [0], row, offset, 2)[:, 0]
        lg = log_gamma_mt(alpha + 1, seed, row, offset) + np.log(uniform53(w[0], w[1])) / alpha
    lg = max(lg, -1022 * np.log(2.0))
    return np.exp(-0.5 * (lg + np.log(2.0)))


def radius_factor(kind, param, seed, row, offset, g):
    if kind == 0:
        return 1.0
    if kind == 1:
        return inverse_chi(param, seed, row, offset)
    w = words(seed, [0], row, offset, 2)[:, 0]
    u = uniform53(w[0], w[1])
    psi = np.arctanh(u) if kind == 2 else -np.log1p(-u)
    return psi / np.sqrt((g.astype(np.float64) ** 2).sum())


def reference(n, d, seed, offset, kind, param, x0=None, a=None, scale=None, dtype=np.float64):
    out = np.empty((n, d), np.float64)
    for i in range(n):
        g = normals(seed, i, offset, 0, d, dtype)
        c = (1.0 if scale is None else scale[i]) * radius_factor(kind, param, seed, i, offset, g)
        out[i] = c * g.astype(np.float64) + (0.0 if x0 is None else a[i] * x0[i])
    return out


def key(seed, device="cpu"):
    """The op's Philox key: a (1,) int64 tensor on the device it draws on."""
    return torch.tensor([seed], dtype=torch.int64, device=device)


def run(n, d, seed, offset=0, kind=0, param=0.0, x0=None, a=None, scale=None, dtype=torch.float64):
    out = torch.empty(n, d, dtype=dtype)
    sc = torch.ones(n, dtype=torch.float64) if scale is None else scale
    OP(out, x0, sc if a is None else a, sc, key(seed), offset, kind, param)
    return out


# ---------------------------------------------------------------------------------------------- Philox itself
def test_philox_known_answers():
    """Random123's kat_vectors for philox4x32-10 (counter words, key words -> output words)."""
    cases = [
        ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
         [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
    ]
    for ctr, key, want in cases:
        got = philox4x32_10([[w] for w in ctr], key)[:, 0]
        assert [int(v) for v in got] == want


@pytest.mark.parametrize("seed,offset", [(0, 0), (123456789, 7), ((1 << 63) - 2, (1 << 32) - 1)])
def test_uniform_bits_match_reference(seed, offset):
    """The words behind the op's float64 Gaussians are the reference Philox words, bit for bit, for rows 0..4
    and d = 11 (two full groups and a partial one), recovered by inverting Box-Muller."""
    n, d = 5, 12
    g = run(n, d, seed, offset).numpy()
    for i in range(n):
        w = words(seed, np.arange(3), i, offset, 0)
        pairs = g[i].reshape(3, 2, 2)  # (group, pair, (cos, sin))
        for p in range(2):
            g0, g1 = pairs[:, p, 0], pairs[:, p, 1]
            u1 = np.exp(-(g0 * g0 + g1 * g1) / 2)
            u2 = np.mod(np.arctan2(g1, g0), 2 * np.pi) / (2 * np.pi)
            k1 = np.rint(u1 * 2.0 ** 32 - 0.5).astype(np.uint64)
            k2 = np.rint(u2 * 2.0 ** 32 - 0.5).astype(np.uint64)
            np.testing.assert_array_equal(k1, w[2 * p].astype(np.uint64))
            np.testing.assert_array_equal(k2, w[2 * p + 1].astype(np.uint64))


KINDS = [pytest.param(0, 0.0, id="one"), pytest.param(1, 1.0, id="chi-D1"), pytest.param(1, 7.0, id="chi-D7"),
         pytest.param(1, 9.0, id="chi-D9-gamma"), pytest.param(1, 2048.0, id="chi-D2048"),
         pytest.param(1, 2.5, id="chi-D2.5"), pytest.param(1, 0.3, id="chi-D0.3-boost"),
         pytest.param(2, 0.0, id="tanh"), pytest.param(3, 0.0, id="exp")]


@pytest.mark.parametrize("kind,param", KINDS)
@pytest.mark.parametrize("with_x0", [False, True], ids=["prior", "perturb"])
def test_op_matches_reference_fp64(kind, param, with_x0):
    """out = a x0 + scale rho g against the reference, float64, d = 1, 3 and 13."""
    seed = 987654321987
    for d in (1, 3, 13):
        n = 4
        gen = torch.Generator().manual_seed(d)
        x0 = torch.randn(n, d, generator=gen, dtype=torch.float64) if with_x0 else None
        a = torch.rand(n, generator=gen, dtype=torch.float64) if with_x0 else None
        scale = torch.rand(n, generator=gen, dtype=torch.float64) + 0.5
        out = run(n, d, seed, 3, kind, param, x0, a, scale)
        ref = reference(n, d, seed, 3, kind, param, None if x0 is None else x0.numpy(),
                        None if a is None else a.numpy(), scale.numpy())
        err = float(np.abs(out.numpy() - ref).max() / np.abs(ref).max())
        print(f"kind {kind} D {param} d {d}: rel err {err:.2e}")
        assert err < 1e-12


@pytest.mark.parametrize("kind,param", KINDS)
def test_op_matches_reference_fp32(kind, param):
    """float32: Box-Muller in float32 on 24-bit uniforms (logf/sinf/cosf against numpy's float32: a few ulp),
    rho in double, rounded once."""
    n, d, seed = 3, 9, 42
    out = run(n, d, seed, 0, kind, param, dtype=torch.float32)
    ref = reference(n, d, seed, 0, kind, param, dtype=np.float32)
    err = np.abs(out.double().numpy() - ref) / np.maximum(np.abs(ref), 1e-3)
    print(f"kind {kind}: max rel err {err.max():.2e}")
    assert err.max() < 5e-6  # ~40 float32 ulp: room for sin/cos of arguments up to 2 pi, far below any real error


def test_fp32_box_muller_accuracy():
    """The float32 Gaussians (vectorised polynomial log and exactly reduced sin/cos of 2 pi u, philox.h) against
    Box-Muller in float64 on the same float32 uniforms, over 2^18 Gaussians: every error within 5 r 2^-24 (r the
    radius of the pair; 2.5 to 5 float32 ulp). 2^22 Gaussians measured 3.2; a wrong coefficient or quadrant gives
    errors of order r."""
    n, d, seed = 64, 4096, 2024
    out = run(n, d, seed, 0, dtype=torch.float32).double().numpy().reshape(n, -1, 4)
    worst = 0.0
    for i in range(n):
        w = words(seed, np.arange(d // 4), i, 0, 0)
        for a, b in ((0, 1), (2, 3)):
            u1, u2 = uniform32(w[a]).astype(np.float64), uniform32(w[b]).astype(np.float64)
            r = np.sqrt(-2 * np.log(u1))
            for col, ref in ((a, r * np.cos(2 * np.pi * u2)), (b, r * np.sin(2 * np.pi * u2))):
                worst = max(worst, float((np.abs(out[i, :, col] - ref) / (r * 2.0 ** -24)).max()))
    print(f"worst error {worst:.2f} r 2^-24")
    assert worst < 5.0


@pytest.mark.parametrize("D", [0.3, 1.0, 2.5, 7.0, 9.0, 128.0, 2048.0, 100000.5])
def test_chi_radius_law(D):
    """Kind 1 draws g / ||h||: ||out||^2 D / d = (chi2_d / d) / (chi2_D / D) ~ F(d, D), KS against scipy's exact
    CDF on 20000 rows (both the sum-of-squares and the Gamma branches, and the boost below D = 2)."""
    stats = pytest.importorskip("scipy.stats")
    n, d = 20000, 3
    f = (run(n, d, 31337, 0, 1, D).square().sum(1) * D / d).numpy()
    assert np.isfinite(f).all()
    p = stats.kstest(f, stats.f(d, D).cdf).pvalue
    print(f"D = {D}: KS p = {p:.3g}")
    assert p > 1e-3


def test_uniforms_are_open():
    """The extreme words give uniforms strictly inside (0, 1) in both dtypes."""
    k = np.array([0, 1, 511, 512, 0xFFFFFFFF], dtype=np.uint32)
    for u in (uniform32(k).astype(np.float64), uniform64(k)):
        assert (u > 0).all() and (u < 1).all()


# ---------------------------------------------------------------------------------------------- properties
@pytest.mark.parametrize("kind,param", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_thread_count_independent(kind, param, dtype):
    """1 thread and 2 threads give bitwise the same output (rows are split across threads, each row is drawn
    from its own counters)."""
    n, d = 257, 301
    x0 = torch.randn(n, d, dtype=dtype)
    a = torch.rand(n, dtype=torch.float64)
    scale = torch.rand(n, dtype=torch.float64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(n, d, 5, 1, kind, param, x0, a, scale, dtype)
        torch.set_num_threads(2)
        two = run(n, d, 5, 1, kind, param, x0, a, scale, dtype)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)
    # and a row does not depend on the rows drawn with it
    assert torch.equal(run(1, d, 5, 1, kind, param, x0[:1], a[:1], scale[:1], dtype), one[:1])


def test_seed_offset_and_streams():
    """Different seeds or offsets give different draws; kind 1's h stream is not the g stream (rho g != g/|g_0|)."""
    base = run(4, 8, 1)
    assert not torch.equal(base, run(4, 8, 2)) and not torch.equal(base, run(4, 8, 1, offset=1))
    assert torch.equal(base, run(4, 8, 1))
    chi = run(4, 8, 1, kind=1, param=1.0)
    rho = chi[:, 0] / base[:, 0]
    assert not torch.allclose(rho, 1 / base[:, 0].abs())


def test_generator_drives_the_seed():
    """The Python path: a re-seeded generator repeats the draw, and drawing advances the generator."""
    if not fastflow.draws.can_draw_fused(torch.device("cpu"), torch.float32, 0):
        pytest.skip("the fused path is disabled")
    g = torch.Generator().manual_seed(3)
    a = fastflow.Gaussian().prior(5, 7, T=1.0, generator=g)
    b = fastflow.Gaussian().prior(5, 7, T=1.0, generator=g)
    c = fastflow.Gaussian().prior(5, 7, T=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, c) and not torch.equal(a, b)
    seed = fastflow.draws.philox_seed(torch.Generator().manual_seed(3), torch.device("cpu"))
    assert seed.shape == (1,) and seed.dtype == torch.int64
    assert torch.equal(a, run(5, 7, int(seed), dtype=torch.float32))


@pytest.mark.parametrize("kind,param", KINDS)
def test_opcheck(kind, param):
    x0 = torch.randn(6, 5, dtype=torch.float64)
    a, scale = torch.rand(6, dtype=torch.float64), torch.rand(6, dtype=torch.float64)
    for args in [(torch.empty(6, 5, dtype=torch.float64), x0, a, scale, key(11), 0, kind, param),
                 (torch.empty(6, 5), None, a, scale, key(11), 2, kind, param)]:
        torch.library.opcheck(OP, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_torch_compile_fullgraph():
    def f(out, scale, seed):
        OP(out, None, scale, scale, seed, 0, 2, 0.0)
        return out * 2

    out, scale = torch.empty(3, 4), torch.ones(3, dtype=torch.float64)
    got = torch.compile(f, fullgraph=True, backend="aot_eager")(out, scale, key(7))
    assert torch.equal(got, run(3, 4, 7, kind=2, dtype=torch.float32) * 2)


def test_empty():
    OP(torch.empty(0, 5), None, torch.ones(0, dtype=torch.float64), torch.ones(0, dtype=torch.float64), key(1), 0, 0,
       0.0)


def test_errors():
    f64 = torch.float64
    out, v = torch.empty(3, 4), torch.ones(3, dtype=f64)
    cases = [
        (dict(out=torch.empty(3, 4, 1)), "out must be 2-D"),
        (dict(out=torch.empty(3, 4, dtype=torch.float16)), "out must be float32 or float64"),
        (dict(out=torch.empty(4, 3).t()), "out must be contiguous"),
        (dict(a=torch.ones(3)), "a must be float64"),
        (dict(scale=torch.ones(2, dtype=f64)), r"scale must have shape \(3,\)"),
        (dict(scale=torch.ones(6, dtype=f64)[::2]), "scale must be contiguous"),
        (dict(x0=torch.ones(3, 4, dtype=f64)), "x0 must have the dtype of out"),
        (dict(x0=torch.ones(3, 5)), "x0 must have the shape of out"),
        (dict(x0=torch.ones(4, 3).t()), "x0 must be contiguous"),
        (dict(x0=out), "unsupported operation"),  # x0 aliasing out
        (dict(kind=4), "radius_kind must be"),
        (dict(kind=-1), "radius_kind must be"),
        (dict(kind=1, param=0.0), "must be a finite number > 0"),
        (dict(kind=1, param=-2.0), "must be a finite number > 0"),
        (dict(kind=1, param=float("nan")), "must be a finite number > 0"),
        (dict(kind=1, param=float("inf")), "must be a finite number > 0"),
        (dict(offset=-1), r"offset must be in \[0, 2\^32\)"),
        (dict(offset=1 << 32), r"offset must be in \[0, 2\^32\)"),
        (dict(seed=torch.tensor([1])[:0]), "seed must be a one-element int64 tensor"),
        (dict(seed=torch.tensor([1.0])), "seed must be a one-element int64 tensor"),
        (dict(seed=torch.tensor([1, 2])), "seed must be a one-element int64 tensor"),
    ]
    for kw, match in cases:
        args = dict(out=out, x0=None, a=v, scale=v, seed=key(1), offset=0, kind=0, param=0.0) | kw
        with pytest.raises(RuntimeError, match=match):
            OP(*args.values())


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and _loader.has_C_cuda()),
                    reason="needs a CUDA device and fastflow._C built with its CUDA sources")
@pytest.mark.parametrize("kind,param", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_cuda_matches_cpu(kind, param, dtype):
    """The same (seed, offset) on CUDA and on the CPU: the same Philox words, so the outputs agree up to the last
    ulps of log/sin/cos (libdevice against our polynomials) and the order of the row sums.

    Each side is within 3.2 r 2^-24 (float32) of float64 Box-Muller, an error on the scale of the row, not of the
    element (an element near a zero of cos(2 pi u) is a small difference of accurate terms): so each element's
    difference is measured against |cpu| + the row's RMS. Tolerance 4e-6 in float32 (2 x 3.2 x r <= 4.5 x 2^-24,
    plus the row sums), 1e-12 in float64. Seen on an H100: 1.66e-5 against |cpu| alone (floored at 1e-2), that is
    ~1.7e-7 of the row scale."""
    n, d = 67, 1031  # a partial last group, and rows longer than one block's 256 threads x 4 elements
    x0 = torch.randn(n, d, dtype=dtype)
    a, scale = torch.rand(n, dtype=torch.float64), torch.rand(n, dtype=torch.float64) + 0.5
    cpu = run(n, d, 99, 5, kind, param, x0, a, scale, dtype)
    out = torch.empty(n, d, dtype=dtype, device="cuda")
    OP(out, x0.cuda(), a.cuda(), scale.cuda(), key(99, "cuda"), 5, kind, param)
    rms = cpu.double().pow(2).mean(1, keepdim=True).sqrt()
    err = float(((out.cpu().double() - cpu.double()).abs() / (cpu.double().abs() + rms)).max())
    print(f"kind {kind} {dtype}: CUDA vs CPU max err (of |cpu| + row RMS) {err:.2e}")
    assert err < (4e-6 if dtype == torch.float32 else 1e-12)
    # and one launch is deterministic
    again = torch.empty_like(out)
    OP(again, x0.cuda(), a.cuda(), scale.cuda(), key(99, "cuda"), 5, kind, param)
    assert torch.equal(out, again)
