"""The samplers built on odeint (EDM Heun, flow, PFGM) and the exact-field oracle.

Known answers: Gaussian data N(mu, s^2 I) has closed-form denoisers and velocities, so the ODE's endpoint is known
exactly. The oracle test checks prior, field and solver together: samples integrated from each family's prior
with its exact empirical velocity land on the reference points (memorisation), and cover them uniformly
(chi-square).
"""
import math

import numpy as np
import pytest
import torch
from scipy import stats

import fastflow
from fastflow import pfgm
from fastflow.samplers import Oracle, edm_sample, edm_sigmas, family_sample, flow_sample, straightness

F64 = torch.float64


# ---------------------------------------------------------------------------------------------- EDM
def test_edm_sigmas_formula():
    s = edm_sigmas(18, 0.002, 80.0, 7.0)
    i = np.arange(18)
    want = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(s[:-1].numpy(), want, rtol=1e-14)
    assert s[-1] == 0 and s.shape == (19,) and bool((s[:-1] > s[1:]).all())
    assert float(s[0]) == pytest.approx(80) and float(s[-2]) == pytest.approx(0.002)
    np.testing.assert_allclose(edm_sigmas(1, 0.5, 2.0).numpy(), [2.0, 0.0], rtol=1e-14)


def gaussian_denoiser(mu, s):
    """E[x0 | x_sigma = x] for x0 ~ N(mu, s^2 I): mu + s^2 / (s^2 + sigma^2) (x - mu)."""
    def den(x, sigma):
        c = (s * s / (s * s + sigma * sigma)).reshape(-1, *([1] * (x.dim() - 1)))
        return mu + c * (x - mu)
    return den


@pytest.mark.parametrize("D", [None, 128.0])
def test_edm_sample_gaussian_data_known_endpoint(D):
    """x(sigma) = mu + sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_max^2) (x_T - mu). Heun on the rho-schedule is 2nd
    order: the error relative to |x_0 - mu| is < 8% at EDM's 18 steps (measured 5.5%), and each doubling of the
    steps divides it by 3 to 5.5 (measured 4.5, 4.3, 4.2 from 18 to 144 steps; 1st order would give 2)."""
    mu, s, smax = 0.7, 0.5, 80.0
    x_T = torch.randn(64, 3, 4, dtype=F64, generator=torch.Generator().manual_seed(1)) * smax
    exact = mu + s / math.sqrt(s * s + smax * smax) * (x_T - mu)
    scale = float((exact - mu).abs().max())
    errs = []
    for steps in (18, 36, 72):
        res = edm_sample(gaussian_denoiser(mu, s), x_T, sigma_max=smax, sigma_min=0.002, steps=steps, D=D)
        errs.append(float((res.x - exact).abs().max()) / scale)
        assert res.nfe.tolist() == [2 * steps - 1] * 64 and res.x.shape == x_T.shape
    print("EDM Heun relative error at 18, 36, 72 steps: " + ", ".join(f"{e:.2e}" for e in errs))
    assert errs[0] < 0.08
    assert 3 < errs[0] / errs[1] < 5.5 and 3 < errs[1] / errs[2] < 5.5


def test_edm_sample_callback_progress_and_dtype():
    seen = []
    x = torch.randn(5, 2) * 10
    res = edm_sample(gaussian_denoiser(0.0, 1.0), x, sigma_max=10.0, steps=4, callback=seen.append, progress=True)
    assert [c["i"] for c in seen] == [0, 1, 2, 3] and seen[-1]["sigma_next"] == 0.0
    assert res.x.dtype == torch.float32
    res16 = edm_sample(gaussian_denoiser(0.0, 1.0), x.to(torch.bfloat16), sigma_max=10.0, steps=4)
    assert res16.x.dtype == torch.bfloat16 and torch.isfinite(res16.x.float()).all()


