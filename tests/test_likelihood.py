"""fastflow.log_likelihood: Gaussian paths with known densities (exact trace and Hutchinson, whose error law is
known too), linear and nonlinear ODEs with closed-form divergence integrals, per-row probes under compaction,
finite differences, the empirical-field oracle as f, dtypes, no_grad / inference_mode, and every bad input."""
import math
import warnings

import pytest
import torch

import fastflow
from fastflow import likelihood as L

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest.py)


# ----------------------------------------------------------------------------------------------------------------
# Problems with known answers

def gaussian_problem(d, *, full, seed=0, dtype=F64):
    """Data x0 ~ N(0, Sigma), Sigma = Q diag(lam) Q^T; the VE path p_t = N(0, Sigma + t^2 I) has the exact velocity
    f(x, t) = t (Sigma + t^2 I)^-1 x. ``full=False``: Sigma = s^2 I with s = 0.7 (f = t x / (s^2 + t^2))."""
    g = torch.Generator().manual_seed(seed)
    if full:
        Q, _ = torch.linalg.qr(torch.randn(d, d, dtype=F64, generator=g))
        lam = torch.rand(d, dtype=F64, generator=g) * 2 + 0.1
    else:
        Q, lam = torch.eye(d, dtype=F64), torch.full((d,), 0.49, dtype=F64)

    def f(x, t):
        y = x @ Q.to(x.dtype)
        return ((t[:, None] / (lam.to(x.dtype) + t[:, None] ** 2)) * y) @ Q.T.to(x.dtype)

    def logn(x, t):
        """log N(x; 0, Sigma + t^2 I), (B,) float64."""
        y = x.to(F64) @ Q
        v = lam + t * t
        return -0.5 * (d * math.log(2 * math.pi) + torch.log(v).sum() + (y * y / v).sum(1))

    def sample(B, gen):
        return ((torch.randn(B, d, dtype=F64, generator=gen) * lam.sqrt()) @ Q.T).to(dtype)

    def hutchinson_std(t0, t1):
        """std of eps^T M eps - tr M for one Rademacher probe, M = int_{t0}^{t1} J dt = 1/2 log((Sigma + t1^2) /
        (Sigma + t0^2)) (J is symmetric): sqrt(2 sum_{i != j} M_ij^2)."""
        M = Q @ torch.diag(0.5 * torch.log((lam + t1 ** 2) / (lam + t0 ** 2))) @ Q.T
        return math.sqrt(2 * float((M ** 2).sum() - (M.diag() ** 2).sum()))

    return f, logn, sample, hutchinson_std


T = 50.0


@pytest.mark.parametrize("d", [2, 5])
@pytest.mark.parametrize("t0", [1e-3, 0.0])
@pytest.mark.parametrize("full", [False, True], ids=["isotropic", "fullcov"])
def test_gaussian_known_answer_exact(d, t0, full):
    f, logn, sample, _ = gaussian_problem(d, full=full)
    x = sample(64, torch.Generator().manual_seed(1))
    res = fastflow.log_likelihood(f, x, t0, T, lambda y: logn(y, T), divergence="exact")
    ref = logn(x, t0)
    err = (res.logp - ref).abs().max().item()
    print(f"d={d} t0={t0} max |logp - analytic| = {err:.2e}, mean nfe {res.nfe.float().mean():.0f}")
    assert res.logp.dtype == F64 and res.logp.shape == (64,)
    assert res.success.all()
    assert err < 1e-4
    torch.testing.assert_close(res.logp, res.prior_logp + res.delta_logp, rtol=0, atol=0)
    assert not res.logp.requires_grad and not res.x_T.requires_grad


def test_gaussian_default_divergence_is_exact_for_small_d():
    f, logn, sample, _ = gaussian_problem(5, full=True)
    x = sample(16, torch.Generator().manual_seed(1))
    a = fastflow.log_likelihood(f, x, 1e-3, T, lambda y: logn(y, T))
    b = fastflow.log_likelihood(f, x, 1e-3, T, lambda y: logn(y, T), divergence="exact")
    torch.testing.assert_close(a.logp, b.logp, rtol=0, atol=0)
    assert L.EXACT_MAX_DIM == 16


