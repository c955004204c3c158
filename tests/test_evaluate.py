"""fastflow.evaluate: the posterior variance against a dense float64 computation, and field_gap against models
whose gap is known (the exact field itself, the exact field plus a constant offset)."""
import math

import pytest
import torch

import fastflow
from fastflow.evaluate import METRICS, field_gap, posterior_variance

F64 = torch.float64


def _dense_variance(fam, x, t, ref):
    """sum_j w_j ||ref_j - xbar||^2 with the weights from the family's formula on direct differences."""
    B, d = x.shape[0], math.prod(x.shape[1:])
    x2, r2 = x.reshape(B, d).double(), ref.reshape(len(ref), d).double()
    tt = torch.as_tensor(t, dtype=F64).expand(B)
    a, s = fam.path_scale(tt), fam.noise_scale(tt)
    dist2 = ((x2[:, None, :] - a[:, None, None] * r2[None]) ** 2).sum(-1)
    w = torch.softmax(fam.reference_log_weight(d)(dist2, s[:, None]), dim=1)
    xbar = w @ r2
    return (w * ((r2[None] - xbar[:, None, :]) ** 2).sum(-1)).sum(1), xbar


FAMILIES = [fastflow.Gaussian(), fastflow.Poisson(1), fastflow.Poisson(128), fastflow.RadialCDF("tanh"),
            fastflow.RectifiedFlow()]


@pytest.mark.parametrize("fam", FAMILIES, ids=repr)
@pytest.mark.parametrize("chunk_size", [1, 17, None])
def test_posterior_variance_against_dense(fam, chunk_size):
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(60, 2, 3, dtype=F64, generator=g) + 2.0
    for t in (0.05, 0.4, 0.9):
        x = fam.perturb(ref[:20], t, generator=g)
        var = posterior_variance(fam, x, t, ref, chunk_size=chunk_size)
        want, xbar = _dense_variance(fam, x, t, ref)
        assert var.dtype == F64 and var.shape == (20,)
        assert (var - want).abs().max() < 1e-10, (t, (var - want).abs().max())
        assert torch.allclose(xbar, fam.posterior_mean(x, t, ref).reshape(20, -1), atol=1e-10)


def test_posterior_variance_float32_input_and_per_row_t():
    g = torch.Generator().manual_seed(1)
    ref = torch.rand(200, 16, generator=g) * 2 - 1
    fam = fastflow.Poisson(4)
    t = torch.rand(30, generator=g) * 2 + 0.05
    x = fam.perturb(ref[:30], t, generator=g)
    var = posterior_variance(fam, x, t, ref, chunk_size=64)
    want, _ = _dense_variance(fam, x.double(), t.double(), ref.double())
    assert var.dtype == F64 and (var - want).abs().max() < 1e-10
    assert posterior_variance(fam, x[:0], 0.5, ref).shape == (0,)


def _exact_gap(fam, ref, ts, target, n, **kw):
    field = fam.velocity if target == "velocity" else fam.posterior_mean
    return field_gap(lambda x, t: field(x, t, ref), fam, ref, ts, n=n, target=target, **kw)


@pytest.mark.parametrize("fam,target", [(fastflow.Gaussian(), "posterior_mean"),
                                        (fastflow.Poisson(8), "posterior_mean"),
                                        (fastflow.RectifiedFlow(), "velocity"),
                                        (fastflow.Gaussian(), "velocity")], ids=str)
def test_the_exact_field_has_no_gap_and_sits_on_the_floor(fam, target):
    g = torch.Generator().manual_seed(2)
    ref = torch.randn(40, 5, dtype=F64, generator=g)
    held = torch.randn(30, 5, dtype=F64, generator=g)
    ts = [0.05, 0.3, 0.8]
    r = _exact_gap(fam, ref, ts, target, 3000, held_out=held, generator=g, batch_size=700)
    assert torch.equal(r["t"], torch.tensor(ts, dtype=F64)) and r["target"] == target and r["n"] == 3000
    assert all(r[k] is r["train"][k] for k in METRICS)  # the contract's top-level keys are the train set's
    for name in ("train", "held_out"):
        m = r[name]
        assert set(m) == set(METRICS) | {"rel_errors"}
        assert all(m[k].shape == (3,) and m[k].dtype == F64 for k in METRICS) and m["rel_errors"].shape == (3, 3000)
        assert float(m["rel_error"].max()) < 1e-12 and float(m["rel_error_mean"].max()) < 1e-12
        assert float(m["field_mse"].max()) < 1e-24
        assert torch.allclose(m["excess"], m["mse"] - m["loss_floor"], rtol=1e-12, atol=1e-15)
    # the posterior mean is the best predictor of x0 drawn from ref: mse = floor in expectation (to the rounding
    # of a posterior that is certain to ~1e-30 at small t, where xbar rounds to x0 but the floor stays > 0)
    ex, se = r["train"]["excess"], r["train"]["excess_stderr"]
    assert bool((ex.abs() <= 4.5 * se + 1e-15).all()), (ex, se)
    # a held-out x0 is not drawn from ref's posterior: the exact field memorises, its held-out excess is large
    assert float(r["held_out"]["excess"][0]) > 10 * float(r["held_out"]["excess_stderr"][0])


