"""PFGM++ in sigma units (fastflow.pfgmpp) and EDM's preconditioning (fastflow.EDMPrecond), against the formulas,
the Poisson(D) pieces in r units they convert to, and ports of the official arithmetic (fastflow.testing)."""
import math

import numpy as np
import pytest
import torch
from scipy import stats
from test_host_reads import reads

import fastflow
from fastflow import pfgmpp
from fastflow._core import validate as V
from fastflow.testing import edm_precond_official, pfgmpp_perturb_official

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------ sigma -> r = sigma sqrt(D)

@pytest.mark.parametrize("D", [1, 7.5, 128])
def test_sigma_units_are_poisson_at_r(D):
    x0 = torch.rand(16, 2, 3, generator=gen(0), dtype=F64)
    sigma = torch.rand(16, generator=gen(1), dtype=F64) + 0.1
    r = sigma * math.sqrt(D)
    fam = fastflow.Poisson(D)
    assert torch.equal(pfgmpp.perturb(x0, sigma, D, generator=gen(2)), fam.perturb(x0, r, generator=gen(2)))
    assert torch.equal(pfgmpp.perturb(x0, 0.7, D, generator=gen(2)),
                       fam.perturb(x0, 0.7 * math.sqrt(D), generator=gen(2)))
    assert torch.equal(pfgmpp.prior(9, (2, 3), 80.0, D, generator=gen(3), dtype=F64),
                       fam.prior(9, (2, 3), T=80.0 * math.sqrt(D), generator=gen(3), dtype=F64))
    ref = torch.rand(30, 2, 3, generator=gen(4), dtype=F64)
    x = pfgmpp.perturb(ref[:16], sigma, D, generator=gen(5))
    assert torch.equal(pfgmpp.target(x, sigma, ref, D), fastflow.pfgmpp_target(x, sigma, ref, D=D))
    assert torch.allclose(pfgmpp.target(x, sigma, ref, D), fam.posterior_mean(x, r, ref), rtol=0, atol=1e-12)
    assert pfgmpp.to_radius(0.5, D) == 0.5 * math.sqrt(D) and pfgmpp.to_sigma(0.5 * math.sqrt(D), D) == 0.5
    assert torch.equal(pfgmpp.to_radius(sigma, D), r) and torch.allclose(pfgmpp.to_sigma(r, D), sigma)


def test_training_law_and_weight_are_edms():
    assert torch.equal(pfgmpp.sigmas(50, generator=gen(0)), fastflow.timesteps(50, "lognormal", generator=gen(0)))
    s = pfgmpp.sigmas(20000, generator=gen(1), dtype=F64)
    assert abs(float(s.log().mean()) + 1.2) < 0.03 and abs(float(s.log().std()) - 1.2) < 0.03
    assert pfgmpp.loss_weight is fastflow.edm_loss_weight


def test_perturbation_law_matches_the_official_draw():
    """||x - x0|| of pfgmpp.perturb and of the official EDMLoss (pfgmpp) draw: two-sample KS, d = 64, D = 8."""
    n, d, D = 4000, 64, 8.0
    x0 = torch.zeros(n, d, dtype=F64)
    sigma = torch.full((n,), 0.3, dtype=F64)
    ours = (pfgmpp.perturb(x0, sigma, D, generator=gen(0)) - x0).norm(dim=1)
    theirs = (pfgmpp_perturb_official(x0, sigma, D, np.random.default_rng(0), generator=gen(1)) - x0).norm(dim=1)
    p = stats.ks_2samp(ours.numpy(), theirs.numpy()).pvalue
    # and the exact law: (||x - x0|| / r)^2 ~ BetaPrime(d/2, D/2)
    p_exact = stats.kstest((ours / (0.3 * math.sqrt(D))).numpy() ** 2, stats.betaprime(d / 2, D / 2).cdf).pvalue
    print(f"pfgmpp.perturb radius: KS p = {p:.3g} against the official draw, {p_exact:.3g} against the exact law")
    assert p > 1e-3 and p_exact > 1e-3


