"""The public ops inside ``torch.compile(fullgraph=True)``: the targets, the field and the draws trace into one
graph (custom ops with fake implementations, no data-dependent Python) and give what eager mode gives.

What traces: while compiling, the checks on tensor values (NaN, t > 0) are skipped, the field always centres its
GEMMs, and the draws take the pure-torch path (the fused op's Philox key needs a host read). The solvers and
samplers (odeint, edm_sample, pfgm.sample) are host-driven loops and are not compiled; the network inside them
can be.
"""
import pytest
import torch
from _util import DEVICE

import fastflow

B, R, D_ = 6, 40, 10


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, D_, generator=g).to(DEVICE)
    ref = torch.randn(R, D_, generator=g).to(DEVICE)
    t = (torch.rand(B, generator=g) + 0.3).to(DEVICE)
    return x, t, ref


TARGETS = {
    "pfgm.target": lambda x, t, ref: fastflow.pfgm.target(x, t, ref),
    "pfgmpp_target": lambda x, t, ref: fastflow.pfgmpp_target(x, t, ref, D=128),
    "stf_target": lambda x, t, ref: fastflow.stf_target(x, t, ref),
    "Gaussian.posterior_mean": lambda x, t, ref: fastflow.Gaussian().posterior_mean(x, t, ref),
    "Poisson.velocity": lambda x, t, ref: fastflow.Poisson(D=1).velocity(x, t, ref),
    "RadialCDF.velocity": lambda x, t, ref: fastflow.RadialCDF("tanh").velocity(x, t, ref),
    "RectifiedFlow.velocity": lambda x, t, ref: fastflow.RectifiedFlow().velocity(x, t.clamp(max=1.0), ref),
}


@pytest.mark.parametrize("name", list(TARGETS))
def test_targets_fullgraph(name, data):
    torch._dynamo.reset()
    fn = TARGETS[name]
    want = fn(*data)
    got = torch.compile(fn, fullgraph=True, backend="aot_eager")(*data)
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-6)


def test_target_with_inductor(data):
    """The training target through the default backend (inductor), the way a compiled training step runs it."""
    torch._dynamo.reset()
    fn = TARGETS["pfgm.target"]
    torch.testing.assert_close(torch.compile(fn, fullgraph=True)(*data), fn(*data), rtol=2e-5, atol=2e-6)


def test_posterior_mean_stats_fullgraph(data):
    torch._dynamo.reset()

    def fn(x, t, ref):
        xbar, st = fastflow.Poisson(D=4).posterior_mean(x, t, ref, return_stats=True)
        return xbar, st.log_norm, st.ess

    for got, want in zip(torch.compile(fn, fullgraph=True, backend="aot_eager")(*data), fn(*data)):
        torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("family", [fastflow.Gaussian(), fastflow.Poisson(D=1), fastflow.Poisson(D=128),
                                    fastflow.RadialCDF("exp")], ids=repr)
def test_draws_fullgraph(family):
    """perturb and prior trace (the fused op where built, else the pure-torch pieces) and keep their law: the
    squared radius of prior / T over d has the family's mean (Gaussian: 1; Poisson(D): E 1/||h||^2 = 1/(D-2) for
    D > 2, h ~ N(0, I_D); checked only where it is finite)."""
    torch._dynamo.reset()
    n, d = 20000, 8
    prior = torch.compile(lambda: family.prior(n, (d,), T=2.0, device=DEVICE), fullgraph=True, backend="aot_eager")
    x = prior()
    assert x.shape == (n, d) and torch.isfinite(x).all()
    x0 = torch.zeros(n, d, device=DEVICE)
    pert = torch.compile(lambda a: family.perturb(a, 0.5), fullgraph=True, backend="aot_eager")(x0)
    assert pert.shape == (n, d) and torch.isfinite(pert).all()
    ms = float((x.double() / 2.0).pow(2).sum(1).mean() / d)
    if isinstance(family, fastflow.Gaussian):
        assert ms == pytest.approx(1.0, rel=0.03)
    elif isinstance(family, fastflow.Poisson) and family.D > 2:
        assert ms == pytest.approx(1 / (family.D - 2), rel=0.03)


@pytest.mark.skipif(not fastflow.draws.can_draw_fused(torch.device(DEVICE), torch.float32, 0),
                    reason="needs the fused draw (fastflow._C)")
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_fused_draws_trace_with_the_eager_numbers(backend):
    """The fused op's Philox key is a device tensor (no host read), so the traced draw is the eager one, bitwise."""
    torch._dynamo.reset()
    fam = fastflow.Poisson(D=1)
    x0 = torch.randn(6, 5, device=DEVICE)
    for fn, args in ((lambda: fam.prior(6, (5,), T=2.0, device=DEVICE), ()), (lambda a: fam.perturb(a, 0.5), (x0,))):
        torch.manual_seed(3)
        want = fn(*args)
        torch.manual_seed(3)
        with torch._inductor.config.patch(fallback_random=True):  # inductor's own RNG would draw another key
            got = torch.compile(fn, fullgraph=True, backend=backend)(*args)
        assert torch.equal(got, want)


def test_pfgm_draws_fullgraph():
    torch._dynamo.reset()
    x0 = torch.zeros(64, 12, device=DEVICE)
    x, z = torch.compile(lambda a: fastflow.pfgm.perturb(a, M=50), fullgraph=True, backend="aot_eager")(x0)
    assert x.shape == (64, 12) and z.shape == (64,) and bool((z > 0).all())
    p = torch.compile(lambda: fastflow.pfgm.prior(64, (12,), z_max=40.0, device=DEVICE), fullgraph=True,
                      backend="aot_eager")()
    assert p.shape == (64, 12) and torch.isfinite(p).all()


def test_eager_checks_still_raise(data):
    """Skipping the value checks is for tracing only: eager calls still reject NaN and t <= 0."""
    x, t, ref = data
    with pytest.raises(ValueError, match="NaN"):
        fastflow.stf_target(x.clone().fill_(float("nan")), t, ref)
    with pytest.raises(ValueError, match="> 0"):
        fastflow.stf_target(x, -t, ref)