def test_velocity_floor_is_the_denoising_floor_in_velocity_units():
    g = torch.Generator().manual_seed(3)
    ref = torch.randn(25, 4, dtype=F64, generator=g)
    fam = fastflow.Poisson(2)
    den = _exact_gap(fam, ref, [0.2, 1.5], "posterior_mean", 50, generator=torch.Generator().manual_seed(9))
    vel = _exact_gap(fam, ref, [0.2, 1.5], "velocity", 50, generator=torch.Generator().manual_seed(9))
    # the same draws; B_t = -1/t for the (x - xbar)/t families
    t = torch.tensor([0.2, 1.5], dtype=F64)
    assert torch.allclose(vel["train"]["loss_floor"], den["train"]["loss_floor"] / t**2, rtol=1e-12)
    assert torch.allclose(vel["train"]["mse"], den["train"]["mse"] / t**2, rtol=1e-10)


def test_a_constant_offset_gives_its_relative_norm():
    g = torch.Generator().manual_seed(4)
    ref = torch.randn(80, 3, 4, dtype=F64, generator=g)
    fam = fastflow.Gaussian()
    c = torch.randn(3, 4, dtype=F64, generator=g) * 0.1
    seen = []

    def model(x, t):
        assert t.shape == (x.shape[0],) and t.dtype == x.dtype
        e = fam.posterior_mean(x, t, ref)
        seen.append(e.reshape(len(e), -1))
        return e + c

    ts = torch.tensor([0.1, 1.0, 5.0])
    r = field_gap(model, fam, ref, ts, n=64, generator=g, batch_size=20)
    exact = torch.cat(seen).reshape(3, 64, 12)
    want = float(c.norm()) / exact.norm(dim=2)
    assert torch.allclose(r["train"]["rel_errors"], want, rtol=1e-12, atol=0)
    assert torch.allclose(r["train"]["rel_error"], want.median(dim=1).values, rtol=1e-12)
    assert torch.allclose(r["train"]["rel_error_mean"], want.mean(dim=1), rtol=1e-12)
    assert torch.allclose(r["train"]["field_mse"], torch.full((3,), float((c ** 2).mean()), dtype=F64), rtol=1e-12)
    assert r["held_out"] is None


def test_float32_model_and_reference():
    g = torch.Generator().manual_seed(5)
    ref = torch.rand(100, 8, generator=g)
    fam = fastflow.Poisson(16)
    r = _exact_gap(fam, ref, [1.0], "posterior_mean", 16, generator=g)
    assert float(r["train"]["rel_error"][0]) == 0.0 and math.isfinite(float(r["train"]["loss_floor"][0]))


def test_errors():
    ref = torch.randn(10, 3)
    fam = fastflow.Gaussian()
    model = lambda x, t: x  # noqa: E731
    with pytest.raises(ValueError, match="ts is empty"):
        field_gap(model, fam, ref, [])
    with pytest.raises(ValueError, match="ts must be finite and > 0"):
        field_gap(model, fam, ref, [0.5, 0.0])
    with pytest.raises(ValueError, match="ts must be finite and > 0"):
        field_gap(model, fam, ref, torch.tensor([-1.0]))
    with pytest.raises(ValueError, match="<= 1.0"):
        field_gap(model, fastflow.RectifiedFlow(), ref, [1.5])
    with pytest.raises(ValueError, match="1-D"):
        field_gap(model, fam, ref, torch.ones(2, 2))
    with pytest.raises(TypeError, match="ts must be"):
        field_gap(model, fam, ref, 0.5)
    with pytest.raises(ValueError, match="n must be >= 1"):
        field_gap(model, fam, ref, [0.5], n=0)
    with pytest.raises(TypeError, match="n must be an int"):
        field_gap(model, fam, ref, [0.5], n=2.0)
    with pytest.raises(ValueError, match="unknown target"):
        field_gap(model, fam, ref, [0.5], target="score")
    with pytest.raises(TypeError, match="family must be a fastflow.Family"):
        field_gap(model, "gaussian", ref, [0.5])
    with pytest.raises(TypeError, match="model must be callable"):
        field_gap(None, fam, ref, [0.5])
    with pytest.raises(ValueError, match="per-point shape"):
        field_gap(model, fam, ref, [0.5], held_out=torch.randn(5, 4))
    with pytest.raises(ValueError, match="same dtype"):
        field_gap(model, fam, ref, [0.5], held_out=torch.randn(5, 3, dtype=F64))
    with pytest.raises(ValueError, match="model returned shape"):
        field_gap(lambda x, t: x[:, :2], fam, ref, [0.5])
    with pytest.raises(TypeError, match="model must return a torch.Tensor"):
        field_gap(lambda x, t: 0.0, fam, ref, [0.5])
    with pytest.raises(FloatingPointError, match="NaN or inf at t = 0.25"):
        field_gap(lambda x, t: x / (t[:, None] - 0.25), fam, ref, [0.5, 0.25])
    with pytest.raises(ValueError, match="ref is empty"):
        field_gap(model, fam, torch.zeros(0, 3), [0.5])
    with pytest.raises(ValueError, match="t must be finite and > 0"):
        posterior_variance(fam, ref, -1.0, ref)
