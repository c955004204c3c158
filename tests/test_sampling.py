"""Exact draws: every family's perturb and prior, and pfgm.perturb / prior / hyperparameters (docs/math.md, §5).

The distribution tests are Kolmogorov-Smirnov tests against scipy's exact laws, with n = 20,000 draws unless a
test says otherwise. Every draw comes from a fixed seed, so each p-value is a fixed number and the threshold
p > 1e-3 is a deterministic pass/fail decision (a correct sampler would fail a given seed with probability 1e-3).
The p-values are printed before the assertions (``pytest -s`` shows them). The negative controls show that the
tests have power: a wrong law at the same n gives p < 1e-3.
"""
import math

import numpy as np
import pytest
import torch
from _util import DEVICE, dev
from scipy import stats

import fastflow
from fastflow._core import loader as _loader
from fastflow.testing import pfgm_perturb_official

N = 20_000
ALPHA = 1e-3
#: elements per drawn chunk: 16.7M floats keeps each chunk (with its float64 copies) under ~0.4 GB
CHUNK_ELEMS = 1 << 24


@pytest.fixture(params=["ext", "torch"])
def path(request, monkeypatch):
    """The draw path of Family.perturb / prior: "ext" (the fused Philox op of fastflow._C) or "torch" (the
    pure-torch pieces of fastflow.sampling, forced with FASTFLOW_DISABLE_C=1). _loader caches whether _C loaded,
    so the cache is cleared (_loader.reprobe) on the way in and out."""
    if request.param == "torch":
        monkeypatch.setenv("FASTFLOW_DISABLE_C", "1")
    else:
        monkeypatch.delenv("FASTFLOW_DISABLE_C", raising=False)
    _loader.reprobe()
    if request.param == "ext" and not fastflow.draws.can_draw_fused(DEVICE, torch.float32, 0):
        _loader.reprobe()
        pytest.skip(f"the fused sampler is not available on {DEVICE.type} ({_loader._C_error()})")
    yield request.param
    monkeypatch.undo()
    _loader.reprobe()


def gen(seed):
    return torch.Generator(device=DEVICE).manual_seed(seed)


def ks(sample, cdf, label):
    """One-sample KS p-value of ``sample`` against ``cdf``, printed."""
    res = stats.kstest(np.asarray(sample, dtype=np.float64), cdf)
    print(f"{label}: KS D = {res.statistic:.4f}, p = {res.pvalue:.3g}")
    return res.pvalue