def test_hutchinson_unbiased_and_error_shrinks_like_inverse_sqrt_probes():
    """d = 64, B = 256, full covariance (off-diagonal Jacobian, so one probe is noisy): the per-sample error has
    mean 0 and std sqrt(2 sum_{i!=j} M_ij^2 / P) exactly (fixed probes along each trajectory)."""
    d, B, t0 = 64, 256, 1e-2
    f, logn, sample, hstd = gaussian_problem(d, full=True)
    x = sample(B, torch.Generator().manual_seed(1))
    ref = logn(x, t0)
    pred1 = hstd(t0, T)
    stds = {}
    for P in (1, 16):
        res = fastflow.log_likelihood(f, x, t0, T, lambda y: logn(y, T), divergence="hutchinson", n_probes=P,
                                      generator=torch.Generator().manual_seed(2))
        err = res.logp - ref
        mean, std = err.mean().item(), err.std().item()
        se = pred1 / math.sqrt(P * B)
        stds[P] = std
        print(f"P={P}: mean err {mean:.4f} (standard error {se:.4f}), std {std:.4f} (predicted "
              f"{pred1 / math.sqrt(P):.4f})")
        assert res.success.all()
        assert abs(mean) < 4 * se
        assert 0.75 < std / (pred1 / math.sqrt(P)) < 1.3
    assert 3.0 < stds[1] / stds[16] < 5.3  # sqrt(16) = 4
    # d = 64 > EXACT_MAX_DIM: the default is Hutchinson, so it is noisy (not the exact answer)
    res = fastflow.log_likelihood(f, x[:8], t0, T, lambda y: logn(y, T), generator=torch.Generator().manual_seed(3))
    assert (res.logp - ref[:8]).abs().max() > 1e-2