def test_bad_input_is_named():
    x0 = torch.rand(4, 3)
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        pfgmpp.perturb(x0, 0.0, 128)
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        pfgmpp.perturb(x0, torch.tensor([1.0, -1.0, 1.0, 1.0]), 128)
    with pytest.raises(ValueError, match="D must be finite and >= 1"):
        pfgmpp.perturb(x0, 1.0, 0.5)
    with pytest.raises(TypeError, match="D must be a number"):
        pfgmpp.prior(4, 3, 80.0, "128")
    with pytest.raises(ValueError, match="sigma_max must be finite and > 0"):
        pfgmpp.prior(4, 3, -80.0, 128)
    with pytest.raises(ValueError, match="D must be finite and >= 1"):
        pfgmpp.target(x0, 1.0, x0, 0)
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        pfgmpp.target(x0, -1.0, x0, 2)
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        pfgmpp.to_radius(torch.tensor([[1.0, 0.0]]), 2)
    with pytest.raises(ValueError, match="r must be finite and > 0"):
        pfgmpp.to_sigma(-2.0, 2)
    with pytest.raises(ValueError, match="P_std"):
        pfgmpp.sigmas(4, P_std=0.0)


# ---------------------------------------------------------------------------------------------- EDMPrecond

class Raw(torch.nn.Module):
    """A raw network F(x, c_noise) that uses both inputs non-trivially (and a label)."""

    def __init__(self, d):
        super().__init__()
        self.lin = torch.nn.Linear(d, d, dtype=F64)
        self.seen = []

    def forward(self, x, c_noise, class_labels=None):
        self.seen.append((x, c_noise, class_labels))
        flat = x.reshape(x.shape[0], -1)
        out = torch.tanh(self.lin(flat.to(self.lin.weight.dtype))).to(x.dtype) * (1 + c_noise[:, None])
        if class_labels is not None:
            out = out + class_labels[:, None].to(x.dtype)
        return out.reshape(x.shape)


@pytest.mark.parametrize("D", [None, 128])
def test_edm_precond_is_the_official_formula(D):
    torch.manual_seed(0)
    raw = Raw(12)
    pre = fastflow.EDMPrecond(raw, sigma_data=0.5, D=D)
    x = torch.randn(6, 3, 2, 2, dtype=F64) * 3
    sigma = torch.tensor([0.002, 0.1, 0.5, 1.0, 10.0, 80.0], dtype=F64)
    labels = torch.arange(6)
    with torch.no_grad():
        got = pre(x, sigma, class_labels=labels)
        want = edm_precond_official(raw, x, sigma, 0.5, class_labels=labels)
    err = float((got - want).abs().max())
    print(f"EDMPrecond vs the official arithmetic (float64): max abs {err:.2e}")
    assert err == 0.0
    # the formulas, written out
    sd = 0.5
    s = sigma[:, None, None, None]
    F = raw(x / (s ** 2 + sd ** 2).sqrt(), sigma.log() / 4, class_labels=labels)
    formula = sd ** 2 / (s ** 2 + sd ** 2) * x + s * sd / (s ** 2 + sd ** 2).sqrt() * F
    assert torch.allclose(got, formula, rtol=1e-14, atol=1e-14)
    # the official layout of sigma, a 0-d tensor and a float
    assert torch.equal(pre(x, sigma.reshape(6, 1, 1, 1), class_labels=labels), got)
    one = pre(x, 0.5, class_labels=labels)
    assert torch.equal(pre(x, torch.tensor(0.5, dtype=F64), class_labels=labels), one)
    c_skip, c_out, c_in, c_noise = pre.coefficients(torch.tensor([0.5], dtype=F64))
    assert torch.allclose(torch.cat([c_skip, c_out, c_in]), torch.tensor([0.5, 0.5 ** 0.5 / 2, 2 / 2 ** 0.5],
                                                                         dtype=F64))
    assert float(c_noise) == math.log(0.5) / 4
    # the network's inputs: c_in x in x's dtype, c_noise (B,)
    xin, cn, _ = raw.seen[0]
    assert xin.shape == x.shape and cn.shape == (6,) and torch.equal(cn, sigma.log() / 4)
    assert list(pre.parameters()) == list(raw.parameters())
    assert pre.D == D and torch.equal(pre.loss_weight(sigma), fastflow.edm_loss_weight(sigma, 0.5))


