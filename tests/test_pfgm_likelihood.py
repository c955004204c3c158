"""fastflow.pfgm.likelihood against a faithful port of the official get_likelihood_fn_pfgm (Poisson_flow be87f70:
scipy RK45 in z, Hutchinson with the same probes, the hyperplane prior and its theta term), and the prior's
normalisers by quadrature (issue 13 §5)."""
import math

import pytest
import torch

import fastflow
from fastflow.testing import pfgm_likelihood_official

F64 = torch.float64


def problem(d=4, B=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(20, d, generator=g, dtype=F64) * 2 - 1
    x = ref[:B] + 0.05 * torch.randn(B, d, generator=g, dtype=F64)
    return ref, x


@pytest.mark.parametrize("gamma", [5.0, 0.0])
def test_matches_the_official_likelihood_on_the_same_probes(gamma):
    ref, x = problem()

    def net(y, z):  # the exact normalised Poisson field of the reference set
        return fastflow.pfgm.target(y.double(), z.double(), ref, gamma=5.0).to(y.dtype)

    seed = 3
    probes = (2 * torch.randint(0, 2, (5, 1, 4), generator=torch.Generator().manual_seed(seed)) - 1)
    res = fastflow.pfgm.likelihood(net, x, z_max=40.0, gamma=gamma, rtol=1e-7, atol=1e-7,
                                   generator=torch.Generator().manual_seed(seed))
    want, _ = pfgm_likelihood_official(net, x.float(), probes[:, 0].float(), z_max=40.0, gamma=gamma, rtol=1e-7,
                                       atol=1e-7)
    assert bool(res.success.all())
    # the official state is float32 (its .type(torch.float32)): agreement to its rounding
    torch.testing.assert_close(res.bpd(offset=7.0), want.double(), rtol=0, atol=2e-4)


def test_prior_normalisers():
    # exact: the hyperplane law at z_max integrates to 1 (N = 1, 2); official: theta = -log |S^(N-1)| for even N
    z = 3.0
    for N in (1, 2):
        m = 4000
        r = ((torch.arange(m, dtype=F64) + 0.5) / m * (math.pi / 2)).tan() * z  # r = z tan(u)
        dr = z / torch.cos((torch.arange(m, dtype=F64) + 0.5) / m * (math.pi / 2)) ** 2 * (math.pi / 2 / m)
        theta = math.lgamma(0.5 * (N + 1)) - 0.5 * (N + 1) * math.log(math.pi) - math.log(2.0)
        dens = torch.exp(-0.5 * (N + 1) * torch.log(r * r + z * z) + math.log(2 * z) + theta)
        area = 2.0 if N == 1 else 2 * math.pi * r  # |S^(N-1)| r^(N-1)
        assert float((dens * area * dr).sum()) == pytest.approx(1.0, abs=1e-6)
    # the official and the exact normalisers at N = 3072 differ by ~0.0016 bits/dim
    ref, x = problem(d=6)
    net = lambda y, z: fastflow.pfgm.target(y, z, ref)  # noqa: E731
    kw = dict(z_max=20.0, rtol=1e-6, atol=1e-6, divergence="exact")
    a = fastflow.pfgm.likelihood(net, x, **kw).logp
    b = fastflow.pfgm.likelihood(net, x, normaliser="exact", **kw).logp
    N = 6
    official = -(math.log(2.0) + 3 * math.log(math.pi) - math.lgamma(3))  # -log |S^5|, N/2 = 3
    exact = math.lgamma(3.5) - 3.5 * math.log(math.pi) - math.log(2.0)
    torch.testing.assert_close(a - b, torch.full_like(a, official - exact), rtol=0, atol=1e-9)
    assert N == x.shape[1]


def test_errors():
    ref, x = problem()
    net = lambda y, z: fastflow.pfgm.target(y, z, ref)  # noqa: E731
    with pytest.raises(ValueError, match="z_min"):
        fastflow.pfgm.likelihood(net, x, z_max=1e-3, z_min=1e-2)
    with pytest.raises(ValueError, match="normaliser"):
        fastflow.pfgm.likelihood(net, x, z_max=40.0, normaliser="fancy")
    with pytest.raises(TypeError, match="net_fn"):
        fastflow.pfgm.likelihood(3, x, z_max=40.0)
