"""fastflow.reflow.couple (issue 14 §2): the coupling of a velocity model, against a closed-form flow, batching,
model_kwargs, and the straightening it buys on the exact rectified-flow field."""
import pytest
import torch

import fastflow

F64 = torch.float64


def test_couple_is_the_flow_map_of_the_model():
    # rectified flow of Gaussian data N(0, s^2 I): the exact flow maps x1 to s x1
    s = 0.5

    def v(x, t):
        a = 1.0 - t
        return x * ((1.0 - a * s * s / (a * a * s * s + t * t)) / t)[:, None]

    x1 = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    x0, x1b = fastflow.reflow.couple(v, x1, rtol=1e-9, atol=1e-9, batch_size=16, t_end=1e-6)
    assert x1b is x1 and x0.shape == x1.shape
    torch.testing.assert_close(x0, s * x1, rtol=1e-6, atol=1e-6)


def test_model_kwargs_follow_the_batches():
    x1 = torch.randn(30, 2, dtype=F64)
    rate = torch.linspace(0.5, 1.5, 30, dtype=F64)
    x0, _ = fastflow.reflow.couple(lambda x, t, rate: rate[:, None] * x, x1, batch_size=7, rtol=1e-10, atol=1e-12,
                                   model_kwargs={"rate": rate})
    torch.testing.assert_close(x0, x1 * torch.exp(-rate)[:, None], rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="first dimension"):
        fastflow.reflow.couple(lambda x, t, rate: x, x1, model_kwargs={"rate": rate[:3]})


def test_reflow_straightens_the_exact_field():
    # the exact rectified-flow field of a reference set, then its reflow coupling: the straight interpolation
    # between the pairs is what a second round learns; its trajectories are straight by construction, while the
    # first round's are curved
    ref = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=F64) * 2
    oracle = fastflow.Oracle(fastflow.RectifiedFlow(), ref)
    x1 = torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    states = []
    res = fastflow.flow_sample(oracle, x1, t_end=1e-3, method="rk4", steps=100, return_intermediates=True)
    states = res.intermediates
    curved = fastflow.straightness(states)
    x0, _ = fastflow.reflow.couple(oracle, x1, t_end=1e-3, method="rk4", steps=100)
    torch.testing.assert_close(x0, res.x)
    t = torch.linspace(1, 1e-3, 101, dtype=F64)
    line = torch.stack([(1 - tt) * x0 + tt * x1 for tt in t])
    assert float(fastflow.straightness(line).min()) == pytest.approx(1.0, abs=1e-12)
    assert float(curved.mean()) < 0.999  # the first round's paths bend


def test_path_gives_dpmpp_2m_its_schedule_and_bounds_t_start():
    # a model trained on a cosine path: dpmpp_2m's data prediction needs that path's (alpha, sigma)
    path = fastflow.AffinePath(fastflow.schedulers.Cosine())
    ref = torch.randn(6, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    oracle = fastflow.Oracle(path, ref)
    x1 = torch.randn(20, 3, generator=torch.Generator().manual_seed(4), dtype=F64)
    x0, _ = fastflow.reflow.couple(oracle, x1, path=path, method="dpmpp_2m", steps=20, t_end=1e-3, batch_size=8)
    want = fastflow.flow_sample(oracle, x1, method="dpmpp_2m", steps=20, t_end=1e-3, scheduler=path.scheduler).x
    torch.testing.assert_close(x0, want, rtol=1e-12, atol=1e-12)
    other = fastflow.reflow.couple(oracle, x1, method="dpmpp_2m", steps=20, t_end=1e-3)[0]  # CondOT's prediction
    assert float((other - want).abs().max()) > 1e-3
    with pytest.raises(TypeError, match="path must be a fastflow.AffinePath"):
        fastflow.reflow.couple(oracle, x1, path=fastflow.Gaussian())
    with pytest.raises(ValueError, match="t_start must be <= 1"):
        fastflow.reflow.couple(oracle, x1, path=path, t_start=1.5)
