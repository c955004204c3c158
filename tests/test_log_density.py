"""Family.log_density: the normalised log p_t(x) of the perturbed empirical distribution, for every family and path.
It integrates to 1 by quadrature (d = 1, 2; float64), and matches the log of the mean of the kernel densities
written here from their textbook formulas (Student-t, Gaussian, radial CDF) at d = 1, 2, 5 and 3072 (issue 12 §3)."""
import math

import pytest
import torch
from _util import FAMILIES

import fastflow

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest.py)


S = fastflow.schedulers
FAMS = {name: make() for name, make in FAMILIES.items()}
FAMS["affine_cosine"] = fastflow.AffinePath(S.Cosine())
FAMS["affine_vp"] = fastflow.AffinePath(S.VP())
FAMS["affine_student"] = fastflow.AffinePath(S.Cosine(), fastflow.StudentT(3.0))
FAMS["affine_student_poly"] = fastflow.AffinePath(S.Polynomial(2), fastflow.StudentT(2.0))
IS_PATH = ("rf", "affine_cosine", "affine_vp", "affine_student", "affine_student_poly")
RADIAL = ("tanh", "exp")


def times(name):
    return (0.15, 0.5, 0.9) if name in IS_PATH else (0.3, 1.0, 2.5)


# ------------------------------------------------------------------------------------------------------------
# the kernels from their textbook formulas, float64

def log_kernel(fam, x, y, t):
    """(B, R) log p_t(x_i | y_j) in float64, written from the laws (not from fastflow's log-weights)."""
    B, d = x.shape
    tt = torch.tensor([float(t)], dtype=F64)
    if isinstance(fam, fastflow.AffinePath):
        c = fam.scheduler(tt)
        a, sigma = float(c.alpha), float(c.sigma)
    elif isinstance(fam, fastflow.RectifiedFlow):
        a, sigma = 1.0 - t, t
    else:
        a, sigma = 1.0, t
    s = ((x[:, None, :] - a * y[None, :, :]) ** 2).sum(-1)
    if isinstance(fam, fastflow.Poisson) or (isinstance(fam, fastflow.AffinePath) and fam.source != "gaussian"):
        # multivariate Student-t(nu, mean, scale^2 I): Gamma((nu+d)/2) / (Gamma(nu/2) (nu pi)^(d/2) scale^d)
        #   * (1 + s / (nu scale^2))^(-(nu+d)/2)
        if isinstance(fam, fastflow.Poisson):
            nu, scale = float(fam.D), t / math.sqrt(fam.D)  # PFGM++: x - x0 = t g / |h|, h ~ N(0, I_D)
        else:
            nu, scale = fam.source.nu, sigma  # x1 = g sqrt(nu) / |h|: Student-t with unit scale
        return (math.lgamma((nu + d) / 2) - math.lgamma(nu / 2) - d / 2 * math.log(nu * math.pi)
                - d * math.log(scale) - (nu + d) / 2 * torch.log1p(s / (nu * scale ** 2)))
    if isinstance(fam, fastflow.RadialCDF):
        r = s.sqrt()
        u = r / t
        dpsi = (1 / torch.cosh(u) ** 2) if fam.name == "tanh" else torch.exp(-u)  # Psi'(u)
        log_dpsi = torch.log(dpsi) if fam.name == "exp" or float(u.max()) < 300 else \
            math.log(4.0) - 2 * u - 2 * torch.log1p(torch.exp(-2 * u))
        log_sphere = math.log(2.0) + d / 2 * math.log(math.pi) - math.lgamma(d / 2)  # |S^(d-1)|
        return log_dpsi - math.log(t) - (d - 1) * torch.log(r) - log_sphere
    # Gaussian N(a y, sigma^2 I)
    return -d / 2 * math.log(2 * math.pi * sigma ** 2) - s / (2 * sigma ** 2)


def log_mean_density(fam, x, y, t):
    lk = log_kernel(fam, x, y, t)
    return torch.logsumexp(lk, dim=1) - math.log(y.shape[0])


