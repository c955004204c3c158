"""The compiled op ``torch.ops.fastflow.field_step_`` against its specification ``online_step_torch``.

The specification is evaluated in float64 on exactly the op's inputs (the float32 inputs upcast): the CPU op
computes in double, so its float32 outputs are that result rounded once (6e-8), well inside rtol 1e-5. Plain
torch in float32 is no yardstick here: its weights are off by up to 2.5e-4 on these inputs (exponent terms such
as sqrt(s)/t ~ 1e3 rounded in float32); that error is printed for scale.
"""
import pytest
import torch
from conftest import rel_err_rows

from fastflow._core import loader as _loader

if not _loader.has_C():
    pytest.skip(f"the compiled extension fastflow._C is not built ({_loader._C_error()}); build it with "
                "`pip install --no-build-isolation -e .`", allow_module_level=True)

import fastflow._core.ops  # noqa: F401  (registers the fake implementation that opcheck and torch.compile use)
from fastflow.field.logweights import EXP, GAUSSIAN, POISSON, TANH
from fastflow.field.torch_backend import online_step_torch

OP = torch.ops.fastflow.field_step_
D = 64  # dimension of the random data x, y
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float64, id="fp64")]
RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}
# (kind, p, q) for d = 64 (POISSON with D = 1: p = (d + 1) / 2) and, for the radial kinds, q = (d - 1) / 2 at
# d = 1 (no power of s) and d = 3072 (CIFAR-10 size, where s^-q makes the weights nearly one-hot).
WEIGHTS = [
    pytest.param(POISSON, (D + 1) / 2, 0.0, id="poisson"),
    pytest.param(GAUSSIAN, 0.5, 0.0, id="gaussian"),
    pytest.param(TANH, 0.0, 0.0, id="tanh-d1"),
    pytest.param(TANH, 0.0, (3072 - 1) / 2, id="tanh-d3072"),
    pytest.param(EXP, 0.0, 0.0, id="exp-d1"),
    pytest.param(EXP, 0.0, (3072 - 1) / 2, id="exp-d3072"),
]


def on_grid(v: torch.Tensor) -> torch.Tensor:
    """v rounded to a multiple of 2^-8 (8-bit-like data): products and sums of a few such numbers are exact."""
    return torch.round(v * 256) / 256


def make_chunks(B: int, C: int, path: str, n_chunks: int = 2, seed: int = 0):
    """Inputs of ``n_chunks`` consecutive steps as the torch field backend forms them, in float64.

    x (B, d) and the reference set (n_chunks * C, d) are standard normal; distances are taken about the reference
    mean c. path "ve": a = 1, t uniform in [1e-2, 10]; path "rf": t uniform in (0, 1), a = 1 - t.

    The centred data and t are rounded to multiples of 2^-8, so that dots, xn, yn are exact in float32 and every
    s = xn + a^2 yn - 2 a dots is exact in float64. Otherwise the op and torch (whose addcmul fuses the
    multiply-add, the op's does not) would round s differently, and at t = 1e-2 the Gaussian exponent
    4e3 (s - s*) turns one ulp of s into a 1e-11 to 2e-10 change of a weight: the conditioning of the weights,
    not an error. With exact s the two differ only in the last bits of sqrt / log1p / exp (torch's float64 sqrt is not
    always correctly rounded): a few ulp of terms such as u = sqrt(s)/t < 2048, i.e. < 5e-13 in the weights.

    Returns:
        xn (B,), t (B,), a (B,), and a list of (dots (B, C), yn (C,), offset) per chunk.
    """
    gen = torch.Generator().manual_seed(seed)
    f64 = dict(generator=gen, dtype=torch.float64)
    x = torch.randn(B, D, **f64)
    ref = torch.randn(n_chunks * C, D, **f64)
    if path == "ve":
        t = on_grid(1e-2 + (10 - 1e-2) * torch.rand(B, **f64))
        a = torch.ones(B, dtype=torch.float64)
    else:
        t = on_grid(1e-2 + 0.98 * torch.rand(B, **f64))
        a = 1 - t
    c = ref.mean(0)
    xc = on_grid(x - a[:, None] * c)
    chunks = []
    for k in range(n_chunks):
        yc = on_grid(ref[k * C:(k + 1) * C] - c)
        chunks.append((xc @ yc.T, (yc * yc).sum(1), k * C))
    return (xc * xc).sum(1), t, a, chunks


