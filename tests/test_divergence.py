"""Family.divergence: the exact div f of every family's and path's velocity in one streaming pass, against the
autograd trace of the float64 reference velocity, and the continuity equation d_t log p + f . grad log p + div f = 0
with Family.log_density (issue 12 §3)."""
import math

import pytest
import torch
from _util import FAMILIES

import fastflow

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest.py)


def _all_families():
    fams = {name: make() for name, make in FAMILIES.items()}
    S = fastflow.schedulers
    fams["affine_cosine"] = fastflow.AffinePath(S.Cosine())
    fams["affine_vp"] = fastflow.AffinePath(S.VP())
    fams["affine_student"] = fastflow.AffinePath(S.Cosine(), fastflow.StudentT(3.0))
    return fams


FAMS = _all_families()
IS_PATH = ("rf", "affine_cosine", "affine_vp", "affine_student")


def _times(name, B, dtype=F64):
    """Per-row times: (0.1 .. 0.95) for the paths (both branches of the combination: |a| >= 1/2 and below), a
    spread of 0.2 .. 2 for the families."""
    u = torch.linspace(0.0, 1.0, B, dtype=dtype)
    return 0.1 + 0.85 * u if name in IS_PATH else 0.2 * 10.0 ** u


def _problem(d, B=5, R=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(R, d, generator=g, dtype=F64)
    x = ref[torch.arange(B) % R] + 0.5 * torch.randn(B, d, generator=g, dtype=F64)
    return x, ref


def autograd_trace(fam, x, t, ref):
    """tr df/dx of the reference backend's velocity by torch.autograd.functional.jacobian, (B,) float64."""
    B, d = x.shape
    J = torch.autograd.functional.jacobian(lambda y: fam.velocity(y, t, ref, backend="reference"), x)
    return torch.stack([J[i, :, i, :].diagonal().sum() for i in range(B)])


@pytest.mark.parametrize("d", [1, 2, 7])
@pytest.mark.parametrize("name", list(FAMS))
def test_divergence_matches_the_autograd_trace(name, d):
    fam = FAMS[name]
    x, ref = _problem(d)
    t = _times(name, x.shape[0])
    want = autograd_trace(fam, x, t, ref)
    scale = want.abs().max().item()
    for backend, chunk in (("torch", None), ("torch", 3), ("reference", None)):
        got = fam.divergence(x, t, ref, backend=backend, chunk_size=chunk)
        assert got.shape == (x.shape[0],) and got.dtype == F64
        err = (got - want).abs().max().item()
        assert err <= 1e-10 * max(scale, 1.0), f"{name} d={d} {backend} chunk={chunk}: {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("name", list(FAMS))
def test_divergence_shapes_views_and_the_velocity(name):
    fam = FAMS[name]
    x, ref = _problem(6, B=4, R=9, seed=1)
    t = _times(name, 4)
    want = fam.divergence(x, t, ref)
    # non-contiguous x and ref, and a per-point shape (3, 2)
    big = torch.zeros(4, 12, dtype=F64)
    big[:, ::2] = x
    xs = big[:, ::2]
    assert not xs.is_contiguous()
    refs = torch.cat((ref, ref), dim=1)[:, :6]
    assert not refs.is_contiguous()
    torch.testing.assert_close(fam.divergence(xs, t, refs), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fam.divergence(x.reshape(4, 3, 2), t, ref.reshape(9, 3, 2)), want,
                               rtol=1e-12, atol=1e-12)
    div, v = fam.divergence(x.reshape(4, 3, 2), t, ref.reshape(9, 3, 2), return_velocity=True)
    assert v.shape == (4, 3, 2) and v.dtype == F64
    torch.testing.assert_close(v, fam.velocity(x, t, ref).reshape(4, 3, 2), rtol=1e-10, atol=1e-10)
    # a float t, and B = 0
    torch.testing.assert_close(fam.divergence(x, 0.5, ref), fam.divergence(x, torch.full((4,), 0.5, dtype=F64), ref))
    empty = fam.divergence(x[:0], t[:0], ref)
    assert empty.shape == (0,) and empty.dtype == F64
    div0, v0 = fam.divergence(x[:0], 0.5, ref, return_velocity=True)
    assert div0.shape == (0,) and v0.shape == (0, 6)
    # float16 input accumulates in float32, the divergence comes back in float32
    assert fam.divergence(x.half(), 0.5, ref.half()).dtype == torch.float32


def test_divergence_argument_errors():
    fam = fastflow.Gaussian()
    x, ref = _problem(3)
    with pytest.raises(TypeError, match="return_velocity must be a bool"):
        fam.divergence(x, 0.5, ref, return_velocity=1)
    with pytest.raises(ValueError, match="t must be finite and > 0"):
        fam.divergence(x, -1.0, ref)
    with pytest.raises(ValueError, match="per-point shape"):
        fam.divergence(x, 0.5, ref[:, :2])
    with pytest.raises(ValueError, match="x contains NaN"):
        fam.divergence(x.masked_fill(x > 1, math.nan), 0.5, ref)
    with pytest.raises(ValueError, match=r"<= 1\.0"):
        fastflow.RectifiedFlow().divergence(x, 1.5, ref)


@pytest.mark.parametrize("name", list(FAMS))
def test_a_coincident_point_gives_no_nan(name):
    """x = ref_j exactly (r = 0; the radial kinds' r^-(d-1) weight is clamped there): finite in both dtypes."""
    fam = FAMS[name]
    _, ref = _problem(5, R=8, seed=2)
    x = ref[:3].clone()
    if name in IS_PATH:  # the paths compare x with alpha_t ref_j: put x on the scaled point
        t = torch.full((3,), 0.3, dtype=F64)
        x = fam.path_scale(t)[:, None] * x
    for dt in (F64, torch.float32):
        div = fam.divergence(x.to(dt), 0.3, ref.to(dt))
        assert torch.isfinite(div).all(), (name, dt, div)
        div_ref = fam.divergence(x, 0.3, ref, backend="reference")
        assert torch.isfinite(div_ref).all(), (name, div_ref)


FLOAT32_CASES = [(t_rel, own) for t_rel in (0.01, 0.1, 1.0) for own in (True, False)]


@pytest.mark.parametrize("name", list(FAMS))
def test_float32_agrees_with_float64(name):
    """fp32 divergence against the float64 one at d = 3072, pixel-like data, t from 1% to 100% of the data scale;
    prints the worst relative error |div32 - div64| / |div64|."""
    from _util import make_problem

    fam = FAMS[name]
    gen = torch.Generator().manual_seed(3)
    d = 3072
    worst = 0.0
    for t_rel, own in FLOAT32_CASES:
        base = FAMS["rf"] if name in IS_PATH else fam  # the paths draw x = (1 - t) ref + t eps, t in (0, 1]
        x, t, ref = make_problem(base, 16, 128, d, min(t_rel, 0.9) if name in IS_PATH else t_rel, own=own,
                                 gen=gen, dtype=F64)
        if name in IS_PATH and own:  # on the path's own law: x = alpha ref + sigma eps
            t = min(t_rel, 0.9)
            tt = torch.tensor([t], dtype=F64)
            sigma = fam.scheduler(tt).sigma if isinstance(fam, fastflow.AffinePath) else tt
            x = fam.path_scale(tt) * ref[:16] + sigma * torch.randn(16, d, generator=gen, dtype=F64)
        want = fam.divergence(x, t, ref)
        got = fam.divergence(x.float(), t, ref.float())
        diff = (got.double() - want).abs()
        err = (diff / want.abs().clamp_min(1e-300)).max().item()
        # against the size of the two terms of div = d A + B tr (where they cancel, the error of tr shows larger)
        A, _ = fam.velocity_coefficients(torch.full((16,), float(t), dtype=F64))
        err_terms = (diff / ((d * A).abs() + (want - d * A).abs())).max().item()
        v64, v32 = fam.velocity(x, t, ref), fam.velocity(x.float(), t, ref.float()).double()
        v_err = ((v32 - v64).norm(dim=1) / v64.norm(dim=1)).max().item()
        worst = max(worst, err)
        print(f"{name} t_rel={t_rel} own={own}: fp32 rel err {err:.2e}, against the terms {err_terms:.2e} (the "
              f"velocity's {v_err:.2e})")
        if own:  # queries near their source (training, the end of sampling)
            assert err < 1e-5, (name, t_rel, own, err)
        else:  # far from all data at small t the fp32 distances limit the weights, the velocity's as much
            assert err_terms < max(1e-4, 2 * v_err), (name, t_rel, own, err_terms, v_err)
    print(f"{name}: worst fp32 rel err {worst:.2e}")


# ------------------------------------------------------------------------------------------------------------
# the continuity equation d_t p + div(f p) = 0, i.e. d_t log p + f . grad log p + div f = 0

@pytest.mark.parametrize("name", list(FAMS))
def test_continuity_equation(name):
    """Central differences in t and x of Family.log_density (float64, d = 2) with its velocity and divergence."""
    fam = FAMS[name]
    x, ref = _problem(2, B=6, R=5, seed=4)
    t = _times(name, 6) * (0.9 if name in IS_PATH else 1.0)
    ht, hx = 1e-5, 1e-5

    def logp(y, tt):
        return fam.log_density(y, tt, ref)

    dt_logp = (logp(x, t + ht) - logp(x, t - ht)) / (2 * ht)
    grad = torch.stack([(logp(x + hx * e, t) - logp(x - hx * e, t)) / (2 * hx)
                        for e in torch.eye(2, dtype=F64)], dim=1)
    div, v = fam.divergence(x, t, ref, return_velocity=True)
    resid = dt_logp + (v * grad).sum(dim=1) + div
    scale = dt_logp.abs() + (v * grad).sum(dim=1).abs() + div.abs()
    rel = (resid.abs() / scale).max().item()
    print(f"{name}: continuity residual / terms {rel:.2e}")
    assert rel < 1e-6, (name, resid, scale)


# ------------------------------------------------------------------------------------------------------------
# log_likelihood takes the exact divergence from an exact field (fastflow.Oracle)

@pytest.mark.parametrize("name", ["poisson128", "gaussian", "tanh", "rf", "affine_student"])
@pytest.mark.parametrize("d", [3, 24])
def test_log_likelihood_of_an_oracle_uses_the_exact_divergence(name, d):
    """Oracle(fam, ref) as f: the field's closed-form divergence (derivative "field"), against the exact trace by
    d VJPs of the differentiable float64 reference velocity; d = 24 is past EXACT_MAX_DIM (Hutchinson's default)."""
    fam = FAMS[name]
    g = torch.Generator().manual_seed(5)
    ref = torch.randn(12, d, generator=g, dtype=F64)
    x = ref[:4] + 0.2 * torch.randn(4, d, generator=g, dtype=F64)
    t0, t1 = (0.05, 0.9) if name in IS_PATH else (0.05, 3.0)

    def prior(y):  # any log-density closes the formula; both runs share it
        return -0.5 * (y.flatten(1) ** 2).sum(1)

    oracle = fastflow.Oracle(fam, ref)
    got = fastflow.log_likelihood(oracle, x, t0, t1, prior, rtol=1e-8, atol=1e-8)
    assert got.derivative == "field" and got.success.all()
    assert oracle.calls == int(got.nfe.max())  # one pass of the field per evaluation
    want = fastflow.log_likelihood(lambda y, t: fam.velocity(y, t, ref, backend="reference"), x, t0, t1, prior,
                                   divergence="exact", derivative="autograd", rtol=1e-8, atol=1e-8)
    err = (got.logp - want.logp).abs().max().item()
    print(f"{name} d={d}: |logp(field) - logp(VJP trace)| {err:.2e}, nfe {got.nfe.float().mean():.0f}")
    assert err < 1e-6 * max(1.0, want.logp.abs().max().item()), (got.logp, want.logp)
    # asking for Hutchinson (or a derivative) keeps that path
    hut = fastflow.log_likelihood(fastflow.Oracle(fam, ref, backend="reference"), x, t0, t1, prior,
                                  divergence="hutchinson", derivative="autograd", steps=4, method="rk4")
    assert hut.derivative == "autograd"


def test_at_the_source_end_of_a_path():
    """t = 1: a_t = 0 for rectified flow (the weights do not depend on x, tr = 0) and ~6e-17 for the cosine path."""
    x, ref = _problem(3, B=3, R=7, seed=6)
    for fam in (FAMS["rf"], FAMS["affine_cosine"], fastflow.AffinePath()):
        t = torch.ones(3, dtype=F64)
        want = autograd_trace(fam, x, t, ref)
        for backend in ("torch", "reference"):
            torch.testing.assert_close(fam.divergence(x, t, ref, backend=backend), want, rtol=1e-10, atol=1e-10)
