"""A user's radial CDF psi(r, t) (issue 12 §1): the field against float64 references written from the formulas,
the built-in closed forms, the draws by KS tests against psi itself, and the construction checks."""
import math

import pytest
import scipy.stats as st
import torch

import fastflow
from fastflow.radial import UserPsi

F64 = torch.float64


def tanh_psi(r, t):
    return 1.0 - 2.0 * torch.sigmoid(-2.0 * r / t)  # tanh(r/t), in a form whose derivative keeps its tail


def exp_psi(r, t):
    return 1.0 - torch.exp(-r / t)  # not -expm1(-r/t): autograd forms its derivative as expm1 + 1


def mixed_psi(r, t):
    # not a scale family: the example of the issue
    return 0.5 * (1.0 - 2.0 * torch.sigmoid(-2.0 * r / t)) + 0.5 * (1.0 - torch.exp(-r / t**2))


def t_squared_psi(r, t):
    return 1.0 - 2.0 * torch.sigmoid(-2.0 * r / t**2)  # Psi(r / s_t) with s_t = t^2


def lam_sq(t):
    return 0.3 * t * t


def reference_field(psi, x, t, ref, lam=None):
    """(phi-mean, velocity, log sum phi) from the definitions: phi = d_r psi / r^(d-1), phi~ = (-d_t psi - lam') / r^d,
    f = sum_j phi~_j (x - x0_j) / sum_j phi_j, derivatives by autograd of psi in float64, direct differences."""
    x, ref, t = x.to(F64), ref.to(F64), t.to(F64)
    d = x.shape[1]
    diff = x[:, None, :] - ref[None, :, :]
    r = diff.norm(dim=-1).detach().requires_grad_(True)
    tt = t[:, None].expand_as(r).clone().requires_grad_(True)
    dr, dt = torch.autograd.grad(psi(r, tt).sum(), (r, tt))
    dl = torch.zeros_like(t)
    if lam is not None:
        t1 = t.clone().requires_grad_(True)
        (dl,) = torch.autograd.grad(lam(t1).sum(), (t1,))
    log_phi = torch.log(dr) - (d - 1) * torch.log(r.detach())
    flux = (-dt - dl[:, None]) / r.detach() ** d
    lse = torch.logsumexp(log_phi, dim=1)
    w = torch.exp(log_phi - lse[:, None])
    mean = w @ ref
    vel = ((flux * torch.exp(-lse)[:, None])[:, :, None] * diff).sum(dim=1)
    return mean, vel, lse


def rel_err(a, b):
    a, b = a.to(F64).reshape(len(a), -1), b.to(F64).reshape(len(b), -1)
    return float(((a - b).norm(dim=1) / b.norm(dim=1).clamp_min(1e-300)).max())


