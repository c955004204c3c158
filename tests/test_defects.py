"""Regressions of the defects that a fuzz of the public API found, one test (or a few) per defect.

Each failed before its fix; the numbers in the docstrings are the inputs the fuzz used.
"""
import math
import random
import subprocess
import sys
import threading

import pytest
import torch
from _util import FAMILIES, make_problem, rel_err_rows

import fastflow
from fastflow._core import dispatch, loader

needs_C = pytest.mark.skipif(not loader.has_C(), reason="fastflow._C is not built")


# ---------------------------------------------------------------------------------------------------------------
# 1. f returning a tensor without contiguous rows

@pytest.mark.parametrize("method", ["dopri5", "euler", "heun", "rk4"])
def test_odeint_accepts_a_transposed_f_output(method):
    """f(x) = (A x^T)^T is column-major: the fused step ops read it as it comes or copied, never raise."""
    A = torch.tensor([[-1.0, 0.5, 0.0], [0.0, -2.0, 0.3], [0.1, 0.0, -0.5]], dtype=torch.float64)
    x0 = torch.randn(8, 3, dtype=torch.float64)
    steps = None if method == "dopri5" else 400
    res = fastflow.odeint(lambda x, t: (A @ x.T).T, x0, 0.0, 1.0, method=method, steps=steps, rtol=1e-8,
                          atol=1e-8)
    want = (torch.linalg.matrix_exp(A) @ x0.T).T
    err = rel_err_rows(res.x, want)
    print(method, err)
    assert bool(res.success.all()) and err < (1e-6 if method in ("dopri5", "rk4") else 5e-3)


def test_samplers_accept_non_contiguous_model_outputs():
    ref = torch.rand(32, 6, dtype=torch.float64) * 2 - 1

    def velocity(x, t):  # the exact field, returned in a column-major layout
        return fastflow.RectifiedFlow().velocity(x, t, ref).T.contiguous().T

    x1 = torch.randn(4, 6, dtype=torch.float64)
    out = fastflow.flow_sample(velocity, x1, t_end=0.05, rtol=1e-6, atol=1e-6)
    want = fastflow.flow_sample(lambda x, t: fastflow.RectifiedFlow().velocity(x, t, ref), x1, t_end=0.05,
                                rtol=1e-6, atol=1e-6)
    assert torch.equal(out.x, want.x)

    def net_fn(x, z):
        return fastflow.pfgm.target(x, z, ref).T.contiguous().T

    x_init = fastflow.pfgm.prior(4, (6,), z_max=5.0, dtype=torch.float64)
    res = fastflow.pfgm.sample(net_fn, x_init, z_max=5.0, z_min=1e-2)
    assert bool(res.success.all()) and bool(torch.isfinite(res.x).all())


# ---------------------------------------------------------------------------------------------------------------
# 2. accuracy depended on the chunking and the backend (3e-4 to 1.4e-3 over two chunks at d = 196608, 2.2e-4
#    from the pure-torch epilogue and the Triton kernels in one chunk at d = 12288): the distance was rounded as
#    a whole, s = ||x||^2 + (a^2 ||y||^2 - 2 a x.y), and its running minimum kept in float32 across chunks

CHUNKING_FAMILIES = ["poisson1", "poisson128", "gaussian", "tanh", "exp"]