def ks2(a, b, label):
    res = stats.ks_2samp(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    print(f"{label}: two-sample KS D = {res.statistic:.4f}, p = {res.pvalue:.3g}")
    return res.pvalue


def noise(fam, d, kind, n=N, seed=0):
    """Chunks of ``fam``'s draws on DEVICE, divided by the time: rows of the noise, returned on the CPU.

    perturb: (x - a_t x0) / t, with x0 ~ U(-1, 1)^d and t varying per row (a_t = 1 - t for rectified flow, else 1).
    prior: x / T (x for rectified flow, whose prior ignores T). Computed in float32: its rounding (~1e-7 relative)
    is far below what a KS test at n = 20,000 resolves (~1e-2).
    """
    g = gen(seed)
    rf = isinstance(fam, fastflow.RectifiedFlow)
    rows = max(1, CHUNK_ELEMS // d)
    for i in range(0, n, rows):
        b = min(rows, n - i)
        if kind == "prior":
            T = 0.7 if rf else 1.7
            yield (fam.prior(b, (d,), T=T, generator=g, device=DEVICE) / (1.0 if rf else T)).cpu()
        else:
            x0 = torch.rand(b, d, generator=g, device=DEVICE) * 2 - 1
            t = torch.rand(b, generator=g, device=DEVICE) * (0.8 if rf else 1.5) + (0.2 if rf else 0.5)
            x = fam.perturb(x0, t, generator=g)
            yield ((x - (1 - t[:, None]) * x0 if rf else x.sub_(x0)) / t[:, None]).cpu()


def radius2(fam, d, kind, n=N, seed=0):
    """(n,) float64 ||noise||^2: ||x - a_t x0||^2 / t^2 for perturb, ||x||^2 / T^2 for prior."""
    return torch.cat([torch.linalg.vector_norm(e, dim=1).double() ** 2 for e in noise(fam, d, kind, n, seed)])


KINDS = ["perturb", "prior"]

# ---------------------------------------------------------------------------------------------- radius laws
# the full grid d x D of the issue, plus a non-integer D
POISSON_CASES = [(d, D) for d in (1, 2, 3, 64, 3072) for D in (1, 2, 128, 2048)] + [(64, 2.5)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d,D", POISSON_CASES, ids=[f"d{d}-D{D}" for d, D in POISSON_CASES])
@pytest.mark.usefixtures("path")
def test_poisson_radius_law(kind, d, D):
    """||x - x0||^2 / t^2 = ||g||^2 / ||h||^2 ~ BetaPrime(d/2, D/2)."""
    r2 = radius2(fastflow.Poisson(D), d, kind, seed=d + int(10 * D))
    p = ks(r2, stats.betaprime(d / 2, D / 2).cdf, f"Poisson(D={D}) {kind} d={d}")
    assert torch.isfinite(r2).all()
    assert p > ALPHA


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("d", [1, 3, 64, 3072])
@pytest.mark.usefixtures("path")
def test_gaussian_radius_law(kind, d):
    """||x - x0||^2 / t^2 ~ chi^2(d)."""
    p = ks(radius2(fastflow.Gaussian(), d, kind, seed=d), stats.chi2(d).cdf, f"Gaussian {kind} d={d}")
    assert p > ALPHA


RADIAL_CDFS = {"tanh": np.tanh, "exp": lambda r: -np.expm1(-r)}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["tanh", "exp"])
@pytest.mark.parametrize("d", [1, 3, 64])
@pytest.mark.usefixtures("path")
def test_radial_cdf_radius_law(kind, name, d):
    """||x - x0|| / t = Psi^{-1}(U) has the CDF Psi."""
    r = radius2(fastflow.RadialCDF(name), d, kind, seed=d + (1000 if name == "exp" else 0)).sqrt()
    p = ks(r, RADIAL_CDFS[name], f"RadialCDF({name}) {kind} d={d}")
    assert p > ALPHA


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.usefixtures("path")
def test_rectified_flow_law(kind):
    """(x - (1-t) x0) / t ~ N(0, I): every entry N(0, 1), and the squared norm chi^2(d); the prior N(0, I)."""
    d = 5
    e = torch.cat(list(noise(fastflow.RectifiedFlow(), d, kind, seed=7)))
    p1 = ks(e.flatten(), stats.norm.cdf, f"RectifiedFlow {kind} entries")
    p2 = ks(e.double().pow(2).sum(1), stats.chi2(d).cdf, f"RectifiedFlow {kind} squared norm")
    assert p1 > ALPHA and p2 > ALPHA


@pytest.mark.usefixtures("path")
def test_negative_control_radius():
    """The radius test has power at this n: Poisson(D=2)'s draws are not BetaPrime(d/2, 1/2), nor D=128's
    BetaPrime(32, 60); nor a tanh radius the exp CDF."""
    p1 = ks(radius2(fastflow.Poisson(2), 64, "prior"), stats.betaprime(32, 0.5).cdf, "control: D=2 vs D=1 law")
    p2 = ks(radius2(fastflow.Poisson(128), 64, "prior"), stats.betaprime(32, 60).cdf, "control: D=128 vs D=120")
    p3 = ks(radius2(fastflow.RadialCDF("tanh"), 3, "prior").sqrt(), RADIAL_CDFS["exp"], "control: tanh vs exp")
    assert p1 < ALPHA and p2 < ALPHA and p3 < ALPHA


FAMILIES = [fastflow.Poisson(1), fastflow.Poisson(2048), fastflow.Gaussian(), fastflow.RadialCDF("tanh"),
            fastflow.RadialCDF("exp"), fastflow.RectifiedFlow()]


@pytest.mark.parametrize("fam", FAMILIES, ids=repr)
@pytest.mark.usefixtures("path")
def test_huge_d_is_finite(fam):
    """d = 196608 (LSUN 256^2): 64 draws of perturb and prior are finite, with the right shape."""
    g = gen(11)
    x0 = torch.rand(64, 3, 256, 256, generator=g, device=DEVICE) * 2 - 1
    t = 0.5 if isinstance(fam, fastflow.RectifiedFlow) else 50.0
    x = fam.perturb(x0, t, generator=g)
    xT = fam.prior(64, (3, 256, 256), T=1.0 if isinstance(fam, fastflow.RectifiedFlow) else 80.0, generator=g)
    assert x.shape == x0.shape and xT.shape == (64, 3, 256, 256) and xT.device.type == DEVICE.type
    assert torch.isfinite(x).all() and torch.isfinite(xT).all()
    assert float((x - x0).abs().max()) > 0


def test_huge_d_radius_law(path):
    """At d = 196608 the radius laws hold. The Gaussian prior at n = 20,000 on the fused path (3.9G Gaussians in
    chunks of 85 rows, ~27 s here): ||x||^2 / T^2 ~ chi^2(196608), which checks the float32 norm of the (n, d)
    Gaussians at this d; on the pure-torch path n = 2000 only (~3 s), to keep the suite short. The Poisson(D=2048)
    perturbation at n = 2000 (~6 s): the same code as at small d, with x0 and chi_D."""
    d = 3 * 256 * 256
    n = N if path == "ext" else 2000
    r2 = radius2(fastflow.Gaussian(), d, "prior", n=n, seed=12)
    p1 = ks(r2, stats.chi2(d).cdf, f"Gaussian prior d=196608 (n={n})")
    r2 = radius2(fastflow.Poisson(2048), d, "perturb", n=2000, seed=13)
    p2 = ks(r2, stats.betaprime(d / 2, 1024).cdf, "Poisson(D=2048) perturb d=196608 (n=2000)")
    assert p1 > ALPHA and p2 > ALPHA


# ---------------------------------------------------------------------------------------------- directions
DIRECTION_FAMILIES = [fastflow.Poisson(2), fastflow.RadialCDF("tanh"), fastflow.RadialCDF("exp")]


@pytest.mark.parametrize("fam", DIRECTION_FAMILIES, ids=repr)
@pytest.mark.parametrize("d", [1, 2, 3, 64])
@pytest.mark.usefixtures("path")
def test_directions_uniform(fam, d):
    """u = (x - x0) / ||x - x0||: u_1^2 ~ Beta(1/2, (d-1)/2), and the mean of u is 0 within the CLT:
    n d ||mean(u)||^2 ~ chi^2(d) (Cov u = I/d)."""
    e = torch.cat(list(noise(fam, d, "perturb", seed=20 + d + 100 * DIRECTION_FAMILIES.index(fam))))
    u = (e / torch.linalg.vector_norm(e, dim=1, keepdim=True)).double()
    stat = N * d * float(u.mean(0).pow(2).sum())
    p_mean = float(stats.chi2(d).sf(stat))
    print(f"{fam!r} d={d}: n d |mean u|^2 = {stat:.3f}, p = {p_mean:.3g}")
    assert p_mean > ALPHA
    if d > 1:
        assert ks(u[:, 0] ** 2, stats.beta(0.5, (d - 1) / 2).cdf, f"{fam!r} d={d} u_1^2") > ALPHA


def test_directions_negative_control():
    """The direction tests have power: a 3% bias along e_1 fails the mean test, and normalised cube points
    (not uniform on the sphere) fail the u_1^2 test, at this n."""
    e = torch.cat(list(noise(fastflow.RadialCDF("tanh"), 3, "perturb", seed=23)))
    u = (e / torch.linalg.vector_norm(e, dim=1, keepdim=True)).double() + torch.tensor([0.03, 0.0, 0.0])
    p_mean = float(stats.chi2(3).sf(N * 3 * float(u.mean(0).pow(2).sum())))
    print(f"control: biased directions: p = {p_mean:.3g}")
    c = torch.rand(N, 3, generator=torch.Generator().manual_seed(24), dtype=torch.float64) * 2 - 1
    c = c / torch.linalg.vector_norm(c, dim=1, keepdim=True)
    p_beta = ks(c[:, 0] ** 2, stats.beta(0.5, 1.0).cdf, "control: cube directions u_1^2")
    assert p_mean < ALPHA and p_beta < ALPHA


# ---------------------------------------------------------------------------------------------- pfgm.perturb
def _perturb_pair(fn, seed, d=8, **kw):
    x0 = torch.rand(N, d, generator=gen(100), device=DEVICE) * 2 - 1
    x, z = fn(x0, generator=gen(seed), **kw)
    r = torch.linalg.vector_norm(x.double() - x0.double(), dim=1)
    return r.cpu(), z.double().cpu()


def _official(x0, generator, **kw):
    return pfgm_perturb_official(x0, generator=generator, **kw)


@pytest.mark.parametrize("restrict_M", [True, False])
@pytest.mark.usefixtures("path")
def test_pfgm_perturb_matches_official(restrict_M):
    """Two-sample KS of ||x - x0|| and of z: fastflow.pfgm.perturb against the faithful port of the official code."""
    r, z = _perturb_pair(fastflow.pfgm.perturb, 1, restrict_M=restrict_M)
    r_off, z_off = _perturb_pair(_official, 2, restrict_M=restrict_M)
    p_r = ks2(r, r_off, f"pfgm.perturb vs official, restrict_M={restrict_M}: ||x - x0||")
    p_z = ks2(z, z_off, f"pfgm.perturb vs official, restrict_M={restrict_M}: z")
    assert (z > 0).all() and p_r > ALPHA and p_z > ALPHA


def _official_restrict_before_abs(x0, generator, M=291, tau=0.03, sigma_end=0.01):
    """The official code with the restriction tested on the signed z (a wrong order of operations), for a control."""
    B = x0.shape[0]
    m = torch.rand(B, generator=generator, device=x0.device) * M
    z = torch.randn(B, generator=generator, device=x0.device) * sigma_end
    idx = z < 0.005
    m[idx] = torch.rand(int(idx.sum()), generator=generator, device=x0.device) * int(0.7 * M)
    mult = (1 + tau) ** m
    x = x0 + sigma_end * mult[:, None] * torch.randn(x0.shape, generator=generator, device=x0.device)
    return x, z.abs() * mult


def test_pfgm_perturb_negative_controls():
    """The comparison has power: tau = 0.032 instead of 0.03, restrict_M off, or the restriction tested before
    |z| is taken, each give p < 1e-3 against the official port at the same n."""
    r_off, z_off = _perturb_pair(_official, 2, restrict_M=True)
    r_tau, _ = _perturb_pair(fastflow.pfgm.perturb, 3, tau=0.032)
    _, z_free = _perturb_pair(fastflow.pfgm.perturb, 4, restrict_M=False)
    _, z_order = _perturb_pair(_official_restrict_before_abs, 5)
    p1 = ks2(r_tau, r_off, "control: tau 0.032 vs 0.03, ||x - x0||")
    p2 = ks2(z_free, z_off, "control: restrict_M off vs on, z")
    p3 = ks2(z_order, z_off, "control: restriction on signed z vs |z|, z")
    assert p1 < ALPHA and p2 < ALPHA and p3 < ALPHA


@pytest.mark.usefixtures("path")
def test_pfgm_perturb_shares_the_growth():
    """x and z carry the same (1+tau)^m: ||x - x0||^2 / z^2 = ||g||^2 / s^2 ~ BetaPrime(d/2, 1/2) exactly,
    whatever the law of m (the restriction included)."""
    x0 = torch.zeros(N, 4, device=DEVICE, dtype=torch.float64)
    x, z = fastflow.pfgm.perturb(x0, generator=gen(6))
    ratio2 = (x.pow(2).sum(1) / z.pow(2)).cpu()
    assert ks(ratio2, stats.betaprime(2, 0.5).cdf, "pfgm.perturb: ||x - x0||^2 / z^2") > ALPHA


# ---------------------------------------------------------------------------------------------- pfgm.prior
@pytest.mark.parametrize("d", [1, 3, 3072])
@pytest.mark.usefixtures("path")
def test_pfgm_prior_exact(d):
    """(r / z_max)^2 ~ BetaPrime(d/2, 1/2), by default (no clip)."""
    z_max, rows = 40.0, max(1, CHUNK_ELEMS // d)
    g = gen(30 + d)
    r2 = torch.cat([fastflow.pfgm.prior(min(rows, N - i), (d,), z_max=z_max, generator=g, device=DEVICE)
                    .double().pow(2).sum(1).cpu() for i in range(0, N, rows)]) / z_max ** 2
    assert ks(r2, stats.betaprime(d / 2, 0.5).cdf, f"pfgm.prior d={d}") > ALPHA


def test_pfgm_prior_clip():
    """upper_norm clips the radius to [1, upper_norm]: atoms at both ends with the exact masses (binomial tests),
    and the exact law in between (KS against the truncated BetaPrime)."""
    d, z_max, upper = 3, 1.0, 10.0
    x = fastflow.pfgm.prior(N, (d,), z_max=z_max, upper_norm=upper, generator=gen(40), device=DEVICE)
    r = torch.linalg.vector_norm(x.double(), dim=1).cpu()
    assert float(r.min()) >= 1 - 1e-6 and float(r.max()) <= upper * (1 + 1e-6)
    F = stats.betaprime(d / 2, 0.5).cdf
    lo, hi = np.isclose(r, 1.0, rtol=1e-6), np.isclose(r, upper, rtol=1e-6)
    p_lo = stats.binomtest(int(lo.sum()), N, F(1.0)).pvalue
    p_hi = stats.binomtest(int(hi.sum()), N, 1 - F(upper ** 2)).pvalue
    print(f"pfgm.prior clip: {lo.mean():.4f} at 1 (p = {p_lo:.3g}), {hi.mean():.4f} at upper_norm (p = {p_hi:.3g})")
    inner = r[~(lo | hi)].numpy() ** 2
    a, b = F(1.0), F(upper ** 2)
    p_in = ks(inner, lambda s: (F(s) - a) / (b - a), "pfgm.prior clip: inner radii")
    assert p_lo > ALPHA and p_hi > ALPHA and p_in > ALPHA


# ---------------------------------------------------------------------------------------------- hyperparameters
def test_hyperparameters_tiny_dataset():
    """Norms 5, 1 and 2 (average 8/3), d = 4: by hand, M = int(0.75 ln((8/3)^2 / (2 sqrt(4) 1e-4)) / ln 1.03) + 1
    = int(248.29) + 1 = 249; z_max = sqrt(2/pi) 0.01 1.03^249 = 12.5432; upper_norm = 2 * 0.01 * 1.03^249 = 31.4412.
    With the max norm (5) M would be 281: the official formula takes the average norm."""
    data = torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]]).reshape(3, 2, 2)
    hp = fastflow.pfgm.hyperparameters(dev(data))
    print(hp)
    assert hp["M"] == 249
    assert hp["z_max"] == pytest.approx(12.543219234355, rel=1e-12)
    assert hp["upper_norm"] == pytest.approx(31.441187987730, rel=1e-12)
    # the formula itself, written again from the official hyper-parameters.py
    n = 8 / 3
    M = int(0.75 * np.log(n ** 2 / (2 * np.sqrt(4) * 0.01 ** 2)) / np.log(1 + 0.03)) + 1
    assert hp["M"] == M and hp["upper_norm"] == pytest.approx(np.sqrt(4) * 0.01 * 1.03 ** M, rel=1e-12)