def test_edm_precond_float32_and_half():
    torch.manual_seed(1)
    raw = Raw(5).float()
    pre = fastflow.EDMPrecond(raw, sigma_data=1.3)
    x = torch.randn(4, 5)
    sigma = torch.tensor([0.01, 0.3, 2.0, 50.0])
    got = pre(x, sigma)
    want = edm_precond_official(raw, x, sigma, 1.3)
    assert got.dtype == torch.float32 and torch.equal(got, want.reshape(4, 5))
    half = pre(x.half(), sigma)
    assert half.dtype == torch.float16 and torch.allclose(half.float(), got, rtol=1e-2, atol=1e-2)


def test_edm_precond_bad_input():
    raw = Raw(3)
    with pytest.raises(TypeError, match="net must be callable"):
        fastflow.EDMPrecond(3)
    with pytest.raises(ValueError, match="sigma_data must be finite and > 0"):
        fastflow.EDMPrecond(raw, sigma_data=0.0)
    with pytest.raises(ValueError, match="D must be finite and >= 1"):
        fastflow.EDMPrecond(raw, D=0.5)
    pre = fastflow.EDMPrecond(raw)
    x = torch.randn(2, 3, dtype=F64)
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        pre(x, torch.tensor([1.0, 0.0], dtype=F64))
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
        pre(x, -1.0)
    with pytest.raises(ValueError, match="sigma must be a float or a tensor of shape"):
        pre(x, torch.ones(2, 2, dtype=F64))
    with pytest.raises(ValueError, match="net must return a tensor shaped like x"):
        fastflow.EDMPrecond(lambda x, c: x[:, :2])(x, 1.0)


def test_demo_denoiser_is_the_library_precond():
    from fastflow.apps.demo import EDMDenoiser
    torch.manual_seed(2)
    m = EDMDenoiser(6, 16, 0.4)
    assert isinstance(m, fastflow.EDMPrecond) and m.sigma_data == 0.4
    for p in m.net.out.parameters():
        torch.nn.init.normal_(p)
    x, sigma = torch.randn(5, 6), torch.rand(5) + 0.05
    sd, s = 0.4, sigma[:, None]  # the demo's former forward, written out
    old = sd * sd / (s * s + sd * sd) * x + s * sd / (s * s + sd * sd).sqrt() * m.net(
        x / (s * s + sd * sd).sqrt(), s[:, 0].log() / 4)
    assert torch.allclose(m(x, sigma), old, rtol=1e-6, atol=1e-6)
    assert set(m.state_dict()) == {f"net.{k}" for k in m.net.state_dict()}


# ---------------------------------------------------------------------------------------------- host reads

def test_one_read_per_call_with_checks_and_none_without(monkeypatch):
    monkeypatch.setattr(V, "reads_are_free", lambda device: False)
    x0 = torch.rand(6, 5, generator=gen(0))
    sigma = torch.rand(6, generator=gen(1)) + 0.2
    ref = torch.rand(20, 5, generator=gen(2))
    pre = fastflow.EDMPrecond(lambda x, c: x * c[:, None], D=16)
    calls = {
        "perturb": lambda: pfgmpp.perturb(x0, sigma, 16, generator=gen(3)),
        "perturb float": lambda: pfgmpp.perturb(x0, 0.5, 16),
        "prior": lambda: pfgmpp.prior(6, 5, 80.0, 16, generator=gen(4)),
        "prior tensor": lambda: pfgmpp.prior(6, 5, sigma, 16),
        "target": lambda: pfgmpp.target(x0, sigma, ref, 16),
        "sigmas": lambda: pfgmpp.sigmas(6, generator=gen(5)),
        "to_radius": lambda: pfgmpp.to_radius(sigma, 16),
        "to_sigma": lambda: pfgmpp.to_sigma(sigma, 16),
        "EDMPrecond": lambda: pre(x0, sigma),
        "EDMPrecond float": lambda: pre(x0, 0.3),
    }
    for name, call in calls.items():
        on = reads(call)
        assert len(on) <= 1, f"{name}, checks on: {len(on)} host reads {on}"
        with fastflow.set_validate_args(False):
            off = reads(call)
        assert not off, f"{name}, checks off: {len(off)} host reads {off}"