def initial_state(B: int, dtype):
    """mmin, jmin, l, l2 before the first chunk (mmin: the running smallest a^2 yn - 2 a dots)."""
    return (torch.full((B,), float("inf"), dtype=dtype), torch.zeros(B, dtype=torch.int64),
            torch.zeros(B, dtype=dtype), torch.zeros(B, dtype=dtype))


def upcast(tensors):
    """float64 copies (never views, even of float64 tensors: the op and the reference both write in place)."""
    return [v.to(torch.float64 if v.is_floating_point() else v.dtype, copy=True) for v in tensors]


def max_rel_err(out: torch.Tensor, ref: torch.Tensor, atol: float) -> float:
    """max |out - ref| / max(|ref|, atol), in float64."""
    err = (out.double() - ref).abs() / ref.abs().clamp_min(atol)
    return float(err.nan_to_num(nan=float("inf")).max()) if err.numel() else 0.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,p,q", WEIGHTS)
@pytest.mark.parametrize("path", ["ve", "rf"])
@pytest.mark.parametrize("C", [1, 13, 257])
@pytest.mark.parametrize("B", [1, 7])
def test_matches_specification(B, C, path, kind, p, q, dtype):
    xn, t, a, chunks = make_chunks(B, C, path)
    xn, t, a = xn.to(dtype), t.to(dtype), a.to(dtype)
    state = initial_state(B, dtype)
    rtol = RTOL[dtype]
    # Weights below the dtype's smallest normal number (exp(-87) in float32) are compared absolutely.
    atol = torch.finfo(dtype).tiny
    for step, (dots, yn, offset) in enumerate(chunks):  # the second step rescales: alpha != 0
        dots, yn = dots.to(dtype), yn.to(dtype)
        # The reference starts from the op's own state, so each step is compared on identical inputs.
        ref_dots, ref_xn, ref_yn, ref_t, ref_a = upcast([dots, xn, yn, t, a])
        ref_state = upcast(state)
        ref_alpha = online_step_torch(ref_dots, ref_xn, ref_yn, ref_t, ref_a, *ref_state, offset, kind, p, q)
        if dtype == torch.float32:  # plain torch in float32, for scale only
            t32 = [v.clone() for v in (dots, xn, yn, t, a, *state)]
            online_step_torch(*t32[:5], *t32[5:], offset, kind, p, q)
            print(f"step {step}: torch fp32 weights max rel err {max_rel_err(t32[0], ref_dots, atol):.2e}")
        alpha = OP(dots, xn, yn, t, a, *state, offset, kind, p, q)

        mmin, jmin, l, l2 = state
        names = ["dots", "alpha", "mmin", "l", "l2"]
        outs = [dots, alpha, mmin, l, l2]
        refs = [ref_dots, ref_alpha, ref_state[0], ref_state[2], ref_state[3]]
        print(f"step {step}: op max rel err " + ", ".join(
            f"{n} {max_rel_err(o, r, atol):.2e}" for n, o, r in zip(names, outs, refs)))
        for n, o, r in zip(names, outs, refs):
            assert o.dtype == dtype, n
            torch.testing.assert_close(o.double(), r, rtol=rtol, atol=atol, msg=lambda m, n=n: f"{n}: {m}")
        torch.testing.assert_close(jmin, ref_state[1], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,p,q", WEIGHTS)
def test_ties_and_coincident_points(kind, p, q, dtype):
    """Every point twice in a chunk, then the same chunk again: jmin stays on the first copy, as torch.min(dim=1)
    and the strict update of the specification pick it; row 0's query coincides with a point (s = 0, where the
    radial kinds clamp s inside log s).

    Integer data keep every distance exact in float32 too, so the ties are exact ties in both dtypes.
    """
    B, C = 7, 13
    gen = torch.Generator().manual_seed(1)
    y = torch.randint(-3, 4, (C, D), generator=gen).double()
    x = torch.randint(-3, 4, (B, D), generator=gen).double()
    x[0] = y[5]
    t = on_grid(0.25 + 3 * torch.rand(B, generator=gen, dtype=torch.float64)).to(dtype)  # u = sqrt(s)/t < 200
    a = torch.ones(B, dtype=dtype)
    xn, yn = (x * x).sum(1).to(dtype), (y * y).sum(1).repeat(2).to(dtype)
    dots = (x @ y.T).repeat(1, 2).to(dtype)
    state = initial_state(B, dtype)
    ref_state = upcast(state)
    for offset in (0, 2 * C):
        ref_dots, ref_xn, ref_yn, ref_t, ref_a = upcast([dots, xn, yn, t, a])
        ref_alpha = online_step_torch(ref_dots, ref_xn, ref_yn, ref_t, ref_a, *ref_state, offset, kind, p, q)
        out = dots.clone()
        alpha = OP(out, xn, yn, t, a, *state, offset, kind, p, q)
        torch.testing.assert_close(state[1], ref_state[1], rtol=0, atol=0)
        for o, r in [(out, ref_dots), (alpha, ref_alpha), (state[2], ref_state[2])]:
            torch.testing.assert_close(o.double(), r, rtol=RTOL[dtype], atol=torch.finfo(dtype).tiny)
    assert int(state[1][0]) == 5 and float(xn[0] + state[0][0]) == 0.0  # s* = xn + m* = 0: the query is y_5
    assert bool((state[1] < C).all())  # the first copy, in the first chunk
    assert bool((alpha == 1).all())  # the repeated chunk does not move s*


@pytest.mark.parametrize("dtype", DTYPES)
def test_independent_of_thread_count(dtype):
    """Rows are split across threads, never a row: results are bitwise equal for 1 and 2 threads."""
    B, C = 256, 61  # 4096 // 61 = 67 rows per task: 4 tasks
    xn, t, a, [(dots, yn, _)] = make_chunks(B, C, "ve", n_chunks=1)
    args = [v.to(dtype) for v in (dots, xn, yn, t, a)]
    results = {}
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            dots_n = args[0].clone()
            state = initial_state(B, dtype)
            alpha = OP(dots_n, *args[1:], *state, 0, TANH, 0.0, 1535.5)
            results[n] = [dots_n, alpha, *state]
    finally:
        torch.set_num_threads(threads)
    for r1, r2 in zip(results[1], results[2]):
        assert torch.equal(r1, r2)


def _args(B=3, C=5, dtype=torch.float32):
    """Valid arguments of the op for a first step: dots (B, C), xn, yn, t, a, state, offset, kind, p, q."""
    dots = torch.randn(B, C, dtype=dtype)
    vec = [torch.rand(n, dtype=dtype) + 0.1 for n in (B, C, B, B)]  # xn, yn, t, a
    return [dots, *vec, *initial_state(B, dtype), 0, EXP, 0.0, 1.0]


def _replace(i, value):
    """_args() with argument i replaced by value (or by value(args))."""
    args = _args()
    args[i] = value(args) if callable(value) else value
    return args


@pytest.mark.parametrize("args,match", [
    pytest.param(_replace(1, lambda x: x[1].double()), "xn must have dtype", id="dtype-mix"),
    pytest.param(_replace(0, torch.randn(5, 3).T), "dots must be contiguous", id="non-contiguous-dots"),
    pytest.param(_replace(6, torch.zeros(3, dtype=torch.int32)), "jmin must have dtype", id="jmin-int32"),
    pytest.param(_replace(2, torch.rand(6)), r"yn must have shape \(5,\)", id="yn-shape"),
    pytest.param(_replace(0, torch.randn(3, 5).half()), "float32 or float64", id="half"),
    pytest.param(_replace(10, 4), "kind must be", id="kind-4"),
    pytest.param(_replace(0, torch.randn(3, 0)), "at least one column", id="no-columns"),
])
def test_rejects_bad_arguments(args, match):
    with pytest.raises(RuntimeError, match=match):
        OP(*args)


def test_opcheck():
    """Schema (mutations declared), fake implementation, autograd registration, AOT dispatch."""
    torch.library.opcheck(OP, _args(B=4, C=7))


def test_compiles_fullgraph():
    """torch.compile traces through the op (via the fake) in one graph; aot_eager: inductor's C++ build of the
    surrounding ops would take tens of seconds and tests nothing about the op."""
    def step(dots, xn, yn, t, a, mmin, jmin, l, l2):
        alpha = OP(dots, xn, yn, t, a, mmin, jmin, l, l2, 0, EXP, 0.0, 1.0)
        return alpha * 2

    args = _args(B=4, C=7)[:9]
    eager = [v.clone() for v in args]
    out = torch.compile(step, fullgraph=True, backend="aot_eager")(*args)
    ref = step(*eager)
    torch.testing.assert_close(out, ref)
    for got, want in zip(args, eager):
        torch.testing.assert_close(got, want)


needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and _loader.has_C_cuda()),
                                reason="needs a CUDA device and fastflow._C built with its CUDA sources")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,p,q", WEIGHTS)
