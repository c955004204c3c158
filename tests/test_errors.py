"""Bad input raises ValueError / TypeError naming the argument (docs/api.md, Errors)."""
import math

import pytest
import torch

import fastflow
from fastflow._core import loader as _loader


@pytest.fixture
def data():
    return torch.randn(4, 3, 5), torch.randn(6, 3, 5)


FAMS = [fastflow.Poisson(1), fastflow.Gaussian(), fastflow.RadialCDF("exp"), fastflow.RectifiedFlow()]


@pytest.mark.parametrize("fam", FAMS, ids=repr)
def test_shape_mismatch(fam, data):
    x, ref = data
    with pytest.raises(ValueError, match="x and ref"):
        fam.posterior_mean(x, 0.5, ref.reshape(6, 15))
    with pytest.raises(ValueError, match=r"t must be .*\(B,\)"):
        fam.posterior_mean(x, torch.ones(3), ref)
    with pytest.raises(ValueError, match="x must have at least 1"):
        fam.velocity(torch.tensor(1.0), 0.5, ref)


@pytest.mark.parametrize("fam", FAMS, ids=repr)
@pytest.mark.parametrize("bad_t", [0.0, -1.0, math.nan, math.inf])
def test_bad_time(fam, data, bad_t):
    x, ref = data
    with pytest.raises(ValueError, match="t must be finite and > 0"):
        fam.posterior_mean(x, bad_t, ref)
    with pytest.raises(ValueError, match="t must be finite and > 0"):
        fam.velocity(x, torch.tensor([0.5, 0.5, bad_t, 0.5]), ref)


def test_rectified_flow_time_at_most_one(data):
    x, ref = data
    with pytest.raises(ValueError, match="<= 1.0"):
        fastflow.RectifiedFlow().posterior_mean(x, 1.5, ref)


def test_wrong_types(data):
    x, ref = data
    fam = fastflow.Gaussian()
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        fam.posterior_mean(x.numpy(), 0.5, ref)
    with pytest.raises(TypeError, match="ref must be a floating-point"):
        fam.posterior_mean(x, 0.5, ref.long())
    with pytest.raises(TypeError, match="t must be a float"):
        fam.posterior_mean(x, "0.5", ref)


def test_empty_ref(data):
    x, _ = data
    with pytest.raises(ValueError, match="ref is empty"):
        fastflow.Poisson().posterior_mean(x, 0.5, torch.zeros(0, 3, 5))
    with pytest.raises(ValueError, match="ref is empty"):
        fastflow.pfgm.target(x, 0.5, torch.zeros(0, 3, 5))


@pytest.mark.parametrize("where", ["x", "ref", "z"])
def test_nan_and_inf_inputs(data, where):
    x, ref = data
    for bad in [math.nan, math.inf]:
        xx, rr, z = x.clone(), ref.clone(), torch.ones(4)
        {"x": xx, "ref": rr, "z": z}[where].view(-1)[1] = bad
        name = where
        with pytest.raises(ValueError, match=name):
            fastflow.pfgm.target(xx, z, rr)


def test_unknown_names(data):
    x, ref = data
    with pytest.raises(ValueError, match="unknown RadialCDF name 'cosh'"):
        fastflow.RadialCDF("cosh")
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        fastflow.Gaussian().posterior_mean(x, 0.5, ref, backend="cuda")
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        fastflow.Gaussian().posterior_mean(x, 0.5, ref, precision="fp8")


def test_env_backend_override(data, monkeypatch):
    x, ref = data
    monkeypatch.setenv("FASTFLOW_BACKEND", "nope")
    with pytest.raises(ValueError, match="FASTFLOW_BACKEND"):
        fastflow.Gaussian().posterior_mean(x, 0.5, ref)
    monkeypatch.setenv("FASTFLOW_BACKEND", "reference")
    got = fastflow.Gaussian().posterior_mean(x.double(), 0.5, ref.double())
    monkeypatch.delenv("FASTFLOW_BACKEND")
    torch.testing.assert_close(got, fastflow.Gaussian().posterior_mean(x.double(), 0.5, ref.double()))


def test_triton_on_cpu_without_interpreter_says_how(data, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, ref = data
    with pytest.raises(RuntimeError, match="runs on CUDA tensors"):
        fastflow.Gaussian().posterior_mean(x, 0.5, ref, backend="triton")


def test_bad_family_parameters():
    with pytest.raises(ValueError, match="D must be"):
        fastflow.Poisson(D=0)
    with pytest.raises(TypeError, match="D must be"):
        fastflow.Poisson(D="1")
    with pytest.raises(ValueError, match="gamma"):
        fastflow.pfgm.target(torch.randn(2, 3), 1.0, torch.randn(4, 3), gamma=-1.0)


def test_device_mismatch_and_empty_batch(data):
    x, ref = data
    out = fastflow.Gaussian().posterior_mean(x[:0], 0.5, ref)
    assert out.shape == (0, 3, 5)
    assert fastflow.pfgm.target(x[:0], 0.5, ref).shape == (0, 16)


def test_overflowing_weights_raise_instead_of_nan():
    """t so small that r^2 / t^2 overflows float32: an error, never a silent NaN."""
    x = torch.tensor([[0.0], [1e19]])
    ref = torch.tensor([[1e19], [-1e19]])
    with pytest.raises(FloatingPointError, match="overflowed"):
        fastflow.Gaussian().posterior_mean(x, 1e-30, ref, backend="torch")


def test_backends_report():
    info = fastflow.backends()
    for key in ["field_backends", "C", "triton", "cuda", "devices", "torch"]:
        assert key in info
    assert "torch" in info["field_backends"] and "reference" in info["field_backends"]
    assert info["C"] == _loader.has_C()


def test_targets_name_sigma(data):
    x, ref = data
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        fastflow.stf_target(x, -1.0, ref)
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        fastflow.pfgmpp_target(x, torch.tensor([1.0, 0.0, 1.0, 1.0]), ref, D=128)
    with pytest.raises(ValueError, match=r"sigma must be a float or a tensor of shape \(B,\)"):
        fastflow.stf_target(x, torch.ones(5), ref)