def _chunking_runs(monkeypatch):
    """(label, thunk) for every way of splitting the work: the torch backend at budgets of 1 and 256 MiB and in
    chunks of 16 rows, with and without the compiled epilogue; the Triton kernels in chunks of 16 rows and in one
    chunk of several 16-column tiles (tiles long in d keep the interpreter's loop short)."""
    def torch_run(fam, x, t, ref, budget, chunk, ext):
        with monkeypatch.context() as m:
            m.setenv("FASTFLOW_FIELD_BUDGET_MB", str(budget))
            m.setattr(dispatch, "has_C", lambda: ext)
            return fam.posterior_mean(x, t, ref, backend="torch", chunk_size=chunk)

    def triton_run(fam, x, t, ref, chunk):
        with monkeypatch.context() as m:
            m.setenv("FASTFLOW_TRITON_TILES", "BLOCK_M=16,BLOCK_N=16,BLOCK_K=8192,BLOCK_D=8192")
            return fam.posterior_mean(x, t, ref, backend="triton", chunk_size=chunk)

    runs = []
    for ext in [True, False] if loader.has_C() else [False]:
        for budget, chunk in [(1, None), (256, None), (256, 16)]:
            runs.append((f"torch {'C' if ext else 'pure'} {chunk or f'{budget} MiB'}",
                         lambda *a, b=budget, c=chunk, e=ext: torch_run(*a, b, c, e)))
    if loader.has_triton():
        for chunk in (16, None):
            runs.append((f"triton {chunk or 'one chunk'}", lambda *a, c=chunk: triton_run(*a, c)))
    return runs