@pytest.mark.parametrize("path", ["ve", "rf"])
@pytest.mark.parametrize("C", [1, 257, 3001])  # 3001: 12 columns per thread of the 256, and a ragged tail
def test_cuda_matches_specification(C, path, kind, p, q, dtype):
    """The CUDA kernel against the specification in float64 (on the CPU). It computes in the input dtype, so
    float64 is held to the CPU op's rtol; float32 to flash-attention's rule: at most 2x the error of the
    specification itself run in float32 on the same GPU, plus 1e-5 for rows where that error is ~0 by luck."""
    B = 7
    xn, t, a, chunks = make_chunks(B, C, path)
    xn, t, a = (v.to("cuda", dtype) for v in (xn, t, a))
    state = [v.cuda() for v in initial_state(B, dtype)]
    for step, (dots, yn, offset) in enumerate(chunks):
        dots, yn = dots.to("cuda", dtype), yn.to("cuda", dtype)
        ref = [v.cpu() for v in upcast([dots, xn, yn, t, a, *state])]
        ref_alpha = online_step_torch(*ref[:5], *ref[5:], offset, kind, p, q)
        plain = [v.clone() for v in (dots, xn, yn, t, a, *state)]
        plain_alpha = online_step_torch(*plain[:5], *plain[5:], offset, kind, p, q)
        alpha = OP(dots, xn, yn, t, a, *state, offset, kind, p, q)

        # (name, op output, plain torch output in the same dtype, float64 reference)
        rows = [("dots", dots, plain[0], ref[0]), ("alpha", alpha, plain_alpha, ref_alpha),
                ("mmin", state[0], plain[5], ref[5]), ("l", state[2], plain[7], ref[7]),
                ("l2", state[3], plain[8], ref[8])]
        for name, out, plain_out, r in rows:
            if dtype == torch.float64:
                torch.testing.assert_close(out.cpu(), r, rtol=RTOL[dtype], atol=torch.finfo(dtype).tiny,
                                           msg=lambda m, name=name: f"{name}: {m}")
            else:
                err, err_plain = rel_err_rows(out.cpu(), r), rel_err_rows(plain_out.cpu(), r)
                print(f"step {step} {name}: cuda {err:.2e}, torch fp32 {err_plain:.2e}")
                assert err <= 2 * err_plain + 1e-5, name
        # distances are exact on these inputs (see make_chunks), up to float32 rounding: no near-ties to break
        torch.testing.assert_close(state[1].cpu(), ref[6], rtol=0, atol=0)


@pytest.mark.cuda
@needs_cuda
def test_cuda_rejects_mixed_devices():
    args = _args()
    args[1] = args[1].cuda()
    with pytest.raises(RuntimeError, match="xn must be on the device of dots"):
        OP(*args)