def data(B, R, d, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(R, d, generator=g, dtype=F64)
    x = ref[torch.arange(B) % R] + scale * torch.randn(B, d, generator=g, dtype=F64)
    t = (0.2 + torch.rand(B, generator=g, dtype=F64)) * scale * math.sqrt(d)
    return x, t, ref


# -- the field ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [1, 2, 5, 64, 3072])
@pytest.mark.parametrize("name,psi", [("tanh", tanh_psi), ("exp", exp_psi)])
def test_user_psi_matches_the_builtin_closed_form(name, psi, d):
    x, t, ref = data(6, 40, d, seed=d)
    user, builtin = fastflow.RadialCDF(psi), fastflow.RadialCDF(name)
    for backend in ("torch", "reference"):
        v = user.velocity(x, t, ref, backend=backend)
        m, s = user.posterior_mean(x, t, ref, backend=backend, return_stats=True)
        m0, s0 = builtin.posterior_mean(x, t, ref, backend="reference", return_stats=True)
        assert rel_err(v, builtin.velocity(x, t, ref, backend="reference")) < 1e-11
        assert rel_err(m, m0) < 1e-11
        # log sum phi keeps the constant -log t of d_r psi = Psi'(r/t) / t, which the closed form leaves out
        torch.testing.assert_close(s.log_norm, s0.log_norm - torch.log(t), rtol=1e-12, atol=1e-9)
        torch.testing.assert_close(s.ess, s0.ess, rtol=1e-10, atol=0)


@pytest.mark.parametrize("d", [1, 3, 40])
def test_scale_family_in_another_time_reduces_to_its_closed_form(d):
    # psi = Psi(r / s_t) with s_t = t^2: f = (s'/s) (x - xbar) = (2 / t) (x - xbar_tanh(x, t^2))
    x, t, ref = data(5, 30, d, seed=3)
    t = t.clamp(0.3, 3.0)
    v = fastflow.RadialCDF(t_squared_psi).velocity(x, t, ref)
    xbar = fastflow.RadialCDF("tanh").posterior_mean(x, t * t, ref, backend="reference")
    assert rel_err(v, 2.0 / t[:, None] * (x - xbar)) < 1e-11


@pytest.mark.parametrize("lam", [None, lam_sq])
@pytest.mark.parametrize("d", [1, 2, 7])
def test_non_scale_family_against_the_definition(d, lam):
    x, t, ref = data(9, 50, d, seed=d + 10)
    fam = fastflow.RadialCDF(mixed_psi, lam=lam)
    m_ref, v_ref, lse_ref = reference_field(mixed_psi, x, t, ref, lam)
    for backend, chunk in (("torch", None), ("torch", 7), ("reference", None)):
        v = fam.velocity(x, t, ref, backend=backend, chunk_size=chunk)
        m, s = fam.posterior_mean(x, t, ref, backend=backend, chunk_size=chunk, return_stats=True)
        assert rel_err(v, v_ref) < 1e-11, (backend, chunk)
        assert rel_err(m, m_ref) < 1e-11, (backend, chunk)
        torch.testing.assert_close(s.log_norm, lse_ref, rtol=1e-12, atol=1e-10)


def test_lam_changes_the_flux_by_its_derivative_only():
    # phi~ gains -lam'_t / r^d: the velocity moves by -lam'_t sum_j (x - x0_j) / r_j^d / sum_j phi_j
    x, t, ref = data(4, 20, 3, seed=5)
    v0 = fastflow.RadialCDF(mixed_psi).velocity(x, t, ref)
    v1 = fastflow.RadialCDF(mixed_psi, lam=lam_sq).velocity(x, t, ref)
    _, _, lse = reference_field(mixed_psi, x, t, ref)
    diff = x[:, None, :] - ref[None]
    extra = -(0.6 * t)[:, None, None] * diff / diff.norm(dim=-1, keepdim=True) ** 3
    torch.testing.assert_close(v1 - v0, extra.sum(1) * torch.exp(-lse)[:, None], rtol=1e-9, atol=1e-12)
    # a string psi with a lam takes the general construction: lam = 0 gives the closed form back
    zero = fastflow.RadialCDF("tanh", lam=lambda t: 0.0 * t)
    assert rel_err(zero.velocity(x, t, ref), fastflow.RadialCDF("tanh").velocity(x, t, ref)) < 1e-11


def test_seams_chunks_strides_dtypes_and_empty_batch():
    x, t, ref = data(12, 37, 16, seed=7)
    fam = fastflow.RadialCDF(mixed_psi)
    v64 = fam.velocity(x, t, ref)
    xt = x.t().contiguous().t()                 # column-major
    xs = torch.empty(12, 32, dtype=F64)[:, ::2]  # a strided view
    xs.copy_(x)
    for xx in (xt, xs):
        assert rel_err(fam.velocity(xx, t, ref, chunk_size=5), v64) < 1e-12
    v32 = fam.velocity(x.float(), t.float(), ref.float(), chunk_size=16)
    assert v32.dtype == torch.float32 and rel_err(v32, v64) < 1e-4
    v16 = fam.velocity(x.half(), t.float(), ref.half())
    assert v16.dtype == torch.float16 and torch.isfinite(v16).all()
    empty = fam.velocity(x[:0], t[:0], ref)
    assert empty.shape == (0, 16)
    m, s = fam.posterior_mean(x[:0].reshape(0, 4, 4), t[:0], ref.reshape(37, 4, 4), return_stats=True)
    assert m.shape == (0, 4, 4) and s.log_norm.shape == (0,)
    # a (B, *shape) batch keeps its shape
    assert fam.velocity(x.reshape(12, 4, 4), t, ref.reshape(37, 4, 4)).shape == (12, 4, 4)


def test_underflow_raises_instead_of_nan():
    x, t, ref = data(3, 10, 64, seed=1)
    with pytest.raises(FloatingPointError, match="overflowed"):
        fastflow.RadialCDF(mixed_psi).velocity(x, torch.full((3,), 1e-3, dtype=F64), ref)


# -- the draws ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("d", [1, 3, 50])
def test_perturb_radius_follows_psi(d):
    fam = fastflow.RadialCDF(mixed_psi)
    g = torch.Generator().manual_seed(d)
    n = 3000
    x0 = torch.randn(n, d, generator=g, dtype=F64)
    t = 0.05 + 2.0 * torch.rand(n, generator=g, dtype=F64)
    x = fam.perturb(x0, t, generator=g)
    r = (x - x0).norm(dim=1)
    assert st.kstest(mixed_psi(r, t).numpy(), "uniform").pvalue > 1e-3
    if d == 3:  # a uniform direction: each coordinate of the unit vector is U(-1, 1) in d = 3
        assert st.kstest(((x - x0)[:, 2] / r).numpy(), "uniform", args=(-1, 2)).pvalue > 1e-3


def test_prior_radius_follows_psi_at_T():
    fam = fastflow.RadialCDF(mixed_psi, lam=lam_sq)
    g = torch.Generator().manual_seed(11)
    p = fam.prior(3000, (2, 3), T=0.7, generator=g, dtype=F64)
    assert p.shape == (3000, 2, 3)
    r = p.reshape(3000, -1).norm(dim=1)
    assert st.kstest(mixed_psi(r, torch.tensor(0.7, dtype=F64)).numpy(), "uniform").pvalue > 1e-3
    again = fam.prior(3000, (2, 3), T=0.7, generator=torch.Generator().manual_seed(11), dtype=F64)
    assert torch.equal(p, again)
    p16 = fam.prior(5, 4, T=1.0, dtype=torch.float16)
    assert p16.dtype == torch.float16 and torch.isfinite(p16).all()
    assert fam.perturb(torch.zeros(0, 3), 0.5).shape == (0, 3)


def test_inverse_is_the_inverse_cdf_to_float64_precision():
    # the bisection is exact up to psi's own rounding: |psi(r) - u| within an ulp, and r to 1e-14 where psi
    # resolves it (near u = 1 a float64 psi cannot: its spacing there is 2^-53)
    u = torch.tensor([0.0, 1e-12, 0.1, 0.5, 0.9, 1 - 1e-9, 1 - 2.0**-53], dtype=F64)
    t = torch.full_like(u, 0.3)
    psi = UserPsi(lambda r, t: torch.tanh(r / t))
    r = psi.inverse(u, t)
    torch.testing.assert_close(r[1:5], 0.3 * torch.atanh(u[1:5]), rtol=1e-14, atol=0)
    assert float((torch.tanh(r / t) - u).abs().max()) <= 2.0**-53
    assert float(r[0]) < 1e-300 and bool(torch.isfinite(r).all())


# -- the construction checks ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("psi,match", [
    (lambda r, t: torch.tanh(r / t) * torch.log(r - 1.0), "not finite"),
    (lambda r, t: 0.5 + 0.5 * torch.tanh(r / t), r"psi_t\(0\) must be 0"),
    (lambda r, t: 0.5 * torch.tanh(r / t), r"psi_t\(inf\) must be 1"),
    (lambda r, t: torch.tanh(r / t) * (1 - 0.5 * torch.exp(-(r - 2.0) ** 2)), "increasing in r"),
    (lambda r, t: torch.tanh(r), "tend to 1 as t -> 0"),
    (lambda r, t: 1.2 * torch.tanh(r / t), r"lie in \[0, 1\]"),
    (lambda r, t: torch.tanh(r / t).sum(), "broadcast shape"),
    (lambda r, t: (r / t).detach().numpy(), "broadcast shape"),
])
def test_a_psi_breaking_a_condition_is_refused(psi, match):
    with pytest.raises(ValueError, match=match):
        fastflow.RadialCDF(psi)