def test_hyperparameters_cifar10():
    """An average norm of 32 at d = 3072 gives the official CIFAR-10 config: M = 291, z_max ~ 43.4 (the config
    rounds it to 40) and upper_norm ~ 3015 (the config: 3000)."""
    data = torch.full((2, 3, 32, 32), 32 / math.sqrt(3072), dtype=torch.float64)
    hp = fastflow.pfgm.hyperparameters(data)
    print(hp)
    assert hp["M"] == 291
    assert hp["z_max"] == pytest.approx(43.4083, rel=1e-5)
    assert hp["upper_norm"] == pytest.approx(3015.39, rel=1e-5)
    hp2 = fastflow.pfgm.hyperparameters(data, tau=0.05, sigma=0.02)
    assert hp2["M"] == int(0.75 * math.log(32 ** 2 / (2 * math.sqrt(3072) * 0.02 ** 2)) / math.log(1.05)) + 1


# ---------------------------------------------------------------------------------------------- determinism, dtypes
def _all_draws(seed, dtype=torch.float32):
    x0 = (torch.rand(16, 3, 5, generator=gen(99), device=DEVICE) * 2 - 1).to(dtype)
    out = []
    for fam in FAMILIES:
        out.append(fam.perturb(x0, 0.5, generator=gen(seed)))
        out.append(fam.prior(16, (3, 5), T=0.5, generator=gen(seed), dtype=dtype))
    out.extend(fastflow.pfgm.perturb(x0, generator=gen(seed)))
    out.append(fastflow.pfgm.prior(16, (3, 5), z_max=40.0, generator=gen(seed), dtype=dtype))
    out.append(fastflow.pfgm.prior(16, (3, 5), z_max=40.0, upper_norm=3000.0, generator=gen(seed), dtype=dtype))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.usefixtures("path")
