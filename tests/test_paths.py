"""fastflow.AffinePath (issue 12 §2, Gaussian source): the exact velocity against a float64 transcription of its
formula, RectifiedFlow's numbers for CondOT, the training draw and its law, and bad input."""
import math

import pytest
import torch
from scipy import stats

import fastflow
from fastflow import schedulers as S

SCHEDULERS = [S.CondOT(), S.Cosine(), S.Polynomial(2), S.LinearVP(), S.VP(),
              S.Scheduler(lambda t: (1 - t) ** 2 * (1 + 2 * t), lambda t: t ** 2 * (3 - 2 * t))]


def velocity_reference(sched, x, t, ref):
    """sum_j w_j (alpha' ref_j + sigma' (x - alpha ref_j) / sigma), w_j = softmax(-||x - alpha ref_j||^2 / 2 sigma^2),
    by direct differences in float64."""
    c = sched(t.double())
    a, s, da, ds = (v[:, None, None] for v in (c.alpha, c.sigma, c.d_alpha, c.d_sigma))
    x, ref = x.double()[:, None, :], ref.double()[None, :, :]
    logw = -((x - a * ref) ** 2).sum(-1, keepdim=True) / (2 * s * s)
    w = torch.softmax(logw, dim=1)
    return (w * (da * ref + ds * (x - a * ref) / s)).sum(1)


@pytest.mark.parametrize("sched", SCHEDULERS, ids=repr)
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_velocity_matches_its_formula(sched, backend):
    gen = torch.Generator().manual_seed(5)
    B, R, d = 7, 50, 6
    ref = torch.rand(R, d, generator=gen, dtype=torch.float64) * 2 - 1
    t = torch.tensor([0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0], dtype=torch.float64)
    c = sched(t)
    x = c.alpha[:, None] * ref[:B] + c.sigma[:, None] * torch.randn(B, d, generator=gen, dtype=torch.float64)
    want = velocity_reference(sched, x, t, ref)
    path = fastflow.AffinePath(sched)
    got64 = path.velocity(x, t, ref, backend=backend)
    torch.testing.assert_close(got64, want, rtol=1e-9, atol=1e-9)
    if backend == "torch":
        got32 = path.velocity(x.float(), t.float(), ref.float())
        err = float(((got32.double() - want).norm(dim=1) / (want.norm(dim=1) + 1)).max())  # v = 0 at t = 1 for some
        assert err < 1e-4, err


