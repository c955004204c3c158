"""PFGM's official recipes (issue 13 §5): the fixed-grid samplers of the official code (forward Euler and improved
Euler on its log-spaced z grid, with its evaluation counts and its z_exp rule), tested against a port of the
official sampling.py / methods.py (fastflow.testing) on the exact field; the official configs; the inverse scaler.
"""
import dataclasses
import math

import pytest
import torch

import fastflow
from fastflow import pfgm
from fastflow.testing import pfgm_ode_sampler_official

F64 = torch.float64


def dataset(R=24, shape=(3, 4, 4), seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(R, *shape, generator=g, dtype=F64) * 2 - 1).to(dtype)


def exact(ref):
    return lambda x, z: pfgm.target(x, z, ref)


def as_tuple(net):
    def f(x, z):
        out = net(x, z)
        return out[:, :-1].reshape(x.shape), out[:, -1]
    return f


def prior(n, shape, z_max, seed=1, dtype=F64):
    return pfgm.prior(n, shape, z_max=z_max, dtype=dtype, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("solver", ["forward_euler", "improved_euler"])
@pytest.mark.parametrize("N", [1, 2, 40])
@pytest.mark.parametrize("z_exp,gamma", [(5.0, 5.0), (1.0, 5.0), (5.0, 0.0), (1e-9, 5.0)])
def test_fixed_grid_matches_the_official_sampler(solver, N, z_exp, gamma):
    ref = dataset()
    net = exact(ref)
    x = prior(10, (3, 4, 4), 40.0)
    want, nfe = pfgm_ode_sampler_official(as_tuple(net), x, z_max=40.0, eps=1e-3, N=N, ode_solver=solver,
                                          z_exp=z_exp, gamma=gamma, inverse_scaler=lambda v: (v + 1) / 2)
    method = "euler" if solver == "forward_euler" else "improved_euler"
    got = pfgm.sample(net, x, z_max=40.0, z_min=1e-3, method=method, steps=N, z_exp=z_exp, gamma=gamma,
                      denominator="official", inverse_scaler=True)
    err = float((got.x - want).abs().max())
    rel = float((got.x - want).abs().max() / want.abs().max())
    print(f"{solver} N={N} z_exp={z_exp} gamma={gamma}: max abs {err:.2e}, max rel {rel:.2e}, nfe {nfe}")
    # float64 rounding: 1e-16 relative at N = 40; N <= 2 takes steps from z = 40 to z <= 0.2 in one go and lands
    # far out (|x| ~ 1e4), which amplifies an ulp of z (the official z is the batch mean of t, exp'd) to ~1e-12
    assert rel < (1e-11 if N <= 2 else 1e-14)
    assert nfe == (2 * N - 1 if solver == "improved_euler" else N)
    assert torch.equal(got.nfe, torch.full((10,), nfe, dtype=torch.long))
    assert bool(got.success.all()) and torch.allclose(got.t, torch.full((10,), math.log(1e-3), dtype=F64))
    if solver == "forward_euler":  # the official name is accepted too
        alias = pfgm.sample(net, x, z_max=40.0, method="forward_euler", steps=N, z_exp=z_exp, gamma=gamma,
                            denominator="official", inverse_scaler=True)
        assert torch.equal(alias.x, got.x)


def test_per_sample_z_max_runs_each_sample_on_its_own_official_grid():
    ref = dataset()
    net = exact(ref)
    z_max = torch.tensor([40.0, 10.0, 3.0], dtype=F64)
    x = prior(3, (3, 4, 4), 40.0)
    got = pfgm.sample(net, x, z_max=z_max, method="improved_euler", steps=20, z_exp=1.0, denominator="official")
    for i in range(3):
        want, _ = pfgm_ode_sampler_official(as_tuple(net), x[i:i + 1], z_max=float(z_max[i]), N=20,
                                            ode_solver="improved_euler", z_exp=1.0, gamma=5.0)
        assert float((got.x[i] - want[0]).abs().max()) < 1e-12


def test_the_official_denominator_matters_and_the_clamp_is_the_default():
    """v_z of the exact field is -sqrt(d) z / (||E|| + gamma): ~ -1e-3 at z = 1e-3, where the official +1e-5 is a
    1% change of the step; fastflow's default clamps v_z at -1e-5 instead and lands closer to the exact flow."""
    ref = dataset()
    net = exact(ref)
    x = prior(8, (3, 4, 4), 40.0)
    official = pfgm.sample(net, x, z_max=40.0, method="euler", steps=30, denominator="official")
    clamp = pfgm.sample(net, x, z_max=40.0, method="euler", steps=30)
    assert float((official.x - clamp.x).abs().max()) > 1e-6


def test_euler_keeps_its_meaning_and_heun_is_odeints():
    """"euler" was odeint's Euler in log z with ``steps`` equal steps: the official forward Euler is the same scheme,
    so the numbers agree to rounding; "heun" stays odeint's (Heun on every interval, 2N evaluations) while
    "improved_euler" ends with an Euler step (2N - 1)."""
    ref = dataset()
    net = exact(ref)
    x = prior(6, (3, 4, 4), 40.0)
    got = pfgm.sample(net, x, z_max=40.0, method="euler", steps=25)

    def f(x, t):
        z = torch.exp(t)
        out = net(x, z)
        return (out[:, :-1].reshape(x.shape[0], -1) * (z / out[:, -1].clamp(max=-1e-5))[:, None]).reshape(x.shape)
    want = fastflow.odeint(f, x, math.log(40.0), math.log(1e-3), method="euler", steps=25)
    assert float((got.x - want.x).abs().max()) < 1e-11
    heun = pfgm.sample(net, x, z_max=40.0, method="heun", steps=25)
    imp = pfgm.sample(net, x, z_max=40.0, method="improved_euler", steps=25)
    assert int(heun.nfe[0]) == 50 and int(imp.nfe[0]) == 49
    assert float((heun.x - imp.x).abs().max()) > 0


@pytest.mark.parametrize("method,steps", [("dopri5", None), ("improved_euler", 20)])
def test_gamma_zero_skips_the_substitution(method, steps):
    """The official rule substitutes v_z only when gamma > 0: z_exp = 1e9 (every height) with gamma = 0 is no
    substitution at all (fastflow used to apply a degenerate one, v_z = -sqrt(d))."""
    ref = dataset()
    net = exact(ref)
    x = prior(6, (3, 4, 4), 40.0)
    off = pfgm.sample(net, x, z_max=40.0, method=method, steps=steps)
    zero = pfgm.sample(net, x, z_max=40.0, method=method, steps=steps, z_exp=1e9, gamma=0.0)
    on = pfgm.sample(net, x, z_max=40.0, method=method, steps=steps, z_exp=1e9, gamma=5.0)
    assert torch.equal(off.x, zero.x)
    assert not torch.equal(off.x, on.x)


def test_model_kwargs_pass_through_unsliced_on_the_fixed_grid():
    ref = dataset()
    net = exact(ref)
    x = prior(6, (3, 4, 4), 40.0)
    labels = torch.arange(6)
    seen = []

    def net_fn(x, z, labels, scale):
        seen.append(labels)
        assert x.shape[0] == 6 and scale == 2.0
        return net(x, z)
    res = pfgm.sample(net_fn, x, z_max=40.0, method="improved_euler", steps=5,
                      model_kwargs={"labels": labels, "scale": 2.0})
    assert len(seen) == 9 and all(s is labels for s in seen)
    assert torch.equal(res.x, pfgm.sample(net, x, z_max=40.0, method="improved_euler", steps=5).x)
    with pytest.raises(ValueError, match="model_kwargs\\['labels'\\] has first dimension"):
        pfgm.sample(net_fn, x, z_max=40.0, method="euler", steps=5, model_kwargs={"labels": labels[:3], "scale": 2.0})


def test_callback_and_float32():
    ref = dataset(dtype=torch.float32)
    net = exact(ref)
    x = prior(4, (3, 4, 4), 40.0, dtype=torch.float32)
    infos = []
    res = pfgm.sample(net, x, z_max=40.0, method="improved_euler", steps=6, callback=infos.append)
    assert res.x.dtype == torch.float32 and bool(torch.isfinite(res.x).all())
    assert [i.step for i in infos] == list(range(1, 7)) and [int(i.nfe[0]) for i in infos] == [2, 4, 6, 8, 10, 11]
    assert torch.allclose(infos[-1].t, torch.full((4,), math.log(1e-3), dtype=F64))
    assert torch.equal(infos[-1].x, res.x) and infos[0].n_active == 4
    want, _ = pfgm_ode_sampler_official(as_tuple(exact(ref.double())), x.double(), z_max=40.0, N=6,
                                        ode_solver="improved_euler", z_exp=1e-9)
    got = pfgm.sample(net, x, z_max=40.0, method="improved_euler", steps=6, denominator="official")
    assert float((got.x.double() - want).abs().max()) < 1e-4


def test_fixed_grid_lands_on_the_data():
    """The CelebA-style recipe (improved Euler, N = 100, z_exp) on the exact field ends next to a data point."""
    ref = dataset(R=6, shape=(3,))
    x = prior(50, (3,), 40.0, seed=3)
    res = pfgm.sample(exact(ref), x, z_max=40.0, z_min=1e-3, method="improved_euler", steps=100, z_exp=1.0)
    _, dist = fastflow.Oracle(fastflow.Poisson(1), ref).nearest(res.x)
    print(f"improved_euler N=100: median distance to the data {float(dist.median()):.2e}")
    assert float(dist.median()) < 0.05


def test_inverse_scaler():
    ref = dataset()
    net = exact(ref)
    x = prior(4, (3, 4, 4), 40.0)
    plain = pfgm.sample(net, x, z_max=40.0)
    assert torch.equal(pfgm.sample(net, x, z_max=40.0, inverse_scaler=True).x, (plain.x + 1) / 2)
    assert torch.equal(pfgm.sample(net, x, z_max=40.0, inverse_scaler=lambda v: 2 * v).x, 2 * plain.x)
    with pytest.raises(TypeError, match="inverse_scaler"):
        pfgm.sample(net, x, z_max=40.0, inverse_scaler="yes")


def test_bad_input_is_named():
    ref = dataset()
    net = exact(ref)
    x = prior(4, (3, 4, 4), 40.0)
    with pytest.raises(ValueError, match="unknown method 'rk45'"):
        pfgm.sample(net, x, z_max=40.0, method="rk45")
    with pytest.raises(ValueError, match="steps \\(the official sampling.N\\) is required"):
        pfgm.sample(net, x, z_max=40.0, method="improved_euler")
    with pytest.raises(ValueError, match="steps \\(the official sampling.N\\) must be >= 1"):
        pfgm.sample(net, x, z_max=40.0, method="euler", steps=0)
    with pytest.raises(TypeError, match="steps"):
        pfgm.sample(net, x, z_max=40.0, method="euler", steps=2.0)
    with pytest.raises(ValueError, match="steps"):
        pfgm.sample(net, x, z_max=40.0, method="heun", steps=0)
    with pytest.raises(ValueError, match="unknown denominator"):
        pfgm.sample(net, x, z_max=40.0, denominator="scipy")
    with pytest.raises(ValueError, match="z_max must be > z_min"):
        pfgm.sample(net, x, z_max=1e-4, method="euler", steps=3)
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        pfgm.sample(lambda x, z: torch.full((4, 49), float("nan"), dtype=F64), x, z_max=40.0, method="euler",
                    steps=3)


# ---------------------------------------------------------------------------------------------- the official configs

def test_configs_hold_the_official_values():
    c, a, b = pfgm.configs["cifar10"], pfgm.configs["celeba64"], pfgm.configs["lsun_bedroom256"]
    assert (c.M, c.z_max, c.upper_norm, c.z_exp, c.gamma, c.z_min, c.N, c.sampler) == \
        (291, 40.0, 3000.0, 5.0, 5.0, 1e-3, 100, "rk45")
    assert (a.M, a.z_max, a.upper_norm, a.z_exp, a.gamma, a.z_min, a.N, a.sampler) == \
        (291, 60.0, 6000.0, 1.0, 5.0, 1e-3, 100, "rk45")
    assert (b.M, b.z_max, b.upper_norm, b.z_exp, b.gamma, b.z_min, b.N, b.sampler) == \
        (356, 100.0, 30000.0, 0.1, 5.0, 1e-3, 100, "rk45")
    assert [cfg.shape for cfg in (c, a, b)] == [(3, 32, 32), (3, 64, 64), (3, 256, 256)]
    assert all(cfg.centered and cfg.tau == 0.03 and cfg.sigma_end == 0.01 and cfg.restrict_M for cfg in (c, a, b))
    assert (c.batch_size, c.small_batch_size) == (4096, 128)
    # the official hyper-parameter script agrees with CIFAR-10's M at the average norm r = 32
    assert pfgm.hyperparameters(torch.full((1, 3072), 32 / math.sqrt(3072)))["M"] == c.M
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.M = 1
    assert set(pfgm.configs) == {"cifar10", "celeba64", "lsun_bedroom256"} and len(pfgm.configs) == 3


def test_unknown_config_is_named():
    with pytest.raises(ValueError, match="no PFGM config named 'cifar100'.*'celeba64', 'cifar10'"):
        pfgm.configs["cifar100"]
    with pytest.raises(KeyError):
        pfgm.configs["cifar100"]
    assert "cifar100" not in pfgm.configs and pfgm.configs.get("cifar100") is None
    # the short name of the contract is the bedroom preset, not a fourth one
    assert pfgm.configs["lsun256"] is pfgm.configs["lsun_bedroom256"] and "lsun256" in pfgm.configs
    assert sorted(pfgm.configs) == ["celeba64", "cifar10", "lsun_bedroom256"]
    with pytest.raises(ValueError, match="unknown method 'rk45'"):
        pfgm.configs["cifar10"].sample_kwargs("rk45")


def test_config_kwargs_drive_the_recipe():
    cfg = pfgm.configs["celeba64"]
    assert cfg.perturb_kwargs() == {"M": 291, "tau": 0.03, "sigma_end": 0.01, "restrict_M": True}
    assert cfg.prior_kwargs() == {"z_max": 60.0, "upper_norm": 6000.0}
    kw = cfg.sample_kwargs()
    assert kw["method"] == "dopri5" and kw["rtol"] == kw["atol"] == 1e-4 and "steps" not in kw
    kw = cfg.sample_kwargs("improved_euler")
    assert kw["method"] == "improved_euler" and kw["steps"] == 100 and kw["z_exp"] == 1.0
    assert kw["inverse_scaler"] is True
    ref = dataset(R=6, shape=(3,))
    x = pfgm.prior(5, (3,), **cfg.prior_kwargs(), dtype=F64, generator=torch.Generator().manual_seed(0))
    x0, z = pfgm.perturb(ref, **cfg.perturb_kwargs(), generator=torch.Generator().manual_seed(0))
    assert x0.shape == ref.shape and bool((z > 0).all())
    res = pfgm.sample(exact(ref), x, **{**kw, "steps": 20})
    assert bool(res.success.all()) and int(res.nfe[0]) == 39 and float(res.x.min()) > -0.5
