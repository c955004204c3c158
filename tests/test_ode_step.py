"""The fused step updates of the Runge-Kutta solvers (fastflow/ode/step.py) against the float64 reference.

Every path is held to ``fastflow.ode.step_reference`` evaluated in float64 on the same (upcast) inputs, with
dopri5's coefficients: the stage rows a_i, the solution weights b and the error weights e = b - b_hat.

- triton: the launchers called directly (dispatch sends CPU tensors to the CPU path); under Triton's interpreter
  here, compiled on a GPU with FASTFLOW_TEST_DEVICE=cuda.
- torch: the C++ ops ``fastflow::rk_combine_`` / ``rk_error_norm_`` when the extension is built, and the batched
  GEMM form that replaces them without it.
- dispatch: the public ``combine`` / ``error_norm``, default and forced with FASTFLOW_BACKEND.

Errors are measured against the size of what is summed, not of the sum: the worst element of
|out - ref| / (|y| + |h| sum_j |c_j K_j|) for combine, and the worst sample of |norm - ref| / norm_abs for the error
norm, norm_abs the reference norm of |h| sum_j |e_j K_j|. A sum of n terms accumulated in float32 is within ~(n + 1)
u = 5e-7 of that whatever the cancellation, while ||out - ref|| / ||ref|| would mostly measure how much random data
cancels (at d = 1, y + h sum_j c_j K_j ~ 0 by chance gives 2e-6 in exact float32 arithmetic).

Tolerances: float64 1e-13; float32 1e-6; bfloat16 states 8e-3 for combine (its output is rounded to bfloat16 once,
to nearest on a GPU (<= 2^-8 of the value) and by truncation in Triton's interpreter (< 2^-7)) and 1e-6 for the
error norm, which accumulates and returns float32.
"""
import pytest
import torch
from _util import DEVICE, dev

from fastflow._core import loader as _loader
from fastflow.ode.step import combine, error_norm
from fastflow.ode.step_reference import combine_reference, error_norm_reference
from fastflow.ode.step_torch import combine_torch, error_norm_torch

# Dormand & Prince (1980), RK5(4)7M: stage rows a_2 .. a_7 (a_7 = b: first same as last), b, e = b - b_hat.
DOPRI5_A = [
    [1 / 5],
    [3 / 40, 9 / 40],
    [44 / 45, -56 / 15, 32 / 9],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
]
DOPRI5_B = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]
DOPRI5_B_HAT = [5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40]
DOPRI5_E = [b - bh for b, bh in zip(DOPRI5_B, DOPRI5_B_HAT)]
RTOL, ATOL = 1e-3, 1e-6

DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float64, id="fp64"),
          pytest.param(torch.bfloat16, id="bf16")]
SIZES = [pytest.param(B, d, id=f"B{B}-d{d}") for B in (1, 7) for d in (1, 3, 63, 1031)]
TOL_COMBINE = {torch.float32: 1e-6, torch.float64: 1e-13, torch.bfloat16: 8e-3}  # bf16: 2^-7 + float32 sum error
TOL_NORM = {torch.float32: 1e-6, torch.float64: 1e-13, torch.bfloat16: 1e-6}
HAS_TRITON = _loader.triton_usable_on(DEVICE)
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason=f"Triton cannot run on {DEVICE} here "
                                  f"({_loader._triton_error() or 'set TRITON_INTERPRET=1 for the CPU'})")
needs_C = pytest.mark.skipif(not _loader.has_C(), reason=f"fastflow._C is not built ({_loader._C_error()})")


