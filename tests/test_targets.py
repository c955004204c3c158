"""PFGM, PFGM++ and STF targets against their references (the official PFGM formula is the one of record)."""
import math

import pytest
import torch
from _util import dev, make_problem, rel_err_rows

import fastflow
from fastflow.testing import pfgm_target_official

FAST = ["torch", "triton"]


def _pfgm_batch(B, R, d, shape=None):
    """A PFGM-style batch: ref ~ U(-1, 1), its first B points perturbed at radii spread over PFGM's z range."""
    ref = torch.rand(R, d, dtype=torch.float64) * 2 - 1
    z = torch.logspace(-2, math.log10(40.0), B, dtype=torch.float64)
    u = torch.randn(B, d, dtype=torch.float64)
    u = u / u.norm(dim=1, keepdim=True)
    r = z * torch.rand(B, dtype=torch.float64) * d ** 0.5
    x = ref[:B] + r[:, None] * u
    if shape is not None:
        x, ref = x.reshape(B, *shape), ref.reshape(R, *shape)
    return x, z, ref


@pytest.mark.parametrize("backend", ["reference"] + FAST)
@pytest.mark.parametrize("d,shape", [(3, None), (63, None), (3072, (3, 32, 32))])
def test_pfgm_target_matches_official_formula(d, shape, backend):
    """fastflow.pfgm.target == the official code's min-normalised power weights, gamma and sqrt(d) (float64)."""
    x, z, ref = _pfgm_batch(B=7, R=23, d=d, shape=shape)
    want = pfgm_target_official(x, z, ref)
    assert want.shape == (7, d + 1)
    if backend == "reference":
        got = fastflow.pfgm.target(x, z, ref, backend=backend)          # float64 all the way, on the CPU
        tol = 1e-6   # the official +1e-7 guards are the only difference
    else:
        got = fastflow.pfgm.target(*dev(x.float(), z.float(), ref.float()), backend=backend)
        tol = 1e-4
    err = rel_err_rows(got, want)
    print(f"pfgm.target d={d} {backend}: {err:.2e}")
    assert got.shape == (7, d + 1)
    assert err <= tol
    # the last column is the z part: -z scaled, always negative
    assert (got[:, -1] < 0).all()


def test_pfgm_target_gamma_and_scalar_z():
    x, _, ref = _pfgm_batch(B=4, R=9, d=16)
    got = fastflow.pfgm.target(x, 0.5, ref, gamma=0.0)
    want = pfgm_target_official(x, torch.full((4,), 0.5, dtype=torch.float64), ref, gamma=0.0)
    assert rel_err_rows(got, want) <= 1e-6
    # gamma = 0: every target has norm exactly sqrt(d)
    torch.testing.assert_close(got.norm(dim=1), torch.full((4,), 4.0, dtype=torch.float64))


@pytest.mark.parametrize("backend", FAST)
def test_pfgmpp_target(backend):
    for D in [1, 128, 2048]:
        fam = fastflow.Poisson(D=D)
        x, _, ref = make_problem(fam, B=5, R=17, d=63, t_rel=0.1)
        sigma = torch.tensor([0.02, 0.1, 0.5, 2.0, 20.0])
        want = fam.posterior_mean(x.double(), sigma.double() * math.sqrt(D), ref.double(), backend="reference")
        got = fastflow.pfgmpp_target(*dev(x, sigma, ref), D=D, backend=backend)
        err = rel_err_rows(got, want)
        print(f"pfgmpp D={D} {backend}: {err:.2e}")
        assert err <= 1e-4
        # scalar sigma
        got1 = fastflow.pfgmpp_target(*dev(x, 0.5, ref), D=D, backend=backend)
        want1 = fam.posterior_mean(x.double(), 0.5 * math.sqrt(D), ref.double(), backend="reference")
        assert rel_err_rows(got1, want1) <= 1e-4


@pytest.mark.parametrize("backend", FAST)
def test_stf_target(backend):
    fam = fastflow.Gaussian()
    x, _, ref = make_problem(fam, B=6, R=19, d=63, t_rel=0.1)
    sigma = torch.tensor([0.01, 0.1, 0.5, 1.0, 5.0, 80.0])
    want = fam.posterior_mean(x.double(), sigma.double(), ref.double(), backend="reference")
    got = fastflow.stf_target(*dev(x, sigma, ref), backend=backend)
    err = rel_err_rows(got, want)
    print(f"stf {backend}: {err:.2e}")
    assert err <= 1e-4


def test_pfgmpp_tends_to_stf_as_D_grows():
    """docs/math.md: with r = sigma sqrt(D) and D -> inf, PFGM++ weights tend to the Gaussian ones."""
    x, _, ref = make_problem(fastflow.Gaussian(), B=4, R=15, d=8, t_rel=0.3, dtype=torch.float64)
    stf = fastflow.stf_target(x, 0.7, ref, backend="reference")
    errs = [rel_err_rows(fastflow.pfgmpp_target(x, 0.7, ref, D=D, backend="reference"), stf) for D in [10, 1e3, 1e6]]
    print("PFGM++ -> STF:", errs)
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-4