@pytest.mark.parametrize("d", [1, 2, 5, 3072])
@pytest.mark.parametrize("name", list(FAMS))
def test_matches_the_kernel_formulas(name, d):
    fam = FAMS[name]
    g = torch.Generator().manual_seed(d)
    R, B = 6, 5
    ref = torch.rand(R, d, generator=g, dtype=F64) * 2 - 1
    for t in times(name):
        if name in IS_PATH:
            sig = t
        else:
            sig = t * math.sqrt(d / 3.0) * (math.sqrt(fam.D) if isinstance(fam, fastflow.Poisson) else 1.0) / 2
            t = sig
        x = ref[torch.arange(B) % R] + sig * torch.randn(B, d, generator=g, dtype=F64) / math.sqrt(d)
        want = log_mean_density(fam, x, ref, t)
        for backend, chunk in (("torch", None), ("torch", 4), ("reference", None)):
            got = fam.log_density(x, t, ref, backend=backend, chunk_size=chunk)
            assert got.shape == (B,) and got.dtype == F64
            err = (got - want).abs().max().item()
            assert err <= 1e-9 * max(1.0, want.abs().max().item()), (name, d, t, backend, err, got, want)
        got32 = fam.log_density(x.float(), t, ref.float())
        assert got32.dtype == torch.float32
        err32 = ((got32.double() - want).abs() / want.abs().clamp_min(1.0)).max().item()
        if d == 3072:
            print(f"{name} d={d} t={t:.3g}: log p {want[0].item():.6g}, fp32 rel err {err32:.1e}")
        # fp32 adds log-sum-exp and normaliser, each of size |const| (lgamma's, d log t): a few ulp of that
        const = fam.log_kernel_constant(d, fam.noise_scale(torch.tensor([float(t)], dtype=F64))).abs().item()
        assert err32 < 1e-5 + 1e-6 * const / max(1.0, want.abs().min().item()), (name, d, t, err32, const)


def test_shapes_and_errors():
    fam = fastflow.Gaussian()
    ref = torch.randn(4, 2, 3, dtype=F64)
    x = torch.randn(3, 2, 3, dtype=F64)
    out = fam.log_density(x, torch.tensor([0.5, 1.0, 2.0], dtype=F64), ref)
    assert out.shape == (3,)
    tt = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    torch.testing.assert_close(out, fam.log_density(x.reshape(3, 6), tt, ref.reshape(4, 6)))
    torch.testing.assert_close(out[:1], log_mean_density(fam, x.reshape(3, 6)[:1], ref.reshape(4, 6), 0.5))
    assert fam.log_density(x[:0], 0.5, ref).shape == (0,)
    assert fam.log_density(x.half(), 0.5, ref.half()).dtype == torch.float32
    with pytest.raises(ValueError, match="t must be finite and > 0"):
        fam.log_density(x, 0.0, ref)
    with pytest.raises(ValueError, match="ref is empty"):
        fam.log_density(x, 0.5, ref[:0])


def test_the_radial_density_at_a_coincident_point_is_finite():
    """r^-(d-1) is infinite at r = 0; the engine's clamp at TINY makes it a large finite number."""
    ref = torch.randn(4, 3, dtype=F64)
    for name in RADIAL:
        for dt in (F64, torch.float32):
            lp = FAMS[name].log_density(ref[:2].to(dt), 0.5, ref.to(dt))
            assert torch.isfinite(lp).all() and (lp > 50).all(), (name, dt, lp)


# ------------------------------------------------------------------------------------------------------------
# quadrature: it integrates to 1

def _tan_nodes(n, L):
    """Midpoint nodes of x = L tan(theta) on (-pi/2, pi/2) and their weights dx (float64)."""
    th = (torch.arange(n, dtype=F64) + 0.5) / n * math.pi - math.pi / 2
    return L * torch.tan(th), L / torch.cos(th) ** 2 * (math.pi / n)