def test_edm_sample_bad_input():
    x = torch.randn(3, 2)
    den = gaussian_denoiser(0.0, 1.0)
    with pytest.raises(TypeError, match="denoiser"):
        edm_sample(None, x)
    with pytest.raises(ValueError, match="x_T"):
        edm_sample(den, torch.full((3, 2), float("nan")))
    with pytest.raises(ValueError, match="denoiser must return"):
        edm_sample(lambda x, s: x[:, :1], x)
    with pytest.raises(FloatingPointError, match="denoiser returned NaN"):
        edm_sample(lambda x, s: x * float("nan"), x)
    with pytest.raises(ValueError, match="sigma_max"):
        edm_sample(den, x, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match="steps"):
        edm_sample(den, x, steps=0)
    with pytest.raises(ValueError, match="D must be"):
        edm_sample(den, x, D=0.5)


# ---------------------------------------------------------------------------------------------- flow
def rf_gaussian_velocity(mu, s):
    """Exact rectified-flow velocity for x0 ~ N(mu, s^2 I): x_t = (1-t) x0 + t eps has mean (1-t) mu and std
    sigma_t = sqrt((1-t)^2 s^2 + t^2); v = -mu + sigma_t' / sigma_t (x - (1-t) mu)."""
    def v(x, t):
        t = t.reshape(-1, *([1] * (x.dim() - 1)))
        var = (1 - t) ** 2 * s * s + t * t
        dvar_half = -(1 - t) * s * s + t  # sigma_t sigma_t'
        return -mu + dvar_half / var * (x - (1 - t) * mu)
    return v


@pytest.mark.parametrize("method,steps,tol", [("dopri5", None, 1e-6), ("rk4", 20, 1e-5), ("heun", 200, 1e-4)])
def test_flow_sample_known_endpoint(method, steps, tol):
    """The flow maps x_1 to x_0 = mu + s x_1 exactly."""
    mu, s = -0.3, 0.4
    x1 = torch.randn(32, 6, dtype=F64, generator=torch.Generator().manual_seed(2))
    res = flow_sample(rf_gaussian_velocity(mu, s), x1, method=method, steps=steps, rtol=1e-8, atol=1e-8)
    err = float((res.x - (mu + s * x1)).abs().max())
    print(f"flow_sample {method}: max error {err:.2e}, mean nfe {res.nfe.double().mean():.1f}")
    assert err < tol and bool(res.success.all())


def test_flow_sample_bad_input():
    with pytest.raises(TypeError, match="velocity"):
        flow_sample(3, torch.randn(2, 2))
    with pytest.raises(ValueError, match="method"):
        flow_sample(lambda x, t: x, torch.randn(2, 2), method="rk45")