def test_bad_arguments():
    with pytest.raises(TypeError, match="callable"):
        fastflow.RadialCDF(3)
    with pytest.raises(TypeError, match="lam"):
        fastflow.RadialCDF(tanh_psi, lam=2.0)
    with pytest.raises(ValueError, match="lam"):
        fastflow.RadialCDF(tanh_psi, lam=lambda t: torch.log(t - 1.0))
    with pytest.raises(ValueError, match="unknown RadialCDF name"):
        fastflow.RadialCDF("cosh")
    fam = fastflow.RadialCDF(tanh_psi)
    x, t, ref = data(2, 5, 3)
    with pytest.raises(ValueError):
        fam.velocity(x, -t, ref)
    assert "tanh_psi" in repr(fam) and "lam_sq" in repr(fastflow.RadialCDF("exp", lam=lam_sq))


# -- autograd through the field -------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend,chunk", [("torch", 7), ("torch", None), ("reference", None)])
def test_user_psi_field_is_differentiable_in_x_and_t(backend, chunk):
    # gradcheck: autograd's derivatives (through the stream, psi's derivatives taken with create_graph) against
    # central finite differences of the same float64 function
    x, t, ref = data(4, 20, 3, seed=5)
    fam = fastflow.RadialCDF(mixed_psi, lam=lam_sq)
    xg, tg = x.clone().requires_grad_(True), t.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: fam.velocity(a, b, ref, backend=backend, chunk_size=chunk),
                                    (xg, tg))
    assert torch.autograd.gradcheck(lambda a, b: fam.posterior_mean(a, b, ref, backend=backend, chunk_size=chunk),
                                    (xg, tg))
    # the graph-free call gives the same numbers
    with torch.no_grad():
        v0 = fam.velocity(x, t, ref, backend=backend, chunk_size=chunk)
    torch.testing.assert_close(fam.velocity(xg, tg, ref, backend=backend, chunk_size=chunk).detach(), v0,
                               rtol=1e-13, atol=1e-14)