def test_condot_is_rectified_flow():
    gen = torch.Generator().manual_seed(6)
    ref = torch.randn(40, 5, generator=gen)
    x = torch.randn(8, 5, generator=gen)
    t = torch.rand(8, generator=gen) * 0.9 + 0.05
    path, rf = fastflow.AffinePath(), fastflow.RectifiedFlow()
    torch.testing.assert_close(path.velocity(x, t, ref), rf.velocity(x, t, ref), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(path.posterior_mean(x, t, ref), rf.posterior_mean(x, t, ref), rtol=0, atol=0)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    torch.testing.assert_close(path.perturb(x, t, generator=g1), rf.perturb(x, t, generator=g2))


def test_perturb_draws_the_path_law():
    """(x_t - alpha_t x0) / sigma_t ~ N(0, 1) per coordinate, for a schedule where sigma_t != t."""
    path = fastflow.AffinePath(S.Cosine())
    x0 = torch.full((4000, 3), 2.0, dtype=torch.float64)
    t = torch.full((4000,), 0.3, dtype=torch.float64)
    xt = path.perturb(x0, t, generator=torch.Generator().manual_seed(2))
    z = (xt - math.cos(0.15 * math.pi) * 2.0) / math.sin(0.15 * math.pi)
    assert stats.kstest(z.flatten().numpy(), stats.norm.cdf).pvalue > 1e-3
    wrong = (xt - 2.0 * 0.7) / 0.3  # RectifiedFlow's law would be this; it is not N(0, 1) here
    assert stats.kstest(wrong.flatten().numpy(), stats.norm.cdf).pvalue < 1e-6


def test_sample_fields_and_coupling():
    path = fastflow.AffinePath(S.VP())
    x0 = torch.randn(6, 2, 3)
    gen = torch.Generator().manual_seed(3)
    ps = path.sample(x0, generator=gen)
    assert ps.x_t.shape == x0.shape == ps.dx_t.shape == ps.x1.shape and ps.t.shape == (6,)
    assert bool(((ps.t > 0) & (ps.t < 1)).all())
    c = S.VP()(ps.t.double())
    view = (6, 1, 1)
    torch.testing.assert_close(ps.x_t, (c.alpha.reshape(view) * x0.double() + c.sigma.reshape(view) * ps.x1.double())
                               .float())
    torch.testing.assert_close(ps.dx_t, (c.d_alpha.reshape(view) * x0.double()
                                         + c.d_sigma.reshape(view) * ps.x1.double()).float())
    x1 = torch.randn(6, 2, 3)
    given = path.sample(x0, 0.5, x1=x1)
    assert torch.equal(given.x1, x1) and torch.allclose(given.t, torch.full((6,), 0.5))
    # the regression target is the velocity's: E[dx_t | x_t] is what the exact field returns (one point: exact)
    one = fastflow.AffinePath(S.Cosine()).sample(x0[:1], 0.4, x1=x1[:1])
    v = fastflow.AffinePath(S.Cosine()).velocity(one.x_t.double(), 0.4, x0[:1].double())
    torch.testing.assert_close(v.float(), one.dx_t, rtol=1e-5, atol=1e-5)


def test_bad_input():
    path = fastflow.AffinePath()
    x, ref = torch.randn(3, 2), torch.randn(5, 2)
    with pytest.raises(ValueError, match=r"t must be finite and > 0 and <= 1.0"):
        path.velocity(x, 1.5, ref)
    with pytest.raises(ValueError, match=r"t must be finite and > 0 and <= 1.0"):
        path.sample(x, torch.tensor([0.5, 0.0, 0.2]))
    with pytest.raises(ValueError, match="unknown source"):
        fastflow.AffinePath(source="student")
    with pytest.raises(TypeError, match="scheduler must be a fastflow.schedulers.Scheduler"):
        fastflow.AffinePath("cosine")
    with pytest.raises(ValueError, match="x1 must match x0"):
        path.sample(x, 0.5, x1=torch.randn(3, 3))
    with pytest.raises(ValueError, match="x0 contains NaN"):
        path.sample(torch.tensor([[float("nan"), 0.0]]))


# ---------------------------------------------------------------------------------------------------------------
# the Student-t source

def velocity_reference_t(sched, nu, x, t, ref):
    """As velocity_reference, with the Student-t density (1 + ||x - alpha ref_j||^2 / (nu sigma^2))^(-(nu+d)/2)."""
    c = sched(t.double())
    a, s, da, ds = (v[:, None, None] for v in (c.alpha, c.sigma, c.d_alpha, c.d_sigma))
    x, ref = x.double()[:, None, :], ref.double()[None, :, :]
    d = x.shape[-1]
    logw = -(nu + d) / 2 * torch.log1p(((x - a * ref) ** 2).sum(-1, keepdim=True) / (nu * s * s))
    w = torch.softmax(logw, dim=1)
    return (w * (da * ref + ds * (x - a * ref) / s)).sum(1)


@pytest.mark.parametrize("nu", [1.0, 4.5, 200.0])
@pytest.mark.parametrize("sched", [S.CondOT(), S.Cosine(), S.VP()], ids=repr)
def test_student_t_velocity_matches_its_formula(sched, nu):
    gen = torch.Generator().manual_seed(8)
    B, R, d = 6, 40, 5
    ref = torch.rand(R, d, generator=gen, dtype=torch.float64) * 2 - 1
    t = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8, 1.0], dtype=torch.float64)
    x = torch.randn(B, d, generator=gen, dtype=torch.float64)
    want = velocity_reference_t(sched, nu, x, t, ref)
    path = fastflow.AffinePath(sched, fastflow.StudentT(nu))
    for backend in ("torch", "reference"):
        torch.testing.assert_close(path.velocity(x, t, ref, backend=backend), want, rtol=1e-9, atol=1e-9)
    got32 = path.velocity(x.float(), t.float(), ref.float())
    assert float(((got32.double() - want).norm(dim=1) / (want.norm(dim=1) + 1)).max()) < 1e-4
    # the Gaussian source is the limit nu -> inf, and a different field at finite nu
    gauss = fastflow.AffinePath(sched).velocity(x, t, ref)
    gap = float((gauss - want).norm() / want.norm())
    assert gap < 0.05 if nu == 200.0 else gap > 1e-3


@pytest.mark.parametrize("nu", [1.0, 3.0])
def test_student_t_draws(nu):
    """perturb, sample and prior draw each coordinate of x1 as a Student-t(nu) (KS against scipy's CDF)."""
    path = fastflow.AffinePath(S.Cosine(), fastflow.StudentT(nu))
    gen = torch.Generator().manual_seed(9)
    n, d = 3000, 4
    x0 = torch.full((n, d), 1.5, dtype=torch.float64)
    a, s = math.cos(0.2 * math.pi), math.sin(0.2 * math.pi)
    xt = path.perturb(x0, 0.4, generator=gen)
    cdf = stats.t(nu).cdf
    assert stats.kstest(((xt - a * 1.5) / s)[:, 0].numpy(), cdf).pvalue > 1e-3
    ps = path.sample(x0, 0.4, generator=gen)
    assert stats.kstest(ps.x1[:, 1].numpy(), cdf).pvalue > 1e-3
    torch.testing.assert_close(ps.x_t, a * x0 + s * ps.x1)
    prior = path.prior(n, d, generator=gen, dtype=torch.float64)
    assert stats.kstest(prior[:, 2].numpy(), cdf).pvalue > 1e-3
    assert stats.kstest(prior[:, 2].numpy(), stats.norm.cdf).pvalue < 1e-3  # heavy tails: not the Gaussian


def test_student_t_bad_nu():
    for bad in (0, -1.0, float("inf"), float("nan"), True, "3"):
        with pytest.raises(ValueError, match="nu must be a finite number > 0"):
            fastflow.StudentT(bad)
