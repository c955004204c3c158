"""fastflow.schedulers and fastflow.timesteps (issue 12 §2, first part): each schedule against its formula written
here in float64, derivatives against central differences and autograd, flow_matching's time reversal, and the
training-time laws by Kolmogorov-Smirnov against their exact CDFs."""
import math

import pytest
import torch
from scipy import stats

import fastflow
from fastflow import schedulers as S

T = torch.linspace(0.0, 1.0, 201, dtype=torch.float64)
INNER = T[1:-1]

# (scheduler, alpha(t), sigma(t)) in fastflow's convention (data at t = 0), from the formulas of the docstring
FORMULAS = [
    (S.CondOT(), lambda t: 1 - t, lambda t: t),
    (S.Cosine(), lambda t: torch.cos(math.pi * t / 2), lambda t: torch.sin(math.pi * t / 2)),
    (S.Polynomial(3), lambda t: (1 - t) ** 3, lambda t: 1 - (1 - t) ** 3),
    (S.Polynomial(0.5), lambda t: (1 - t) ** 0.5, lambda t: 1 - (1 - t) ** 0.5),
    (S.LinearVP(), lambda t: 1 - t, lambda t: torch.sqrt(1 - (1 - t) ** 2)),
    (S.VP(0.1, 20.0), lambda t: torch.exp(-0.5 * (0.1 * t + 9.95 * t * t)),
     lambda t: torch.sqrt(1 - torch.exp(-(0.1 * t + 9.95 * t * t)))),
]