# -- the Green's-function quantities: normalised density, divergence, continuity ------------------------------------

def test_log_density_is_the_builtin_one_for_tanh_and_exp():
    x, t, ref = data(5, 12, 4, seed=2)
    for name, psi in (("tanh", tanh_psi), ("exp", exp_psi)):
        got = fastflow.RadialCDF(psi).log_density(x, t, ref)
        torch.testing.assert_close(got, fastflow.RadialCDF(name).log_density(x, t, ref), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lam", [None, lam_sq])
def test_log_density_integrates_to_one_in_1d_and_2d(lam):
    fam = fastflow.RadialCDF(mixed_psi, lam=lam)   # lam changes the flux, never the density
    # midpoints on [-40 t, 40 t] (the tails beyond hold < e^-70 of the mass; further out a float64 d_r psi
    # underflows and the density is refused rather than returned as -inf)
    ref1 = torch.tensor([[-0.7], [0.2], [0.5]], dtype=F64)
    n = 100001
    for t in (0.3, 1.0, 2.5):
        L = 40 * t
        xs = ((torch.arange(n, dtype=F64) + 0.5) / n * 2 - 1) * L
        total = float(torch.exp(fam.log_density(xs[:, None], t, ref1)).sum() * (2 * L / n))
        assert abs(total - 1.0) < 1e-6, (t, total)
    # d = 2: polar coordinates about the one point (the density is isotropic there, with an r^-1 singularity)
    ref2 = torch.tensor([[0.3, -0.2]], dtype=F64)
    m = 20000
    for t in (0.3, 1.0):
        dr = 40 * t / m
        r = (torch.arange(m, dtype=F64) + 0.5) * dr
        pts = ref2 + r[:, None] * torch.tensor([[math.cos(0.7), math.sin(0.7)]], dtype=F64)
        total = float((torch.exp(fam.log_density(pts, t, ref2)) * 2 * math.pi * r * dr).sum())
        assert abs(total - 1.0) < 1e-6, (t, total)


@pytest.mark.parametrize("lam", [None, lam_sq])
@pytest.mark.parametrize("d", [1, 2, 7])
def test_divergence_is_the_trace_of_the_jacobian(d, lam):
    x, t, ref = data(4, 15, d, seed=d + 20)
    fam = fastflow.RadialCDF(mixed_psi, lam=lam)
    J = torch.autograd.functional.jacobian(lambda y: fam.velocity(y, t, ref, backend="reference"), x)
    tr = torch.stack([J[i, :, i, :].diagonal().sum() for i in range(len(x))])
    for backend, chunk in (("torch", None), ("torch", 6), ("reference", None)):
        div, v = fam.divergence(x, t, ref, return_velocity=True, backend=backend, chunk_size=chunk)
        torch.testing.assert_close(div, tr, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(v, fam.velocity(x, t, ref), rtol=1e-12, atol=1e-13)
    div32 = fam.divergence(x.float(), t.float(), ref.float())
    assert div32.dtype == torch.float32 and float(((div32.double() - tr).abs() / tr.abs().clamp_min(1)).max()) < 1e-4
    # the scale family tanh: the built-in closed form's divergence
    torch.testing.assert_close(fastflow.RadialCDF(tanh_psi).divergence(x, t, ref),
                               fastflow.RadialCDF("tanh").divergence(x, t, ref), rtol=1e-11, atol=1e-11)
    assert fam.divergence(x[:0], t[:0], ref).shape == (0,)


@pytest.mark.parametrize("lam", [None, lam_sq])
def test_continuity_equation(lam):
    # d_t log p + f . grad log p + div f = 0 by central differences (float64, d = 2): the flux of a user psi moves
    # its own density (lam's point-source term is divergence-free and leaves it alone)
    fam = fastflow.RadialCDF(mixed_psi, lam=lam)
    g = torch.Generator().manual_seed(4)
    ref = torch.randn(5, 2, generator=g, dtype=F64)
    x = ref[torch.arange(6) % 5] + 0.5 * torch.randn(6, 2, generator=g, dtype=F64)
    t = 0.2 * 10.0 ** torch.linspace(0.0, 1.0, 6, dtype=F64)
    h = 1e-5
    dt_logp = (fam.log_density(x, t + h, ref) - fam.log_density(x, t - h, ref)) / (2 * h)
    grad = torch.stack([(fam.log_density(x + h * e, t, ref) - fam.log_density(x - h * e, t, ref)) / (2 * h)
                        for e in torch.eye(2, dtype=F64)], dim=1)
    div, v = fam.divergence(x, t, ref, return_velocity=True)
    resid = dt_logp + (v * grad).sum(dim=1) + div
    scale = dt_logp.abs() + (v * grad).sum(dim=1).abs() + div.abs()
    assert float((resid.abs() / scale).max()) < 1e-6, (resid, scale)


def test_divergence_refuses_autograd():
    x, t, ref = data(2, 5, 3)
    with pytest.raises(NotImplementedError, match="not differentiable"):
        fastflow.RadialCDF(mixed_psi).divergence(x.requires_grad_(True), t, ref)


def test_a_family_subclass_without_its_laws_is_refused_not_misdrawn():
    # before: "kind must be 0..3" from the engine, and a perturbation silently drawn from another law
    class Mine(fastflow.Family):
        def reference_log_weight(self, d):
            return lambda r2, t: -r2 / t

    x, t, ref = data(2, 5, 3)
    with pytest.raises(NotImplementedError, match="RadialCDF"):
        Mine().velocity(x, t, ref)
    with pytest.raises(NotImplementedError, match="radius law"):
        Mine().perturb(x, t)
    with pytest.raises(NotImplementedError, match="radius law"):
        Mine().prior(2, 3, T=1.0)


def test_float32_query_on_a_reference_point_at_large_d():
    # the GEMM form of s errs by ~eps |x - c| |y - c|, more than s itself for a query sitting on a reference point
    # (here s ~ 1e-4 at d = 3072); phi ~ r^-(d-1) and phi~ ~ r^-d then put a wrong 1/r into f (it read 1e17 for
    # 2 before each row's nearest distance was taken by a direct difference)
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(64, 3072, generator=g, dtype=F64) * 2 - 1
    x = ref[:4] + 1e-4 * torch.randn(4, 3072, generator=g, dtype=F64)
    x, ref = x.float().double(), ref.float().double()  # the float32 inputs exactly: compare the arithmetic only
    t = torch.tensor([1.0, 1.7, 3.0, 10.0], dtype=F64)
    for lam in (None, lam_sq):
        fam = fastflow.RadialCDF(mixed_psi, lam=lam)
        assert rel_err(fam.velocity(x.float(), t.float(), ref.float()), fam.velocity(x, t, ref)) < 1e-5
        assert rel_err(fam.posterior_mean(x.float(), t.float(), ref.float()), fam.posterior_mean(x, t, ref)) < 1e-6
        d64 = fam.divergence(x, t, ref)
        d32 = fam.divergence(x.float(), t.float(), ref.float()).double()
        assert float(((d32 - d64).abs() / d64.abs()).max()) < 1e-4