@pytest.mark.parametrize("name", list(FAMS))
def test_integrates_to_one_in_1d(name):
    fam = FAMS[name]
    ref = torch.tensor([[-0.7], [0.2], [0.5]], dtype=F64)
    xs, ws = _tan_nodes(40001, 1.0)
    for t in times(name):
        p = torch.exp(fam.log_density(xs[:, None], t, ref))
        total = float((p * ws).sum())
        print(f"{name} d=1 t={t}: integral {total:.10f}")
        assert abs(total - 1.0) < 1e-6, (name, t, total)


@pytest.mark.parametrize("name", list(FAMS))
def test_integrates_to_one_in_2d(name):
    """Polar coordinates about the origin (r = tan theta) with two reference points; the radial kinds, whose
    density has an integrable r^-1 singularity at each point, in polar coordinates about their one point."""
    fam = FAMS[name]
    for t in times(name)[:2]:
        if name in RADIAL:
            ref = torch.tensor([[0.3, -0.2]], dtype=F64)
            th = (torch.arange(4000, dtype=F64) + 0.5) / 4000 * (math.pi / 2)  # r = t tan(theta) on (0, inf)
            r, dr = t * torch.tan(th), t / torch.cos(th) ** 2 * (math.pi / 2 / 4000)
            phi = torch.tensor(0.7, dtype=F64)
            pts = ref + r[:, None] * torch.stack((torch.cos(phi), torch.sin(phi)))[None, :]
            p = torch.exp(fam.log_density(pts, t, ref))
            total = float((p * 2 * math.pi * r * dr).sum())  # isotropic about the point
        else:
            # polar about the origin: r = tan(theta) (the heavy tails stay bounded), a periodic grid in phi
            ref = torch.tensor([[-0.4, 0.1], [0.5, 0.3]], dtype=F64)
            nr, nphi = 2000, 256
            th = (torch.arange(nr, dtype=F64) + 0.5) / nr * (math.pi / 2)
            r, dr = torch.tan(th), (math.pi / 2 / nr) / torch.cos(th) ** 2
            phi = torch.arange(nphi, dtype=F64) / nphi * 2 * math.pi
            pts = (r[:, None, None] * torch.stack((torch.cos(phi), torch.sin(phi)), dim=1)[None]).reshape(-1, 2)
            p = torch.exp(fam.log_density(pts, t, ref)).reshape(nr, nphi)
            total = float((p * (r * dr)[:, None]).sum() * (2 * math.pi / nphi))
        print(f"{name} d=2 t={t}: integral {total:.8f}")
        assert abs(total - 1.0) < 2e-5, (name, t, total)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_log_norm_only_pass_equals_the_full_one(dtype):
    # log_density skips the weighted-sum GEMM (mean=False): the same log_norm and ess bit for bit, over several
    # chunks, on a column-major query batch, for every built-in family and path
    from fastflow import field as F

    g = torch.Generator().manual_seed(5)
    ref = (torch.randn(300, 7, generator=g, dtype=torch.float64) + 2.0).to(dtype)   # off-origin: centring runs
    x = (torch.randn(7, 33, generator=g, dtype=torch.float64).t() + 2.0).to(dtype)  # column-major
    t = torch.rand(33, generator=g, dtype=torch.float64).to(dtype) * 0.9 + 0.05
    for fam in (fastflow.Poisson(1), fastflow.Poisson(16), fastflow.Gaussian(), fastflow.RectifiedFlow(),
                fastflow.AffinePath(fastflow.schedulers.Cosine()), fastflow.RadialCDF("tanh")):
        full = F.evaluate(fam, x, t, ref, backend="torch", chunk_size=64)
        part = F.evaluate(fam, x, t, ref, backend="torch", chunk_size=64, mean=False)
        assert part.xbar is None
        assert torch.equal(part.log_norm, full.log_norm) and torch.equal(part.ess, full.ess), fam
        want = fam.log_density(x.to(torch.float64), t.to(torch.float64), ref.to(torch.float64), backend="reference")
        tol = 1e-10 if dtype == torch.float64 else 2e-4
        torch.testing.assert_close(fam.log_density(x, t, ref, chunk_size=64).to(torch.float64), want, rtol=tol,
                                   atol=tol)