def make_problem(B: int, d: int, dtype: torch.dtype, S: int = 7):
    """y (B, d) and K (S, B, d) standard normal in ``dtype``; h (B,) of mixed magnitudes and signs (h < 0:
    backward integration), float64 for float64 states and float32 (a float32 time grid) otherwise; y_new the
    float64 dopri5 solution rounded to ``dtype``."""
    y = torch.randn(B, d, dtype=torch.float64).to(dtype)
    K = torch.randn(S, B, d, dtype=torch.float64).to(dtype)
    mags = torch.tensor([0.37, 1e-4, 2.5, 3e-2, 1.0, 7e-3, 0.11], dtype=torch.float64)
    signs = torch.tensor([-1.0, 1.0, -1.0, 1.0, 1.0, -1.0, -1.0], dtype=torch.float64)
    h = (mags * signs).repeat((B + 6) // 7)[:B].to(torch.float64 if dtype == torch.float64 else torch.float32)
    y_new = combine_reference(y.double(), K.double(), h.double(), DOPRI5_B).to(dtype)
    return y, K, h, y_new


def _f64(*tensors):
    return [v.double().cpu() for v in tensors]


def combine_err(out, y, K, h, coeffs) -> float:
    """Worst element of |out - ref| / (|y| + |h| sum_j |c_j K_j|), everything in float64."""
    y, K, h = _f64(y, K, h)
    ref = combine_reference(y, K, h, coeffs)
    size = combine_reference(y.abs(), K.abs(), h.abs(), [abs(c) for c in coeffs])
    return float(((out.double().cpu() - ref).abs() / size).max())


def norm_err(n, y, y_new, K, h, e) -> float:
    """Worst sample of |norm - ref| / norm_abs, norm_abs the reference norm of |h| sum_j |e_j K_j|."""
    y, y_new, K, h = _f64(y, y_new, K, h)
    ref = error_norm_reference(y, y_new, K, h, e, RTOL, ATOL)
    size = error_norm_reference(y, y_new, K.abs(), h.abs(), [abs(c) for c in e], RTOL, ATOL)
    return float(((n.double().cpu() - ref).abs() / size).max())


def check_combine(fn, y, K, h, dtype, label):
    """fn(y, K, h, coeffs) -> (B, d) for every stage row of dopri5 and for b; worst error against float64."""
    worst = 0.0
    for coeffs in DOPRI5_A + [DOPRI5_B]:
        out = fn(y, K, h, coeffs)
        assert out.dtype == dtype and out.shape == y.shape
        worst = max(worst, combine_err(out, y, K, h, coeffs))
    print(f"{label} combine {dtype} {tuple(y.shape)}: worst err {worst:.2e} (tol {TOL_COMBINE[dtype]:.1e})")
    assert worst <= TOL_COMBINE[dtype]


def check_norm(fn, y, y_new, K, h, dtype, label):
    n = fn(y, y_new, K, h, DOPRI5_E)
    assert n.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and n.shape == (y.shape[0],)
    err = norm_err(n, y, y_new, K, h, DOPRI5_E)
    print(f"{label} error_norm {dtype} {tuple(y.shape)}: err {err:.2e} (tol {TOL_NORM[dtype]:.1e})")
    assert err <= TOL_NORM[dtype]


# ---------------------------------------------------------------------------------------------------- triton
@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, d", SIZES)
def test_triton_matches_reference(B, d, dtype):
    from fastflow.ode.step_triton import combine_triton, error_norm_triton

    y, K, h, y_new = dev(*make_problem(B, d, dtype))
    check_combine(lambda y, K, h, c: combine_triton(y, K, h, c, torch.empty_like(y)), y, K, h, dtype, "triton")
    check_norm(lambda y, yn, K, h, e: error_norm_triton(y, yn, K, h, e, RTOL, ATOL), y, y_new, K, h, dtype,
               "triton")


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_triton_tiles(dtype):
    """Several column tiles per row, a ragged last tile, and tiles of 2 rows with a ragged last row tile; a K buffer
    with more stages than coefficients, and rows padded in memory."""
    from fastflow.ode.step_triton import combine_triton, error_norm_triton

    B, d = 7, 1031
    y, K, h, y_new = dev(*make_problem(B, d, dtype))
    pad = torch.zeros(9, B, d + 5, dtype=dtype, device=K.device)
    pad[:7, :, :d] = K
    Kp = pad[:, :, :d]  # row stride d + 5, stage stride B (d + 5), two unused stages
    tiles = dict(block_d=256, block_b=2)
    check_combine(lambda y, K, h, c: combine_triton(y, K, h, c, torch.empty_like(y), **tiles), y, Kp, h, dtype,
                  "triton 2x256")
    # the norm: one program per row tile walking 5 column tiles (norm written by the kernel), and the columns
    # split over 3 programs (512 + 512 + 7 columns, partial sums added by the launcher)
    for splits in (1, 3):
        check_norm(lambda y, yn, K, h, e: error_norm_triton(y, yn, K, h, e, RTOL, ATOL, splits=splits, **tiles), y,
                   y_new, Kp, h, dtype, f"triton 2x256, {splits} splits")


_COMPILE_SCRIPT = r"""
import json, re, sys
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastflow.kernels.ode import _rk_combine_kernel, _rk_error_norm_kernel
b, e = json.loads(sys.argv[1])
POINTERS = {"Y", "YNEW", "K", "OUT"}
res = {}
for dt, acc in (("fp32", tl.float32), ("bf16", tl.float32), ("fp64", tl.float64)):
    for name, fn, cx in ((
            "combine", _rk_combine_kernel, dict(COEFFS=tuple(b), ACC=acc, BLOCK_B=1, BLOCK_D=1024)), (
            "error_norm", _rk_error_norm_kernel,
            dict(COEFFS=tuple(e), RTOL=1e-3, ATOL=1e-6, ACC=acc, FINAL=True, BLOCK_B=1, BLOCK_D=1024))):
        out_dt = dt if name == "combine" else ("fp64" if dt == "fp64" else "fp32")
        sig = {a: "constexpr" if a in cx else ("*" + (out_dt if a == "OUT" else dt)) if a in POINTERS
               else "*fp64" if a == "H" else "i32" for a in fn.arg_names}
        # pointers, D and the strides divisible by 16, as Triton specialises them at d = 3072 (the masks need D
        # divisible by the vector width: other d get scalar loads)
        attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
                 if sig[a] != "constexpr" and a != "B"}
        src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in cx.items()}, attrs=attrs)
        ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm["ptx"]
        res[f"{dt} {name}"] = len(re.findall(r"ld\.global(?:\.\w+)*\.v[24]\.b(?:32|64)", ptx))
print(json.dumps(res))
"""


@pytest.mark.skipif(not _loader.has_triton(), reason="needs Triton")
def test_triton_compiles_for_h100():
    """The kernels through Triton's real compiler, to sm_90 PTX (no GPU needed; the interpreter above never compiles
    them), with 16-byte vector loads: per thread 8 fp32 (two v4) of y and of each of dopri5's 5 / 6 nonzero stages."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT, json.dumps([DOPRI5_B, DOPRI5_E])], env=env,
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and ("ptxas" in proc.stderr or "GPUTarget" in proc.stderr):
        pytest.skip(f"Triton's CUDA backend cannot compile here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr
    vec_loads = json.loads(proc.stdout.strip().splitlines()[-1])
    print(vec_loads)
    # loads of 16 bytes: fp32 and fp64 2 per thread per tensor (v4.b32 / v2.b64 x 2); bf16 1 (v4.b32 = 8 bf16)
    assert vec_loads == {"fp32 combine": 12, "fp32 error_norm": 16, "bf16 combine": 6, "bf16 error_norm": 8,
                         "fp64 combine": 24, "fp64 error_norm": 32}


# ------------------------------------------------------------------------------------------------------ torch
TORCH_FORMS = [pytest.param(True, id="ext", marks=needs_C), pytest.param(False, id="bmm")]


@pytest.mark.parametrize("use_ext", TORCH_FORMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, d", SIZES)
def test_torch_matches_reference(B, d, dtype, use_ext):
    """The CPU path: the C++ ops (ext), and the batched GEMM used without the extension (bmm)."""
    y, K, h, y_new = make_problem(B, d, dtype)
    label = "C++" if use_ext else "bmm"
    check_combine(lambda y, K, h, c: combine_torch(y, K, h, c, torch.empty_like(y), use_ext_op=use_ext), y, K, h,
                  dtype, label)
    check_norm(lambda y, yn, K, h, e: error_norm_torch(y, yn, K, h, e, RTOL, ATOL, use_ext_op=use_ext), y, y_new, K,
               h, dtype, label)


@needs_C
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_ext_independent_of_thread_count(dtype):
    """Tiles (1024 columns) are split across threads, never a tile, and the norm adds a row's tiles in order:
    results are bitwise equal for 1 and 2 threads. 70 x 2 tiles at 64 tiles per task: 3 tasks."""
    y, K, h, y_new = make_problem(70, 1100, dtype)
    hd = h.double()
    results = {}
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = torch.empty_like(y)
            torch.ops.fastflow.rk_combine_(out, y, list(K), hd, DOPRI5_B)
            norm = torch.empty(70, dtype=torch.float32)
            torch.ops.fastflow.rk_error_norm_(norm, y, y_new, list(K), hd, DOPRI5_E, RTOL, ATOL)
            results[n] = (out, norm)
    finally:
        torch.set_num_threads(threads)
    for r1, r2 in zip(results[1], results[2]):
        assert torch.equal(r1, r2)


@needs_C
def test_ext_opcheck():
    import fastflow._core.ops  # noqa: F401  (the fake implementations)

    y, K, h, y_new = make_problem(3, 5, torch.float32)
    hd = h.double()
    torch.library.opcheck(torch.ops.fastflow.rk_combine_, (torch.empty_like(y), y, list(K), hd, DOPRI5_A[3]))
    torch.library.opcheck(torch.ops.fastflow.rk_error_norm_,
                          (torch.empty(3), y, y_new, list(K), hd, DOPRI5_E, RTOL, ATOL))


@needs_C
def test_compiles_fullgraph(monkeypatch):
    """torch.compile traces a step through the public functions in one graph, down to the C++ ops (via their
    fakes; aot_eager: inductor's C++ build of the surrounding graph would dominate the test's time)."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounterWithBackend

    monkeypatch.delenv("FASTFLOW_BACKEND", raising=False)
    y, K, h, _ = make_problem(3, 5, torch.float32)

    def step(y, K, h):
        y5 = combine(y, K, h, DOPRI5_B)
        return y5, error_norm(y, y5, K, h, DOPRI5_E, RTOL, ATOL)

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    y5, norm = torch.compile(step, fullgraph=True, backend=counter)(y, K, h)
    targets = {str(n.target) for g in counter.graphs for n in g.graph.nodes}
    assert counter.frame_count == 1 and {"fastflow.rk_combine_", "fastflow.rk_error_norm_"} <= targets
    assert combine_err(y5, y, K, h, DOPRI5_B) <= 1e-6
    assert norm_err(norm, y, y5, K, h, DOPRI5_E) <= 1e-6


@needs_C
@pytest.mark.parametrize("change, match", [
    (dict(K=lambda K: K.double()), r"K\[0\] must have the dtype of y"),
    (dict(h=lambda h: h.float()), "h must be float64"),
    (dict(h=lambda h: h[:2]), r"h must have shape \(3,\)"),
    (dict(K=lambda K: K[:, :, :4]), r"K\[0\] must have shape \(3, 5\)"),
    (dict(coeffs=[1.0] * 8), "8 coefficients for K with 7 stages"),
    (dict(out=lambda o: o.t().contiguous().t()), "out must have contiguous columns"),
], ids=["K-dtype", "h-dtype", "h-shape", "K-shape", "too-many-coeffs", "out-layout"])
def test_ext_rejects_bad_arguments(change, match):
    y, K, h, _ = make_problem(3, 5, torch.float32)
    args = dict(out=torch.empty_like(y), y=y, K=K, h=h.double(), coeffs=DOPRI5_B)
    for k, v in change.items():
        args[k] = v(args[k]) if callable(v) else v
    with pytest.raises(RuntimeError, match=match):
        torch.ops.fastflow.rk_combine_(args["out"], args["y"], list(args["K"]), args["h"], args["coeffs"])


# --------------------------------------------------------------------------------------------------- dispatch
BACKENDS = [None, "torch", "reference", pytest.param("triton", marks=needs_triton)]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b or "default")
@pytest.mark.parametrize("dtype", DTYPES)
def test_dispatch_matches_reference(backend, dtype, monkeypatch):
    """The public functions on a (B, C, H, W) state, every backend (triton on CPU tensors under the interpreter)."""
    if backend is None:
        monkeypatch.delenv("FASTFLOW_BACKEND", raising=False)
    else:
        monkeypatch.setenv("FASTFLOW_BACKEND", backend)
    B, d = 7, 63
    y, K, h, y_new = make_problem(B, d, dtype)
    y, K, y_new = (v.reshape(*v.shape[:-1], 3, 3, 7) for v in (y, K, y_new))
    on = DEVICE if backend == "triton" else torch.device("cpu")
    y, K, h, y_new = (v.to(on) for v in (y, K, h, y_new))
    # the reference itself sums bfloat16 stages in bfloat16 (a rounding per term and one for h), the fused paths
    # in float32; its error norm upcasts first, like them
    tol = 2.0 ** -4 if backend == "reference" and dtype == torch.bfloat16 else TOL_COMBINE[dtype]
    for coeffs in DOPRI5_A + [DOPRI5_B]:
        out = combine(y, K, h, coeffs)
        err = combine_err(out, y, K, h, coeffs)
        print(f"{backend} combine {dtype} a/b of {len(coeffs)} stages: {err:.2e}")
        assert out.shape == y.shape and out.dtype == dtype and err <= tol
    n = error_norm(y, y_new, K, h, DOPRI5_E, RTOL, ATOL)
    err = norm_err(n, y, y_new, K, h, DOPRI5_E)
    print(f"{backend} error_norm {dtype}: {err:.2e}")
    assert err <= TOL_NORM[dtype]
    # the solver's form: the stages as a list of separate tensors (f's outputs, not copied into one buffer)
    Kl = [k.clone() for k in K]
    assert torch.equal(combine(y, Kl, h, DOPRI5_B), combine(y, K, h, DOPRI5_B))
    assert torch.equal(error_norm(y, y_new, Kl, h, DOPRI5_E, RTOL, ATOL), n)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_dispatch_layouts(backend, monkeypatch):
    """Non-contiguous y (strided columns), a non-contiguous out (written through a copy), out = y (in place),
    a 0-d h broadcast to every sample, h in float32 for float64 states, and a NaN state giving a NaN norm."""
    monkeypatch.setenv("FASTFLOW_BACKEND", backend)
    on = DEVICE if backend == "triton" else torch.device("cpu")
    B, d = 7, 63
    y, K, h, y_new = (v.to(on) for v in make_problem(B, 2 * d, torch.float64))
    ys, Ks = y[:, ::2], K[:, :, ::2]  # strided columns: copied once to contiguous rows
    assert combine_err(combine(ys, Ks, h, DOPRI5_B), ys, Ks, h, DOPRI5_B) <= 1e-13
    out_t = torch.empty(d, B, dtype=y.dtype, device=on).t()  # (B, d) with column stride B
    assert combine(ys, Ks, h, DOPRI5_B, out=out_t) is out_t
    assert combine_err(out_t, ys, Ks, h, DOPRI5_B) <= 1e-13
    yc = ys.contiguous()
    assert combine(yc, Ks, h, DOPRI5_B, out=yc) is yc  # in place
    assert combine_err(yc, ys, Ks, h, DOPRI5_B) <= 1e-13
    h0 = torch.tensor(-0.25, dtype=torch.float32, device=on)  # float32 time, float64 state; one h for all
    assert combine_err(combine(ys, Ks, h0, DOPRI5_A[4]), ys, Ks, h0.expand(B), DOPRI5_A[4]) <= 1e-13
    yn = y_new[:, ::2].clone()
    yn[3, 5] = float("nan")
    n = error_norm(ys, yn, Ks, h, DOPRI5_E, RTOL, ATOL)
    assert torch.isnan(n[3]) and torch.isfinite(n[torch.arange(B) != 3]).all()