@pytest.mark.parametrize("d", [3072, 12288, 196608])
def test_accuracy_does_not_depend_on_chunking_or_backend(d, monkeypatch):
    """Queries near their source point at t = 30 and 300 data scales (where the weights are flattest and s is
    largest against its spread): the worst row within 1e-4 of the float64 reference however the work is split."""
    gen = torch.Generator().manual_seed(d)
    B, R = 4, 40
    worst = {}
    runs = _chunking_runs(monkeypatch)
    for name in CHUNKING_FAMILIES:
        fam = FAMILIES[name]()
        for t_rel in (30.0, 300.0):
            x, t, ref = make_problem(fam, B, R, d, t_rel, gen=gen)
            want = fam.posterior_mean(x.double(), t, ref.double(), backend="reference")
            for label, run in runs:
                err = rel_err_rows(run(fam, x, t, ref), want)
                worst[label] = max(worst.get(label, 0.0), err)
                assert err <= 1e-4, f"{name} t_rel={t_rel} {label}: worst row {err:.2e}"
    print(f"d={d}: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))


# ---------------------------------------------------------------------------------------------------------------
# 3. edm_sample kept the autograd graph of the whole run

def test_edm_sample_builds_no_graph():
    net = torch.nn.Linear(4, 4)

    def denoiser(x, sigma):
        return net(x)

    out = fastflow.edm_sample(denoiser, torch.randn(8, 4), steps=4)
    assert not out.x.requires_grad and out.x.grad_fn is None
    seen = []
    fastflow.edm_sample(denoiser, torch.randn(8, 4), steps=3, callback=lambda info: seen.append(info["denoised"]))
    assert seen and not any(d.requires_grad for d in seen)


# ---------------------------------------------------------------------------------------------------------------
# 4. perturb dropped the gradient with respect to x0 when the compiled draw served it

@pytest.mark.parametrize("ext", [True, False], ids=["C", "pure_torch"])
@pytest.mark.parametrize("name", ["poisson1", "poisson128", "gaussian", "tanh", "rf"])
def test_perturb_carries_the_gradient_of_x0(name, ext, monkeypatch):
    if ext and not loader.has_C():
        pytest.skip("fastflow._C is not built")
    monkeypatch.setenv("FASTFLOW_DISABLE_C", "0" if ext else "1")
    loader.reprobe()
    try:
        fam = FAMILIES[name]()
        t = 0.25
        x0 = torch.randn(5, 7, requires_grad=True)
        x = fam.perturb(x0, t, generator=torch.Generator().manual_seed(1))
        (x * torch.arange(7.0)).sum().backward()
        a = 1 - t if name == "rf" else 1.0
        assert torch.allclose(x0.grad, a * torch.arange(7.0).expand(5, 7))
        # the same draw as without grad: only the autograd path changes
        with torch.no_grad():
            same = fam.perturb(x0, t, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(x.detach(), same, rtol=1e-6, atol=1e-6)
        x0.grad = None
        xp, _ = fastflow.pfgm.perturb(x0)
        xp.sum().backward()
        assert torch.equal(x0.grad, torch.ones_like(x0))
    finally:
        monkeypatch.undo()
        loader.reprobe()


# ---------------------------------------------------------------------------------------------------------------
# 5. results that overflow were returned as inf

@pytest.mark.parametrize("kwargs, dtype", [(dict(M=1e4), torch.float32), (dict(tau=1e3), torch.float32),
                                           (dict(M=800), torch.float16)], ids=["M=1e4", "tau=1e3", "fp16-M=800"])
def test_pfgm_perturb_overflow_raises(kwargs, dtype):
    with pytest.raises(FloatingPointError, match="overflows"):
        fastflow.pfgm.perturb(torch.randn(64, 3072).to(dtype), **kwargs)


def test_half_velocity_overflow_raises():
    ref = torch.rand(16, 6) * 2 - 1
    x = ref[:4] + 1.0
    with pytest.raises(FloatingPointError, match="velocity overflows torch.float16"):
        fastflow.Poisson(1).velocity(x.half(), 1e-5, ref.half())
    v = fastflow.Poisson(1).velocity(x, 1e-5, ref)  # float32 holds it
    assert bool(torch.isfinite(v).all())


# ---------------------------------------------------------------------------------------------------------------
# 6. FloatingPointError where the answer is representable

def test_gaussian_posterior_mean_at_t_1e30_float32():
    ref = torch.rand(64, 10) * 2 - 1
    for backend in ("reference", "torch"):
        out, stats = fastflow.Gaussian().posterior_mean(ref[:4], 1e-30, ref, backend=backend, return_stats=True)
        assert torch.equal(out, ref[:4]), backend
        assert bool(torch.isfinite(stats.log_norm).all()) and torch.allclose(stats.ess, torch.ones(4))


def test_pfgm_target_at_z_2e19_float32():
    """t^2 overflows float32 at z = 2e19; the target is the (0, ..., -sqrt(d)) direction up to O(1/z)."""
    ref = torch.rand(64, 10, dtype=torch.float64) * 2 - 1
    x = ref[:8] + 0.1
    want = fastflow.pfgm.target(x, 2e19, ref)
    for backend in ("reference", "torch"):
        got = fastflow.pfgm.target(x.float(), 2e19, ref.float(), backend=backend)
        print(backend, rel_err_rows(got, want))
        assert rel_err_rows(got, want) < 1e-6
    assert torch.allclose(want[:, -1], torch.full((8,), -math.sqrt(10), dtype=torch.float64))


def test_poisson_log_norm_at_tiny_and_huge_t():
    ref = torch.rand(32, 5) * 2 - 1
    for t in (1e-30, 2e19):
        _, stats = fastflow.Poisson(2).posterior_mean(ref[:3], t, ref, return_stats=True)
        want = torch.logsumexp(-3.5 * torch.log(torch.cdist(ref[:3].double(), ref.double()) ** 2 +
                                                torch.tensor(t, dtype=torch.float64) ** 2), dim=1)
        print(t, stats.log_norm, want)
        assert torch.allclose(stats.log_norm.double(), want, rtol=1e-5)


def test_dopri5_at_huge_states_float32():
    x = torch.full((4, 3), 2e37)
    res = fastflow.odeint(lambda x, t: -x, x, 0.0, 1.0)
    assert bool(res.success.all())
    assert torch.allclose(res.x, torch.full_like(x, 2e37 * math.exp(-1)), rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# 7. wrong exception types, or no argument named

def test_time_beyond_float32_range_names_t():
    ref = torch.rand(8, 3)
    with pytest.raises(ValueError, match=r"t = 1e\+39 is outside the range of the compute dtype torch.float32"):
        fastflow.Gaussian().posterior_mean(ref, 1e39, ref)
    with pytest.raises(ValueError, match="t has values beyond the range"):
        fastflow.Gaussian().posterior_mean(ref, torch.full((8,), 1e39, dtype=torch.float64), ref)


@pytest.mark.parametrize("chunk_size, exc", [(-3, ValueError), (0, ValueError), (2.5, TypeError), ("8", TypeError)])
def test_chunk_size_is_checked(chunk_size, exc):
    ref = torch.rand(8, 3)
    with pytest.raises(exc, match="chunk_size must be (an int|>= 1)"):
        fastflow.Poisson().posterior_mean(ref, 0.5, ref, chunk_size=chunk_size)


@pytest.mark.parametrize("value", ["", "abc", "nan", "inf", "-1", "0"])
def test_field_budget_variable_is_checked(value, monkeypatch):
    monkeypatch.setenv("FASTFLOW_FIELD_BUDGET_MB", value)
    ref = torch.rand(8, 3)
    with pytest.raises(ValueError, match="FASTFLOW_FIELD_BUDGET_MB must be a finite number"):
        fastflow.Poisson().posterior_mean(ref, 0.5, ref, backend="torch")


@pytest.mark.parametrize("var", ["FASTFLOW_DISABLE_C", "FASTFLOW_NVTX"])
def test_boolean_variables_follow_one_rule(var, monkeypatch):
    from fastflow._core import config

    for raw, want in (("1", True), ("TRUE", True), (" on ", True), ("0", False), ("", False), ("no", False)):
        monkeypatch.setenv(var, raw)
        assert config.flag(var) is want
    monkeypatch.setenv(var, "maybe")
    with pytest.raises(ValueError, match=f"{var} must be a boolean"):
        config.flag(var)


def test_hyperparameters_with_tiny_sigma():
    data = torch.rand(100, 3072) * 2 - 1
    hp = fastflow.pfgm.hyperparameters(data, sigma=1e-200)
    assert hp["M"] > 291 and math.isfinite(hp["z_max"]) and math.isfinite(hp["upper_norm"])
    official = fastflow.pfgm.hyperparameters(data)  # unchanged where the direct formula was exact
    norm = float(data.double().norm(dim=1).mean())
    M = int(0.75 * math.log(norm ** 2 / (2 * math.sqrt(3072) * 1e-4)) / math.log(1.03)) + 1
    assert official["M"] == M and math.isclose(official["z_max"], math.sqrt(2 / math.pi) * 0.01 * 1.03 ** M)


def test_family_given_by_name_is_a_type_error():
    ref = torch.rand(8, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="family must be a fastflow family.*fastflow.Gaussian()"):
        fastflow.family_sample("gauss", ref, 4, T=1.0, t_min=0.1)
    with pytest.raises(TypeError, match="family must be a fastflow family"):
        fastflow.Oracle("gauss", ref)


@pytest.mark.parametrize("dtype, exc", [("float32", TypeError), (torch.int64, TypeError)])
def test_edm_sigmas_dtype(dtype, exc):
    with pytest.raises(exc, match="dtype must be a floating-point torch.dtype"):
        fastflow.edm_sigmas(5, dtype=dtype)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CPU-only torch")
def test_cuda_request_without_cuda_says_how_to_get_it():
    with pytest.raises(ValueError, match="device='cuda' asks for CUDA.*CPU-only build.*install a CUDA build"):
        fastflow.Gaussian().prior(4, (3,), T=1.0, device="cuda")
    with pytest.raises(ValueError, match="asks for CUDA"):
        fastflow.pfgm.prior(4, (3,), z_max=1.0, device="cuda")
    r = subprocess.run([sys.executable, "-m", "fastflow", "demo", "--device", "cuda", "--iters", "1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "asks for CUDA" in r.stderr and "install a CUDA build" in r.stderr


# ---------------------------------------------------------------------------------------------------------------
# 8. values accepted that should be refused

def test_refused_values():
    x_init = torch.randn(4, 3)
    with pytest.raises(ValueError, match="vz_max must be a finite negative number"):
        fastflow.pfgm.sample(lambda x, z: torch.zeros(4, 4), x_init, z_max=1.0, vz_max=-math.inf)
    path = torch.randn(5, 4, 3)
    path[2, 1, 0] = math.nan
    with pytest.raises(ValueError, match="path contains NaN"):
        fastflow.straightness(path)
    ref = torch.rand(8, 3)
    with pytest.raises(ValueError, match="precision='tf32' needs CUDA"):
        fastflow.Gaussian().posterior_mean(ref, 0.5, ref, precision="tf32")
    with pytest.raises(ValueError, match="x and ref must have the same dtype"):
        fastflow.Gaussian().posterior_mean(ref, 0.5, ref.double())
    with pytest.raises(ValueError, match="x and ref must have the same dtype"):
        fastflow.pfgmpp_target(ref.half(), 0.5, ref, D=4)


# ---------------------------------------------------------------------------------------------------------------
# 9. concurrent precisions left torch's process-wide matmul flag wrong

def test_matmul_flag_restored_under_concurrency():
    """Threads entering the precision context for CUDA ("tf32" and "ieee" interleaved, with sleeps inside) leave
    the flag as it was; each block sees the value it asked for. (The flag is settable without a GPU.)"""
    m = torch.backends.cuda.matmul
    before = m.fp32_precision
    cuda = torch.device("cuda")
    seen_wrong = []

    def worker(prec, seed):
        rng = random.Random(seed)
        for _ in range(30):
            with dispatch.fp32_matmul_precision(prec, cuda):
                if m.fp32_precision != ("tf32" if prec == "tf32" else "ieee"):
                    seen_wrong.append(prec)
                threading.Event().wait(rng.random() * 1e-4)

    threads = [threading.Thread(target=worker, args=(p, i)) for i, p in enumerate(["tf32", "ieee"] * 4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert m.fp32_precision == before and not seen_wrong


def test_cpu_field_never_touches_the_matmul_flag():
    m = torch.backends.cuda.matmul
    before = m.fp32_precision
    ref = torch.rand(8, 3)
    with dispatch.fp32_matmul_precision("ieee", torch.device("cpu")):
        m.fp32_precision = "tf32"  # a user's setting inside: left alone on the way out
    assert m.fp32_precision == "tf32"
    m.fp32_precision = before
    fastflow.Gaussian().posterior_mean(ref, 0.5, ref, precision="bf16")
    assert m.fp32_precision == before


# ---------------------------------------------------------------------------------------------------------------
# 10. log_likelihood's defaults over the field engine

def test_log_likelihood_defaults_work_with_the_field_engine():
    """The default derivative="auto" takes autograd through the fast backends (their streamed backward,
    fastflow/field/autograd.py) and through the reference backend; both give the same log-likelihood."""
    ref = torch.rand(16, 4, dtype=torch.float64) * 2 - 1
    fam = fastflow.Gaussian()

    def prior(y):
        return torch.distributions.Normal(0.0, 10.0).log_prob(y).sum(1)

    fast = fastflow.log_likelihood(lambda x, t: fam.velocity(x, t, ref), ref[:3] + 0.1, 0.1, 10.0, prior)
    exact = fastflow.log_likelihood(lambda x, t: fam.velocity(x, t, ref, backend="reference"), ref[:3] + 0.1,
                                    0.1, 10.0, prior)
    print(fast.logp, exact.logp)
    assert fast.derivative == "autograd" and exact.derivative == "autograd"
    assert torch.allclose(fast.logp, exact.logp, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# 11. the demo checks its optional dependencies before any work

def test_demo_checks_optional_dependencies_first(monkeypatch, tmp_path):
    from fastflow.apps.demo import main as demo_run

    monkeypatch.setitem(demo_run.OPTIONAL, "fastflow_no_such_module", "no-such-package")
    cfg = demo_run.DemoConfig(iters=10**9, out=str(tmp_path / "out"))
    with pytest.raises(ImportError, match="fastflow demo needs no-such-package"):
        demo_run.run(cfg)
    assert not (tmp_path / "out").exists()  # refused before any work