def test_hutchinson_exact_for_diagonal_jacobian():
    """Rademacher probes have eps^T D eps = tr D for diagonal D: no noise at all, whatever n_probes."""
    f, logn, sample, _ = gaussian_problem(32, full=False)
    x = sample(32, torch.Generator().manual_seed(1))
    res = fastflow.log_likelihood(f, x, 1e-3, T, lambda y: logn(y, T), divergence="hutchinson", rtol=1e-7, atol=1e-7)
    assert (res.logp - logn(x, 1e-3)).abs().max() < 1e-4


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_linear_ode_trace(direction):
    """f = A x with a fixed non-symmetric A: div f = tr A, so delta_logp = tr(A) (t1 - t0);
    x_T = expm(A (t1 - t0)) x."""
    g = torch.Generator().manual_seed(3)
    d = 4
    A = torch.randn(d, d, dtype=F64, generator=g) * 0.5
    x = torch.randn(8, d, dtype=F64, generator=g)
    t0, t1 = (0.2, 1.7) if direction == "forward" else (1.7, 0.2)
    res = fastflow.log_likelihood(lambda y, t: y @ A.T, x, t0, t1, lambda y: torch.zeros(y.shape[0], dtype=F64))
    expect = torch.full((8,), float(torch.trace(A)) * (t1 - t0), dtype=F64)
    print(f"{direction}: delta_logp err {(res.delta_logp - expect).abs().max():.2e}")
    torch.testing.assert_close(res.delta_logp, expect, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(res.x_T, x @ torch.linalg.matrix_exp(A * (t1 - t0)).T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(res.logp, expect)  # prior_logp = 0


def test_linear_ode_hutchinson_probes_follow_rows_under_compaction():
    """Per-sample end times make odeint drop rows at different steps. For f = A x the Hutchinson rate
    mean_p eps_p^T A eps_p is constant along a trajectory if (and only if) each row keeps its own probes, so
    doubling every interval (same generator seed, hence the same probes) must exactly double delta_logp."""
    g = torch.Generator().manual_seed(4)
    d, B = 24, 12
    A = torch.randn(d, d, dtype=F64, generator=g) / math.sqrt(d)
    x = torch.randn(B, d, dtype=F64, generator=g)
    t1 = torch.linspace(0.1, 1.2, B, dtype=F64)
    out = []
    for scale in (1.0, 2.0):
        res = fastflow.log_likelihood(lambda y, t: y @ A.T, x, 0.0, scale * t1,
                                      lambda y: torch.zeros(B, dtype=F64), divergence="hutchinson", n_probes=2,
                                      generator=torch.Generator().manual_seed(5))
        assert res.success.all()
        out.append(res.delta_logp)
    assert len(set(res.nfe.tolist())) > 1  # rows really left the batch at different times
    torch.testing.assert_close(out[1], 2 * out[0], rtol=1e-9, atol=1e-9)
    # and the rates differ between rows (the probes are per row, not one shared probe)
    rates = out[0] / t1
    assert rates.std() > 1e-3


def cubic_problem(d, seed=0):
    """f(x) = Q g(Q^T x), g_k(y) = -y_k^3: nonlinear with a non-diagonal Jacobian. In y = Q^T x the coordinates
    decouple, y_k(t) = y_k / sqrt(1 + 2 y_k^2 t), and div f = -3 |y|^2, so
    int_{t0}^{t1} div f dt = -3/2 sum_k log(1 + 2 y_k(t0)^2 (t1 - t0))."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, dtype=F64, generator=g))

    def f(x, t):
        Qx = Q.to(x.dtype)
        return -((x @ Qx) ** 3) @ Qx.T

    def delta(x, span):
        y = x.to(F64) @ Q
        return -1.5 * torch.log1p(2 * y * y * span).sum(1)

    return f, delta


@pytest.mark.parametrize("derivative", ["autograd", "finite_difference"])
def test_nonlinear_closed_form_divergence(derivative):
    d = 3
    f, delta = cubic_problem(d)
    x = torch.randn(16, d, dtype=F64)
    res = fastflow.log_likelihood(f, x, 0.5, 2.0, lambda y: torch.zeros(16, dtype=F64), derivative=derivative,
                                  rtol=1e-8, atol=1e-8)
    err = (res.delta_logp - delta(x, 1.5)).abs().max().item()
    print(f"{derivative}: max |delta_logp - closed form| = {err:.2e}")
    assert err < 1e-6


def test_nonlinear_hutchinson_unbiased():
    """The cubic field at d = 8 with one probe: mean error over 256 samples within 4 standard errors of 0."""
    d, B = 8, 256
    f, delta = cubic_problem(d, seed=1)
    x = torch.randn(B, d, dtype=F64) * 0.7
    res = fastflow.log_likelihood(f, x, 0.0, 1.0, lambda y: torch.zeros(B, dtype=F64), divergence="hutchinson",
                                  generator=torch.Generator().manual_seed(6))
    err = res.delta_logp - delta(x, 1.0)
    mean, se = err.mean().item(), err.std().item() / math.sqrt(B)
    print(f"mean err {mean:.4f}, standard error {se:.4f}")
    assert err.std() > 1e-3  # the estimator is noisy here, so the test has teeth
    assert abs(mean) < 4 * se


def test_finite_difference_matches_autograd_hutchinson():
    """Same probes (same seed), two ways to take eps^T J eps: agree to the finite-difference error."""
    f, logn, sample, _ = gaussian_problem(20, full=True)
    x = sample(16, torch.Generator().manual_seed(1))
    kw = dict(divergence="hutchinson", n_probes=3)
    a = fastflow.log_likelihood(f, x, 1e-2, T, lambda y: logn(y, T), generator=torch.Generator().manual_seed(7), **kw)
    b = fastflow.log_likelihood(f, x, 1e-2, T, lambda y: logn(y, T), generator=torch.Generator().manual_seed(7),
                                derivative="finite_difference", **kw)
    print(f"max |fd - autograd| = {(a.logp - b.logp).abs().max():.2e}")
    torch.testing.assert_close(a.logp, b.logp, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# dtypes, the empirical-field oracle, grad modes

def test_float32_input():
    f, logn, sample, _ = gaussian_problem(3, full=True, dtype=torch.float32)
    x = sample(32, torch.Generator().manual_seed(1))
    res = fastflow.log_likelihood(f, x, 1e-2, T, lambda y: logn(y, T))
    err = (res.logp.double() - logn(x, 1e-2)).abs().max().item()
    print(f"float32: max |logp - analytic| = {err:.2e}")
    assert res.logp.dtype == torch.float32 and res.delta_logp.dtype == torch.float32
    assert res.x_T.dtype == torch.float32 and res.x_T.shape == x.shape
    assert err < 1e-3


def test_float16_input_runs():
    f, logn, sample, _ = gaussian_problem(2, full=False, dtype=torch.float16)
    x = sample(8, torch.Generator().manual_seed(1))
    res = fastflow.log_likelihood(f, x, 0.1, 5.0, lambda y: logn(y, 5.0), rtol=1e-3, atol=1e-3)
    assert res.logp.dtype == torch.float32 and res.x_T.dtype == torch.float16
    assert (res.logp.double() - logn(x, 0.1)).abs().max() < 0.05


def test_image_shaped_x():
    """f gets x in its own shape (B, C, H, W); the flattening is internal."""
    seen = []

    def f(x, t):
        seen.append(tuple(x.shape[1:]))
        return -x * t.reshape(-1, 1, 1, 1)

    x = torch.randn(4, 2, 3, 3, dtype=F64)
    res = fastflow.log_likelihood(f, x, 0.0, 1.0, lambda y: torch.zeros(4, dtype=F64), divergence="exact")
    assert set(seen) == {(2, 3, 3)} and res.x_T.shape == x.shape
    # to the solver's tolerance (rtol = atol = 1e-5 by default)
    torch.testing.assert_close(res.delta_logp, torch.full((4,), -18 * 0.5, dtype=F64), rtol=1e-4,
                               atol=1e-5)  # -d t^2 / 2
    torch.testing.assert_close(res.x_T, x * math.exp(-0.5), rtol=1e-4, atol=1e-5)


def oracle_problem(d, dtype, backend):
    g = torch.Generator().manual_seed(8)
    ref = torch.randn(32, d, dtype=F64, generator=g).to(dtype)
    x = ref[:16] + 0.1 * torch.randn(16, d, dtype=F64, generator=g).to(dtype)
    fam = fastflow.Gaussian()
    Tp = 20.0

    def f(y, t):
        return fam.velocity(y, t, ref, backend=backend)

    def prior(y):
        return torch.distributions.Normal(0.0, Tp).log_prob(y.double()).sum(1)

    return f, x, Tp, prior


def test_empirical_field_oracle_exact_vs_hutchinson():
    """The exact empirical Gaussian field as f (d = 4): finite, and Hutchinson agrees with the exact trace within
    its own noise (mean difference within 4 standard errors)."""
    f, x, Tp, prior = oracle_problem(4, F64, "reference")  # the reference backend is differentiable
    ex = fastflow.log_likelihood(f, x, 0.05, Tp, prior, divergence="exact")
    assert torch.isfinite(ex.logp).all() and ex.success.all()
    diffs = []
    for seed in range(4):
        hu = fastflow.log_likelihood(f, x, 0.05, Tp, prior, divergence="hutchinson", n_probes=2,
                                     generator=torch.Generator().manual_seed(seed))
        diffs.append(hu.logp - ex.logp)
    diff = torch.cat(diffs)
    mean, se = diff.mean().item(), diff.std().item() / math.sqrt(diff.numel())
    print(f"oracle: hutchinson - exact mean {mean:.4f} (standard error {se:.4f}), std {diff.std():.4f}")
    assert abs(mean) < 4 * se + 1e-6


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["f64", "f32"])
def test_empirical_field_oracle_default_backend_finite_difference(dtype):
    """The default (fused, non-differentiable) field backend runs through derivative='finite_difference' and
    matches autograd on the differentiable reference backend."""
    f_ref, x, Tp, prior = oracle_problem(4, F64, "reference")
    f_fast, x_fast, _, _ = oracle_problem(4, dtype, None)
    a = fastflow.log_likelihood(f_ref, x, 0.05, Tp, prior)
    # float32: the default step 5e-3 is too coarse for this sharp field at t = 0.05 (one sample off by 6e-2): fd_step
    fd_step = None if dtype == F64 else 5e-4
    b = fastflow.log_likelihood(f_fast, x_fast, 0.05, Tp, prior, derivative="finite_difference", fd_step=fd_step)
    err = (a.logp - b.logp.double()).abs().max().item()
    print(f"{dtype}: max |fd(default backend) - autograd(reference)| = {err:.2e}")
    assert b.logp.dtype == (F64 if dtype == F64 else torch.float32)
    assert err < (1e-5 if dtype == F64 else 5e-3)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_runs_under_no_grad_and_inference_mode(mode):
    f, logn, sample, _ = gaussian_problem(3, full=True)
    x = sample(8, torch.Generator().manual_seed(1))
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx:
        res = fastflow.log_likelihood(f, x, 1e-3, T, lambda y: logn(y, T))
    assert (res.logp - logn(x, 1e-3)).abs().max() < 1e-4
    assert not res.logp.requires_grad


def test_x_requiring_grad_is_detached():
    f, logn, sample, _ = gaussian_problem(2, full=False)
    x = sample(4, torch.Generator().manual_seed(1)).requires_grad_(True)
    res = fastflow.log_likelihood(f, x, 1e-3, T, lambda y: logn(y, T))
    assert not res.logp.requires_grad and not res.x_T.requires_grad and x.grad is None


def test_zero_length_interval_and_failure():
    f, logn, sample, _ = gaussian_problem(2, full=False)
    x = sample(4, torch.Generator().manual_seed(1))
    res = fastflow.log_likelihood(f, x, 1.0, 1.0, lambda y: logn(y, 1.0))
    torch.testing.assert_close(res.logp, logn(x, 1.0), rtol=0, atol=0)
    assert (res.nfe == 0).all() and (res.delta_logp == 0).all()
    with pytest.warns(RuntimeWarning, match="did not reach t1"):
        res = fastflow.log_likelihood(f, x, 1e-3, T, lambda y: logn(y, T), max_steps=2)
    assert not res.success.any() and torch.isnan(res.logp).all() and torch.isfinite(res.delta_logp).all()


def test_bpd():
    logp = torch.tensor([-10 * math.log(2.0), 0.0], dtype=F64)
    torch.testing.assert_close(L.bpd(logp, 10), torch.tensor([1.0, 0.0], dtype=F64))
    torch.testing.assert_close(L.bpd(logp, 10, offset=7.0), torch.tensor([8.0, 7.0], dtype=F64))
    f, logn, sample, _ = gaussian_problem(2, full=False)
    res = fastflow.log_likelihood(f, sample(3, torch.Generator().manual_seed(1)), 1e-3, T, lambda y: logn(y, T))
    torch.testing.assert_close(res.bpd(offset=7.0), -res.logp / (2 * math.log(2.0)) + 7.0)
    with pytest.raises(ValueError, match="d must be"):
        L.bpd(logp, 0)
    with pytest.raises(TypeError, match="logp"):
        L.bpd([1.0], 2)


def test_exports():
    assert fastflow.log_likelihood is L.log_likelihood
    assert fastflow.LikelihoodResult is L.LikelihoodResult
    assert "log_likelihood" in fastflow.__all__ and "LikelihoodResult" in fastflow.__all__


# ----------------------------------------------------------------------------------------------------------------
# Bad inputs

def _f(x, t):
    return -x


def _prior(y):
    return torch.zeros(y.shape[0], dtype=y.dtype)


X = torch.randn(4, 3, dtype=F64)

BAD = {
    "f_not_callable": (dict(f=3), TypeError, "f must be callable"),
    "x_not_tensor": (dict(x=[[1.0, 2.0]]), TypeError, "x must be a torch.Tensor"),
    "x_int": (dict(x=torch.ones(4, 3, dtype=torch.long)), TypeError, "x must be a floating-point"),
    "x_nan": (dict(x=torch.tensor([[1.0, math.nan]])), ValueError, "x contains NaN"),
    "x_inf": (dict(x=torch.tensor([[1.0, math.inf]])), ValueError, "x contains NaN"),
    "x_0d": (dict(x=torch.tensor(1.0)), ValueError, "x must have at least 1"),
    "x_empty_rows": (dict(x=torch.ones(4, 0)), ValueError, "x must have at least one element"),
    "prior_not_callable": (dict(prior_logp="normal"), TypeError, "prior_logp must be callable"),
    "prior_wrong_shape": (dict(prior_logp=lambda y: torch.zeros(y.shape[0], 1)), ValueError,
                          r"prior_logp must return shape \(B,\)"),
    "prior_scalar": (dict(prior_logp=lambda y: torch.zeros(())), ValueError, r"prior_logp must return shape"),
    "prior_not_tensor": (dict(prior_logp=lambda y: 0.0), TypeError, "prior_logp must return a torch.Tensor"),
    "prior_int": (dict(prior_logp=lambda y: torch.zeros(y.shape[0], dtype=torch.long)), TypeError,
                  "prior_logp must return a floating-point"),
    "prior_nan": (dict(prior_logp=lambda y: torch.full((y.shape[0],), math.nan)), ValueError,
                  "prior_logp returned NaN"),
    "divergence_unknown": (dict(divergence="trace"), ValueError, "unknown divergence 'trace'"),
    "divergence_type": (dict(divergence=1), TypeError, "divergence must be a string"),
    "fd_step_zero": (dict(derivative="finite_difference", fd_step=0.0), ValueError, "fd_step must be"),
    "fd_step_str": (dict(fd_step="1e-3"), TypeError, "fd_step must be"),
    "derivative_unknown": (dict(derivative="jvp"), ValueError, "unknown derivative 'jvp'"),
    "n_probes_zero": (dict(n_probes=0), ValueError, "n_probes must be >= 1"),
    "n_probes_float": (dict(n_probes=2.0), TypeError, "n_probes must be an int"),
    "n_probes_bool": (dict(n_probes=True), TypeError, "n_probes must be an int"),
    "generator_type": (dict(generator=0), TypeError, "generator must be a torch.Generator"),
    "t0_nan": (dict(t0=math.nan), ValueError, "t0 must be finite"),
    "t0_str": (dict(t0="0"), TypeError, "t0 must be a float"),
    "t0_bool": (dict(t0=True), TypeError, "t0 must be a float"),
    "t1_inf": (dict(t1=math.inf), ValueError, "t1 must be finite"),
    "t1_shape": (dict(t1=torch.ones(3)), ValueError, r"t1 must be a float or a tensor of shape \(B,\)"),
    "t1_tensor_nan": (dict(t1=torch.tensor([1.0, math.nan, 1.0, 1.0])), ValueError, "t1 contains NaN"),
    "t0_complex": (dict(t0=torch.zeros(4, dtype=torch.complex64)), TypeError, "t0 must be a float or a real"),
    "method_unknown": (dict(method="rk45"), ValueError, "unknown method"),
    "rtol_negative": (dict(rtol=-1.0), ValueError, "rtol"),
    "f_wrong_shape": (dict(f=lambda x, t: x[:, :2]), ValueError, "f returned shape"),
    "f_not_tensor": (dict(f=lambda x, t: 1.0), TypeError, "f must return a torch.Tensor"),
    "f_detached": (dict(f=lambda x, t: (-x).detach(), derivative="autograd"), ValueError, "finite_difference"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_input(case):
    kw, exc, match = BAD[case]
    args = dict(f=_f, x=X, t0=0.0, t1=1.0, prior_logp=_prior)
    args.update(kw)
    with pytest.raises(exc, match=match):
        fastflow.log_likelihood(args.pop("f"), args.pop("x"), args.pop("t0"), args.pop("t1"), args.pop("prior_logp"),
                                **args)


def test_autograd_failure_inside_f_gets_a_hint():
    def f(x, t):
        out = torch.empty_like(x)
        return torch.neg(x, out=out)  # out= refuses autograd: RuntimeError from torch

    with pytest.raises(RuntimeError) as info:
        fastflow.log_likelihood(f, X, 0.0, 1.0, _prior, derivative="autograd")
    assert any("finite_difference" in n for n in getattr(info.value, "__notes__", []))
    # the default ("auto") takes finite differences for it, and for an f that detaches
    for g in (f, lambda x, t: (-x).detach()):
        res = fastflow.log_likelihood(g, X, 0.0, 1.0, _prior)
        assert res.derivative == "finite_difference"
        torch.testing.assert_close(res.delta_logp, torch.full((4,), -3.0, dtype=F64))
    # and the finite-difference path takes the same f: div(-x) = -3
    res = fastflow.log_likelihood(f, X, 0.0, 1.0, _prior, derivative="finite_difference")
    torch.testing.assert_close(res.delta_logp, torch.full((4,), -3.0, dtype=F64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastflow.log_likelihood(_f, X, 0.0, 1.0, _prior)  # no warning on success