# ---------------------------------------------------------------------------------------------- oracle
def small_dataset(R=5, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(R, d, generator=g, dtype=F64) * 2 - 1


def radius_law(fam, d):
    """CDF of (||x_t - a_t x0|| / t)^2 for the family's perturbation kernel (docs/math.md)."""
    if isinstance(fam, fastflow.Poisson):
        return stats.betaprime(d / 2, fam.D / 2).cdf
    if isinstance(fam, fastflow.RadialCDF):
        return lambda s2: np.tanh(np.sqrt(s2))  # ||.|| / t = atanh(U)
    return stats.chi2(d).cdf  # Gaussian, RectifiedFlow


ORACLE_CASES = [
    pytest.param(lambda: fastflow.Poisson(1), 400.0, id="poisson-D1"),
    pytest.param(lambda: fastflow.Poisson(128), 400.0 * math.sqrt(128), id="poisson-D128"),
    pytest.param(lambda: fastflow.Gaussian(), 80.0, id="gaussian"),
    pytest.param(lambda: fastflow.RectifiedFlow(), 1.0, id="rectified-flow"),
    pytest.param(lambda: fastflow.RadialCDF("tanh"), 80.0, id="tanh"),
]


@pytest.mark.parametrize("make,T", ORACLE_CASES)
def test_oracle_memorises_uniformly(make, T):
    """Prior at T -> exact empirical field -> dopri5 to t_min = 1e-3 (T >> the data's spread of ~1).

    The exact flow carries the prior to the perturbed empirical law at t_min, so the samples sit on the 5
    reference points: each point hit equally often (chi-square, n = 300), and the offsets from the nearest
    point scaled by t_min follow the family's kernel exactly (KS; PFGM's kernel is heavy-tailed, so a few
    samples land ~1 away, as its perturbed law says they must). Both p > 1e-3.
    """
    ref, t_min, n = small_dataset(), 1e-3, 300
    fam = make()
    res = family_sample(fam, ref, n, T=T, t_min=t_min, rtol=1e-6, atol=1e-6,
                        generator=torch.Generator().manual_seed(7))
    centres = ref * (1 - t_min) if isinstance(fam, fastflow.RectifiedFlow) else ref  # a_t x0_j
    j, dist = Oracle(fam, centres).nearest(res.x)
    counts = torch.bincount(j, minlength=ref.shape[0]).numpy()
    p_cover = stats.chisquare(counts).pvalue
    p_law = stats.kstest((dist / t_min).numpy() ** 2, radius_law(fam, ref.shape[1])).pvalue
    print(f"{fam}: median offset {float(dist.median()):.2e}, counts {counts.tolist()}, chi2 p = {p_cover:.3g}, "
          f"offset-law KS p = {p_law:.3g}; nfe mean {res.nfe.double().mean():.0f} "
          f"(min {int(res.nfe.min())}, max {int(res.nfe.max())})")
    assert bool(res.success.all())
    assert float(dist.median()) < 1e-2
    assert p_cover > 1e-3 and p_law > 1e-3


def test_oracle_negative_control_biased_prior():
    """The chi-square has power: starting every sample near one reference point's direction piles them onto it."""
    ref = small_dataset()
    x_T = (ref[0] * 80.0).expand(300, 3) + torch.randn(300, 3, dtype=F64) * 1.0
    res = fastflow.odeint(Oracle(fastflow.Gaussian(), ref), x_T, 80.0, 1e-3, rtol=1e-6, atol=1e-6)
    j, _ = Oracle(fastflow.Gaussian(), ref).nearest(res.x)
    assert stats.chisquare(torch.bincount(j, minlength=5).numpy()).pvalue < 1e-3


def test_oracle_counts_and_errors():
    ref = small_dataset()
    o = Oracle(fastflow.Gaussian(), ref)
    o(torch.zeros(4, 3, dtype=F64), torch.ones(4, dtype=F64))
    assert o.calls == 1 and o.rows == 4
    with pytest.raises(TypeError, match="family"):
        Oracle("gaussian", ref)
    with pytest.raises(ValueError, match="ref is empty"):
        Oracle(fastflow.Gaussian(), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="t_min"):
        family_sample(fastflow.Gaussian(), ref, 4, T=1.0, t_min=2.0)


def test_straightness():
    t = torch.linspace(0, 1, 50, dtype=F64)
    line = torch.stack([torch.stack([t, 2 * t], 1)[k:k + 1] for k in range(50)])  # (50, 1, 2)
    theta = torch.linspace(0, math.pi, 2001, dtype=F64)
    arc = torch.stack([torch.cos(theta), torch.sin(theta)], 1)[:, None, :]
    s = straightness(torch.cat([line, line], 1))
    assert torch.allclose(s, torch.ones(2, dtype=F64))
    assert float(straightness(arc)) == pytest.approx(2 / math.pi, rel=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        straightness(arc[:1])


def test_rectified_flow_oracle_straighter_than_gaussian():
    """On the same data, rectified flow's exact trajectories are straighter than the VE ODE's (the point of
    the construction), measured on 20 fixed rk4 steps."""
    ref = small_dataset()
    paths = {}
    for name, fam, T in (("rf", fastflow.RectifiedFlow(), 1.0), ("ve", fastflow.Gaussian(), 80.0)):
        x_T = fam.prior(64, (3,), T=T, dtype=F64, generator=torch.Generator().manual_seed(3))
        pts = [x_T]
        fastflow.odeint(Oracle(fam, ref), x_T, T, 1e-3, method="rk4", steps=20,
                        callback=lambda info, pts=pts: pts.append(info.x))
        paths[name] = float(straightness(pts).mean())
    print(f"straightness: rectified flow {paths['rf']:.3f}, VE {paths['ve']:.3f}")
    assert paths["rf"] > paths["ve"]


# ---------------------------------------------------------------------------------------------- pfgm.sample
def exact_pfgm_net(ref):
    return lambda x, z: pfgm.target(x, z, ref)


def test_pfgm_sample_memorises_with_exact_field():
    """The exact normalised PFGM field as the network: samples from pfgm.prior land on the data uniformly, with
    offsets (||x - x0_j|| / z_min)^2 ~ BetaPrime(d/2, 1/2), PFGM's kernel at z_min."""
    ref, z_min = small_dataset(), 1e-4
    x = pfgm.prior(300, (3,), z_max=400.0, dtype=F64, generator=torch.Generator().manual_seed(11))
    res = pfgm.sample(exact_pfgm_net(ref), x, z_max=400.0, z_min=z_min, rtol=1e-6, atol=1e-6)
    j, dist = Oracle(fastflow.Poisson(1), ref).nearest(res.x)
    p = stats.chisquare(torch.bincount(j, minlength=5).numpy()).pvalue
    p_law = stats.kstest((dist / z_min).numpy() ** 2, stats.betaprime(1.5, 0.5).cdf).pvalue
    print(f"pfgm.sample: median offset {float(dist.median()):.2e}, chi2 p = {p:.3g}, KS p = {p_law:.3g}, "
          f"nfe {res.nfe.double().mean():.0f}")
    assert bool(res.success.all()) and p > 1e-3 and p_law > 1e-3
    assert torch.allclose(res.t, torch.full_like(res.t, math.log(z_min)))


def test_pfgm_sample_tuple_output_and_z_exp():
    """A (v_x, v_z) tuple gives the same samples as the (B, d+1) tensor. z_exp replaces v_z below z_exp: a net
    whose v_z is 1000x too large there freezes the samples (dx/dz ~ 1/v_z) short of the data; with z_exp = 1
    the substituted v_z brings them onto it."""
    ref = small_dataset()
    net = exact_pfgm_net(ref)
    x = pfgm.prior(16, (3,), z_max=40.0, dtype=F64, generator=torch.Generator().manual_seed(12))
    a = pfgm.sample(net, x, z_max=40.0)
    b = pfgm.sample(lambda x, z: (net(x, z)[:, :3], net(x, z)[:, 3]), x, z_max=40.0)
    assert torch.equal(a.x, b.x)

    def bad(x, z):
        out = net(x, z).clone()
        out[:, 3] = torch.where(z < 1.0, out[:, 3] * 1000, out[:, 3])
        return out
    fixed = pfgm.sample(bad, x, z_max=40.0, z_exp=1.0, z_min=1e-3)
    broken = pfgm.sample(bad, x, z_max=40.0, z_min=1e-3)
    _, d_good = Oracle(fastflow.Poisson(1), ref).nearest(a.x)
    _, d_fixed = Oracle(fastflow.Poisson(1), ref).nearest(fixed.x)
    _, d_broken = Oracle(fastflow.Poisson(1), ref).nearest(broken.x)
    print(f"z_exp: median offset {float(d_good.median()):.2e} exact, {float(d_fixed.median()):.2e} substituted, "
          f"{float(d_broken.median()):.2e} broken")
    assert torch.isfinite(broken.x).all()
    assert float(d_fixed.median()) < 10 * float(d_good.median()) < float(d_broken.median())


def test_pfgm_sample_bad_input():
    ref = small_dataset()
    net = exact_pfgm_net(ref)
    x = torch.randn(4, 3, dtype=F64)
    with pytest.raises(TypeError, match="net_fn"):
        pfgm.sample(1, x, z_max=40.0)
    with pytest.raises(ValueError, match="z_max must be > z_min"):
        pfgm.sample(net, x, z_max=1e-4)
    with pytest.raises(ValueError, match="z_max"):
        pfgm.sample(net, x, z_max=-1.0)
    with pytest.raises(ValueError, match="net_fn must return"):
        pfgm.sample(lambda x, z: x, x, z_max=40.0)
    with pytest.raises(ValueError, match="v_z"):
        pfgm.sample(lambda x, z: (x, z[:2]), x, z_max=40.0)
    with pytest.raises(ValueError, match="vz_max"):
        pfgm.sample(net, x, z_max=40.0, vz_max=0.0)
    with pytest.raises(ValueError, match="method"):
        pfgm.sample(net, x, z_max=40.0, method="RK45")


def _mixed_psi(r, t):
    return 0.5 - torch.sigmoid(-2.0 * r / t) + 0.5 * (1.0 - torch.exp(-r / t**2))


@pytest.mark.parametrize("make,T,t_min", [
    pytest.param(lambda: fastflow.AffinePath(fastflow.schedulers.Cosine()), 1.0, 1e-3, id="affine-cosine"),
    pytest.param(lambda: fastflow.AffinePath(fastflow.schedulers.Polynomial(2.0)), 1.0, 1e-3, id="affine-poly2"),
    # its second shell has radius ~t^2: t_min = 0.03 keeps it (1e-3) well above the solver's atol
    pytest.param(lambda: fastflow.RadialCDF(_mixed_psi), 40.0, 0.03, id="user-psi"),
])
def test_oracle_of_a_user_construction_memorises_uniformly(make, T, t_min):
    """As above for the constructions a user builds (issue 12): an affine path with another schedule and a
    non-scale radial CDF given as a callable. The offsets at t_min follow the kernel: (|x - alpha x0| / sigma)^2 ~
    chi2_d for the Gaussian path, psi_{t_min}(|x - x0|) ~ U(0, 1) for the radial CDF."""
    ref, n = small_dataset(), 300
    fam = make()
    res = family_sample(fam, ref, n, T=T, t_min=t_min, rtol=1e-6, atol=1e-6,
                        generator=torch.Generator().manual_seed(7))
    tm = torch.tensor([t_min], dtype=F64)
    if isinstance(fam, fastflow.AffinePath):
        c = fam.scheduler(tm)
        j, dist = Oracle(fam, ref * float(c.alpha)).nearest(res.x)
        p_law = stats.kstest((dist / float(c.sigma)).numpy() ** 2, stats.chi2(ref.shape[1]).cdf).pvalue
    else:
        j, dist = Oracle(fam, ref).nearest(res.x)
        p_law = stats.kstest(_mixed_psi(dist, tm).numpy(), "uniform").pvalue
    p_cover = stats.chisquare(torch.bincount(j, minlength=ref.shape[0]).numpy()).pvalue
    print(f"{fam}: chi2 p = {p_cover:.3g}, offset-law KS p = {p_law:.3g}, nfe mean {res.nfe.double().mean():.0f}")
    assert bool(res.success.all())
    assert p_cover > 1e-3 and p_law > 1e-3


def test_the_contract_names_of_the_samplers():
    # API.md: edm_sample(denoiser, x_T, ...), flow_sample(velocity, x_1, ..., shift=None), Oracle(family, ref,
    # labels): the keyword forms and the defaults that the contract writes
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(5, 2, generator=g, dtype=torch.float64)
    lab = torch.tensor([0, 1, 0, 1, 1])
    x = torch.randn(4, 2, generator=g, dtype=torch.float64)
    t = torch.full((4,), 0.5, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    fam = fastflow.Gaussian()
    torch.testing.assert_close(fastflow.Oracle(fam, ref, lab)(x, t, labels=y),
                               fastflow.Oracle(fam, ref, labels=lab)(x, t, labels=y), rtol=0, atol=0)
    v = lambda z, s: -z  # noqa: E731
    a = fastflow.flow_sample(v, x_1=x, method="euler", steps=4, shift=None).x
    torch.testing.assert_close(a, fastflow.flow_sample(v, x, method="euler", steps=4, shift=1.0).x, rtol=0, atol=0)
    torch.testing.assert_close(a, x * 1.25 ** 4, rtol=1e-14, atol=0)  # Euler on dx/dt = -x, t from 1 down to 0
    den = gaussian_denoiser(0.0, 1.0)
    e = fastflow.edm_sample(den, x_T=x * 80.0, steps=4).x
    torch.testing.assert_close(e, fastflow.edm_sample(den, x * 80.0, steps=4).x, rtol=0, atol=0)