def test_determinism(dtype):
    """The same seed gives identical output; another seed gives different output."""
    a, b, c = _all_draws(5, dtype), _all_draws(5, dtype), _all_draws(6, dtype)
    for u, v, w in zip(a, b, c):
        assert torch.equal(u, v)
        assert not torch.equal(u, w)


@pytest.mark.usefixtures("path")
def test_default_generator_follows_manual_seed():
    torch.manual_seed(3)
    a = fastflow.Poisson(1).prior(8, 4, T=1.0)
    torch.manual_seed(3)
    assert torch.equal(a, fastflow.Poisson(1).prior(8, 4, T=1.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.usefixtures("path")
def test_reduced_precision_is_float32_rounded_once(dtype):
    """float16 / bfloat16 are drawn in float32 and rounded once: equal to the float32 draw, cast (x0 exact)."""
    x0 = torch.randint(-3, 4, (64, 5), generator=gen(8), device=DEVICE).float()
    for fam in FAMILIES:
        out = fam.perturb(x0.to(dtype), 0.5, generator=gen(9))
        assert out.dtype == dtype and torch.equal(out, fam.perturb(x0, 0.5, generator=gen(9)).to(dtype))
        xT = fam.prior(64, 5, T=0.5, generator=gen(9), dtype=dtype)
        assert xT.dtype == dtype and torch.equal(xT, fam.prior(64, 5, T=0.5, generator=gen(9)).to(dtype))
    x, z = fastflow.pfgm.perturb(x0.to(dtype), generator=gen(9))
    x32, z32 = fastflow.pfgm.perturb(x0, generator=gen(9))
    assert x.dtype == dtype and torch.equal(x, x32.to(dtype))
    assert z.dtype == torch.float32 and torch.equal(z, z32)  # z stays float32: float16 would flush its small end
    xp = fastflow.pfgm.prior(64, 5, z_max=4.0, upper_norm=100.0, generator=gen(9), dtype=dtype)
    assert xp.dtype == dtype and torch.equal(xp, fastflow.pfgm.prior(64, 5, z_max=4.0, upper_norm=100.0,
                                                                      generator=gen(9)).to(dtype))


@pytest.mark.usefixtures("path")
def test_dtypes_devices_and_shapes():
    x0 = torch.randn(6, 2, 3, device=DEVICE, dtype=torch.float64)
    for fam in FAMILIES:
        x = fam.perturb(x0, torch.full((6,), 0.5, device=DEVICE))
        assert x.dtype == torch.float64 and x.device.type == DEVICE.type and x.shape == x0.shape
        xT = fam.prior(4, (2, 3), T=0.5, generator=gen(1), dtype=torch.float64)
        assert xT.dtype == torch.float64 and xT.device.type == DEVICE.type and xT.shape == (4, 2, 3)
        assert fam.prior(0, 7, T=1.0, device=DEVICE).shape == (0, 7)
        assert fam.prior(3, (), T=1.0, device=DEVICE).shape == (3,)
        assert fam.perturb(torch.zeros(0, 4, device=DEVICE), 0.5).shape == (0, 4)
        # a 1-d x0 is B scalar points
        assert fam.perturb(torch.zeros(5, device=DEVICE), 0.5).shape == (5,)
    x, z = fastflow.pfgm.perturb(x0)
    assert x.dtype == z.dtype == torch.float64 and z.shape == (6,) and (z > 0).all()
    # a non-contiguous x0
    xt = torch.randn(4, 6, device=DEVICE).t()
    assert fastflow.Gaussian().perturb(xt, 1.0).shape == (6, 4)


@pytest.mark.usefixtures("path")
def test_float16_overflow_raises():
    """The Cauchy-like prior exceeds float16's 65504 in ~0.25% of rows at T = 100: refused, not returned as inf."""
    with pytest.raises(FloatingPointError, match="overflows torch.float16"):
        fastflow.Poisson(1).prior(N, 4, T=100.0, generator=gen(2), device=DEVICE, dtype=torch.float16)
    with pytest.raises(FloatingPointError, match="overflows"):
        fastflow.pfgm.prior(N, 4, z_max=100.0, generator=gen(2), device=DEVICE, dtype=torch.float16)
    # the official clip keeps it in range
    fastflow.pfgm.prior(N, 4, z_max=100.0, upper_norm=3000.0, generator=gen(2), device=DEVICE, dtype=torch.float16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device type")
def test_generator_on_another_device():
    with pytest.raises(ValueError, match="generator must be on the device"):
        fastflow.Gaussian().perturb(torch.zeros(2, 3, device="cuda"), 1.0, generator=torch.Generator())
    with pytest.raises(ValueError, match="generator must be on the device"):
        fastflow.pfgm.prior(2, 3, z_max=1.0, device="cuda", generator=torch.Generator())


# ---------------------------------------------------------------------------------------------- bad input
FAMS_ERR = [fastflow.Poisson(1), fastflow.Gaussian(), fastflow.RadialCDF("exp"), fastflow.RectifiedFlow()]


@pytest.mark.parametrize("fam", FAMS_ERR, ids=repr)
def test_perturb_bad_input(fam):
    x0 = torch.randn(4, 3)
    with pytest.raises(TypeError, match="x0 must be a torch.Tensor"):
        fam.perturb(x0.numpy(), 0.5)
    with pytest.raises(TypeError, match="x0 must be a floating-point"):
        fam.perturb(x0.long(), 0.5)
    with pytest.raises(ValueError, match="x0 must have at least 1"):
        fam.perturb(torch.tensor(1.0), 0.5)
    with pytest.raises(ValueError, match="x0 must have at least one element per point"):
        fam.perturb(torch.zeros(4, 0), 0.5)
    for bad in [math.nan, math.inf]:
        xb = x0.clone()
        xb[1, 2] = bad
        with pytest.raises(ValueError, match="x0 contains NaN or inf"):
            fam.perturb(xb, 0.5)
    for bad_t in [0.0, -1.0, math.nan, math.inf]:
        with pytest.raises(ValueError, match="t must be finite and > 0"):
            fam.perturb(x0, bad_t)
        with pytest.raises(ValueError, match="t must be finite and > 0"):
            fam.perturb(x0, torch.tensor([0.5, bad_t, 0.5, 0.5]))
    with pytest.raises(ValueError, match=r"t must be .*\(B,\)"):
        fam.perturb(x0, torch.ones(3))
    with pytest.raises(TypeError, match="t must be a float"):
        fam.perturb(x0, "0.5")
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        fam.perturb(x0, 0.5, generator=0)


@pytest.mark.parametrize("fam", FAMS_ERR, ids=repr)
def test_prior_bad_input(fam):
    with pytest.raises(ValueError, match="n must be >= 0"):
        fam.prior(-1, 3, T=0.5)
    for bad_n in [2.0, True, "3"]:
        with pytest.raises(TypeError, match="n must be an int"):
            fam.prior(bad_n, 3, T=0.5)
    for bad_shape in [(3, 0), 0, (-2,)]:
        with pytest.raises(ValueError, match="shape must have positive sizes"):
            fam.prior(2, bad_shape, T=0.5)
    for bad_shape in ["3", (3.0,), None]:
        with pytest.raises(TypeError, match="shape must be an int or a tuple"):
            fam.prior(2, bad_shape, T=0.5)
    for bad_T in [0.0, -1.0, math.nan, math.inf]:
        with pytest.raises(ValueError, match="T must be finite and > 0"):
            fam.prior(2, 3, T=bad_T)
    with pytest.raises(ValueError, match=r"T must be .*\(B,\)"):
        fam.prior(2, 3, T=torch.ones(3))
    with pytest.raises(TypeError, match="T must be a float"):
        fam.prior(2, 3, T=None)
    with pytest.raises(TypeError, match="dtype must be a floating-point torch.dtype"):
        fam.prior(2, 3, T=0.5, dtype=torch.int64)
    with pytest.raises(TypeError, match="device must be a torch.device"):
        fam.prior(2, 3, T=0.5, device=3.5)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        fam.prior(2, 3, T=0.5, generator="seed")


def test_rectified_flow_time_at_most_one():
    with pytest.raises(ValueError, match="t must be finite and > 0 and <= 1.0"):
        fastflow.RectifiedFlow().perturb(torch.zeros(2, 3), 1.5)
    with pytest.raises(ValueError, match="T must be finite and > 0 and <= 1.0"):
        fastflow.RectifiedFlow().prior(2, 3, T=80.0)


def test_bad_D():
    for bad in [0.5, 0, -1, math.nan, math.inf]:
        with pytest.raises(ValueError, match="D must be finite and >= 1"):
            fastflow.Poisson(D=bad)
    with pytest.raises(TypeError, match="D must be a number"):
        fastflow.Poisson(D="2")


def test_pfgm_bad_input():
    x0 = torch.randn(4, 3)
    for name in ["M", "tau", "sigma_end"]:
        for bad in [0.0, -1.0, math.nan, math.inf]:
            with pytest.raises(ValueError, match=f"{name} must be finite and > 0"):
                fastflow.pfgm.perturb(x0, **{name: bad})
        with pytest.raises(TypeError, match=f"{name} must be a real number"):
            fastflow.pfgm.perturb(x0, **{name: "1"})
    with pytest.raises(TypeError, match="restrict_M must be a bool"):
        fastflow.pfgm.perturb(x0, restrict_M=1)
    with pytest.raises(ValueError, match="x0 contains NaN or inf"):
        fastflow.pfgm.perturb(torch.tensor([[0.0, math.nan]]))
    with pytest.raises(TypeError, match="x0 must be a torch.Tensor"):
        fastflow.pfgm.perturb([[0.0, 1.0]])
    with pytest.raises(ValueError, match="x0 must have at least one element per point"):
        fastflow.pfgm.perturb(torch.zeros(3, 0))
    for bad in [0.0, -1.0, math.nan, math.inf]:
        with pytest.raises(ValueError, match="z_max must be finite and > 0"):
            fastflow.pfgm.prior(2, 3, z_max=bad)
    for bad in [0.5, math.nan, math.inf]:
        with pytest.raises(ValueError, match="upper_norm must be finite and >= 1"):
            fastflow.pfgm.prior(2, 3, z_max=1.0, upper_norm=bad)
    with pytest.raises(ValueError, match="n must be >= 0"):
        fastflow.pfgm.prior(-3, 3, z_max=1.0)
    with pytest.raises(ValueError, match="shape must have positive sizes"):
        fastflow.pfgm.prior(2, (0,), z_max=1.0)


def test_hyperparameters_bad_input():
    data = torch.rand(5, 4)
    with pytest.raises(TypeError, match="data must be a torch.Tensor"):
        fastflow.pfgm.hyperparameters(data.numpy())
    with pytest.raises(ValueError, match="data is empty"):
        fastflow.pfgm.hyperparameters(torch.zeros(0, 4))
    with pytest.raises(ValueError, match="data has average norm 0"):
        fastflow.pfgm.hyperparameters(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="data contains NaN or inf"):
        fastflow.pfgm.hyperparameters(torch.tensor([[1.0, math.inf]]))
    with pytest.raises(ValueError, match="too small for sigma"):
        fastflow.pfgm.hyperparameters(torch.full((2, 4), 1e-4))
    for name in ["tau", "sigma"]:
        with pytest.raises(ValueError, match=f"{name} must be finite and > 0"):
            fastflow.pfgm.hyperparameters(data, **{name: 0.0})