def test_dispatch_rejects_bad_arguments():
    y, K, h, y_new = make_problem(3, 5, torch.float32)
    with pytest.raises(ValueError, match=r"K must have shape \(S, \*y.shape\)"):
        combine(y, K[:, :2], h, DOPRI5_B)
    with pytest.raises(ValueError, match="K must have y's dtype"):
        combine(y, K.double(), h, DOPRI5_B)
    with pytest.raises(ValueError, match=r"h must have shape \(3,\)"):
        combine(y, K, h[:2], DOPRI5_B)
    with pytest.raises(ValueError, match="8 coefficients for K with 7 stages"):
        combine(y, K, h, [0.1] * 8)
    with pytest.raises(ValueError, match="out must have y's shape, dtype"):
        combine(y, K, h, DOPRI5_B, out=torch.empty(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="y_new must have y's shape"):
        error_norm(y, y_new[:2], K, h, DOPRI5_E, RTOL, ATOL)


def test_zero_coefficients():
    """No nonzero coefficient: combine copies y, the error norm is 0 (the reference's answers)."""
    y, K, h, y_new = make_problem(3, 5, torch.float32)
    out = combine(y, K, h, [0.0, 0.0])
    assert torch.equal(out, y) and out.data_ptr() != y.data_ptr()
    assert torch.equal(error_norm(y, y_new, K, h, [0.0] * 7, RTOL, ATOL), torch.zeros(3))