@pytest.mark.parametrize("sched,alpha,sigma", FORMULAS, ids=lambda v: repr(v) if isinstance(v, S.Scheduler) else "")
def test_schedules_match_their_formulas(sched, alpha, sigma):
    c = sched(T)
    torch.testing.assert_close(c.alpha, alpha(T), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(c.sigma, sigma(T), rtol=1e-12, atol=1e-14)
    h = 1e-6  # central differences on the interior, away from the end points where a derivative may be infinite
    inner = INNER[(INNER > 1e-3) & (INNER < 1 - 1e-3)]
    ci = sched(inner)
    torch.testing.assert_close(ci.d_alpha, (alpha(inner + h) - alpha(inner - h)) / (2 * h), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ci.d_sigma, (sigma(inner + h) - sigma(inner - h)) / (2 * h), rtol=1e-6, atol=1e-7)
    if not isinstance(sched, S.VP):  # VP stops at alpha_1 = exp(-(b0 + b1) / 4)
        assert float(c.alpha[0]) == 1 and float(c.sigma[0]) == 0
        assert abs(float(c.alpha[-1])) < 1e-15 and float(c.sigma[-1]) == 1


@pytest.mark.parametrize("sched", [S.CondOT(), S.Cosine(), S.Polynomial(2.5), S.LinearVP(), S.VP()])
def test_builtin_schedules_pass_the_construction_checks(sched):
    # built without them (so that a path can be built inside torch.compile); the checks hold all the same
    assert not sched._checks
    sched._check()


def test_autograd_derivative_is_differentiable_in_t():
    # a Scheduler from callables: d sigma / dt by autograd, itself differentiable (create_graph) where t needs grad
    sched = S.Scheduler(lambda t: 1 - t**3, lambda t: t**3)
    t = torch.tensor([0.2, 0.7], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(sched(t).d_sigma.sum(), t)
    torch.testing.assert_close(g, 6 * t.detach())


def test_vp_end_point_and_float32():
    c = S.VP()(torch.tensor([1.0], dtype=torch.float64))
    assert float(c.alpha) == pytest.approx(math.exp(-(0.1 + 20.0) / 4), rel=1e-12)
    # sigma = sqrt(-expm1(-T)) keeps its relative precision near t = 0, where 1 - exp(-T) cancels in float32
    t = torch.tensor([1e-6], dtype=torch.float32)
    want = math.sqrt(-math.expm1(-(0.1e-6 + 9.95e-12)))
    assert float(S.VP()(t).sigma) == pytest.approx(want, rel=1e-6)


def test_flow_matching_time_reversal():
    """flow_matching's schedulers at time s (data at s = 1) are ours at t = 1 - s: its CondOT has alpha = s,
    sigma = 1 - s, its Cosine alpha = sin(pi s / 2), sigma = cos(pi s / 2), its VP T(s) = (1 - s)^2 (b1 - b0) / 2
    + (1 - s) b0 (formulas from its documentation)."""
    s = INNER
    for ours, alpha_fm, sigma_fm in [
        (S.CondOT(), s, 1 - s),
        (S.Cosine(), torch.sin(math.pi * s / 2), torch.cos(math.pi * s / 2)),
        (S.VP(), torch.exp(-0.5 * (0.5 * (1 - s) ** 2 * 19.9 + (1 - s) * 0.1)),
         torch.sqrt(1 - torch.exp(-(0.5 * (1 - s) ** 2 * 19.9 + (1 - s) * 0.1)))),
    ]:
        c = ours(1 - s)
        torch.testing.assert_close(c.alpha, alpha_fm, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(c.sigma, sigma_fm, rtol=1e-12, atol=1e-14)


def test_scheduler_from_callables_takes_derivatives_by_autograd():
    user = S.Scheduler(lambda t: torch.cos(math.pi * t / 2), lambda t: torch.sin(math.pi * t / 2))
    c, want = user(INNER), S.Cosine()(INNER)
    for k in ("alpha", "sigma", "d_alpha", "d_sigma"):
        torch.testing.assert_close(getattr(c, k), getattr(want, k), rtol=1e-12, atol=1e-14)
    c32 = user(INNER.float())
    assert c32.d_sigma.dtype == torch.float32 and not c32.d_sigma.requires_grad
    given = S.Scheduler(lambda t: 1 - t, lambda t: t, d_alpha=lambda t: -torch.ones_like(t),
                        d_sigma=lambda t: torch.ones_like(t))
    assert torch.equal(given(INNER).d_sigma, torch.ones_like(INNER))
    scalar = user(0.5)  # a Python float gives 0-d tensors
    assert scalar.alpha.dim() == 0 and float(scalar.alpha) == pytest.approx(math.cos(math.pi / 4))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(alpha=lambda t: 1 - t / 2, sigma=lambda t: t), ValueError, r"alpha\(1\) must be 0"),
    (dict(alpha=lambda t: 1 - t, sigma=lambda t: 0.5 + t / 2), ValueError, r"sigma\(0\) must be 0"),
    (dict(alpha=lambda t: 0.9 - 0.9 * t, sigma=lambda t: t), ValueError, r"alpha\(0\) must be 1"),
    (dict(alpha=lambda t: 1 - t, sigma=lambda t: t * 0.99), ValueError, r"sigma\(1\) must be 1"),
    (dict(alpha=lambda t: 1 - t, sigma=lambda t: t / (t - 0.5) * 0 + t), ValueError, "not finite at t = \\[0.5\\]"),
    (dict(alpha=lambda t: 1 - t, sigma=lambda t: t.sum()), ValueError, "shaped like t"),
    (dict(alpha=1.0, sigma=lambda t: t), TypeError, "alpha must be a callable"),
    (dict(alpha=lambda t: 1 - t, sigma=lambda t: t, d_sigma=3), TypeError, "d_sigma must be a callable"),
])
def test_bad_schedulers_are_refused(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        S.Scheduler(**kwargs)


def test_bad_parameters():
    for bad in (0, -1.0, float("inf"), True, "2"):
        with pytest.raises(ValueError, match="n must be a finite number > 0"):
            S.Polynomial(bad)
    with pytest.raises(ValueError, match="beta_min <= beta_max"):
        S.VP(5.0, 1.0)
    with pytest.raises(ValueError, match="beta_min must be"):
        S.VP(-0.1, 1.0)
    with pytest.raises(TypeError, match="t must be a floating-point"):
        S.CondOT()(torch.tensor([1, 2]))


# ---------------------------------------------------------------------------------------------------------------
# training times

def _ks(sample, cdf):
    return stats.kstest(sample.double().numpy(), cdf).pvalue


def test_timesteps_laws():
    gen = torch.Generator().manual_seed(12)
    n = 20000
    u = fastflow.timesteps(n, generator=gen, dtype=torch.float64)
    assert _ks(u, stats.uniform.cdf) > 1e-3 and bool(((u > 0) & (u < 1)).all())
    ln = fastflow.timesteps(n, "logit_normal", mean=0.5, std=0.8, generator=gen, dtype=torch.float64)
    assert _ks(ln, lambda t: stats.norm.cdf((torch.logit(torch.as_tensor(t)).numpy() - 0.5) / 0.8)) > 1e-3
    sig = fastflow.timesteps(n, "lognormal", P_mean=-1.2, P_std=1.2, generator=gen, dtype=torch.float64)
    assert _ks(sig, stats.lognorm(s=1.2, scale=math.exp(-1.2)).cdf) > 1e-3
    # and a wrong law is caught: the logit-normal sample is not uniform
    assert _ks(ln, stats.uniform.cdf) < 1e-6


def test_timesteps_generator_dtype_and_errors():
    a = fastflow.timesteps(5, "logit_normal", generator=torch.Generator().manual_seed(1))
    b = fastflow.timesteps(5, "logit_normal", generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.dtype == torch.float32 and a.shape == (5,)
    assert fastflow.timesteps(0).shape == (0,)
    with pytest.raises(ValueError, match="unknown kind 'cosine'"):
        fastflow.timesteps(3, "cosine")
    with pytest.raises(ValueError, match="std must be finite and > 0"):
        fastflow.timesteps(3, "logit_normal", std=0.0)
    with pytest.raises(ValueError, match="n must be >= 0"):
        fastflow.timesteps(-1)
    with pytest.raises(TypeError, match="dtype must be a floating-point"):
        fastflow.timesteps(3, dtype=torch.int64)


def test_loss_weights():
    sigma = torch.tensor([1e-3, 0.5, 80.0], dtype=torch.float64)
    torch.testing.assert_close(fastflow.edm_loss_weight(sigma), (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2)
    assert bool(torch.isfinite(fastflow.edm_loss_weight(torch.tensor([1e-30], dtype=torch.float64))).all())
    with pytest.raises(FloatingPointError, match="overflows torch.float32"):
        fastflow.edm_loss_weight(torch.tensor([1e-30]))
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    w = fastflow.logit_normal_weight(t, mean=0.3, std=0.7)
    inner = t[1:-1]
    want = stats.norm.pdf((torch.logit(inner).numpy() - 0.3) / 0.7) / (0.7 * inner.numpy() * (1 - inner.numpy()))
    assert torch.allclose(w[1:-1], torch.as_tensor(want), rtol=1e-12) and float(w[0]) == 0 and float(w[-1]) == 0
    # it integrates to 1 over (0, 1)
    grid = torch.linspace(0, 1, 200001, dtype=torch.float64)
    assert float(torch.trapezoid(fastflow.logit_normal_weight(grid, 0.3, 0.7), grid)) == pytest.approx(1, abs=1e-6)
    with pytest.raises(ValueError, match="sigma contains NaN"):
        fastflow.edm_loss_weight(torch.tensor([float("nan")]))
