"""Time grids and intermediate states (issue 13 §2): odeint(t_eval=), flow_sample(time_grid=, shift=,
return_intermediates=), against closed-form solutions and hand-written fixed-step loops."""
import pytest
import torch

import fastflow

F64 = torch.float64


def decay(x, t, rate):
    return -rate[:, None] * x


def test_t_eval_lands_on_every_time_to_the_tolerance():
    x0 = torch.randn(6, 3, dtype=F64)
    rate = torch.linspace(0.5, 2.0, 6, dtype=F64)
    te = torch.tensor([0.1, 0.4, 0.75], dtype=F64)
    res = fastflow.odeint(decay, x0, 0.0, 1.0, rtol=1e-10, atol=1e-12, t_eval=te, model_kwargs={"rate": rate})
    want = x0[None] * torch.exp(-rate[None, :, None] * te[:, None, None])
    assert res.x_eval.shape == (3, 6, 3)
    torch.testing.assert_close(res.x_eval, want, rtol=1e-8, atol=1e-11)
    torch.testing.assert_close(res.x, x0 * torch.exp(-rate)[:, None], rtol=1e-8, atol=1e-11)
    assert bool(res.success.all()) and bool((res.nfe > 0).all())
    # per-sample grids, backward in time, an output time equal to t1 (a zero-length last segment)
    te2 = torch.stack([torch.tensor([0.9, 0.5, 0.0]), torch.tensor([0.8, 0.3, 0.1])]).to(F64)
    res = fastflow.odeint(lambda x, t: x, x0[:2], 1.0, 0.0, rtol=1e-10, atol=1e-12, t_eval=te2)
    torch.testing.assert_close(res.x_eval, x0[None, :2] * torch.exp(te2.t() - 1.0)[:, :, None], rtol=1e-8,
                               atol=1e-11)


def test_t_eval_with_a_fixed_step_method_steps_on_the_grid():
    x0 = torch.tensor([[1.0]], dtype=F64)
    grid = [0.25, 0.5, 0.75]
    res = fastflow.odeint(lambda x, t: -x, x0, 0.0, 1.0, method="euler", steps=1, t_eval=grid)
    torch.testing.assert_close(res.x_eval[:, 0, 0], torch.tensor([0.75, 0.75**2, 0.75**3], dtype=F64))
    assert int(res.nfe) == 4 and int(res.n_accepted) == 4
    res = fastflow.odeint(lambda x, t: -x, x0, 0.0, 1.0, method="euler", steps=2, t_eval=grid)
    assert int(res.nfe) == 8 and float(res.x) == pytest.approx(0.875**8)


@pytest.mark.parametrize("bad,match", [
    ([0.5, 0.2], "strictly monotone"),
    ([0.5, 1.5], "between t0 and t1"),
    ([[0.5]], r"\(K,\) grid or a \(B, K\)"),
    ([float("nan")], "NaN"),
])
def test_t_eval_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        fastflow.odeint(lambda x, t: -x, torch.zeros(3, 2), 0.0, 1.0, t_eval=bad)


def test_flow_sample_on_a_grid_is_the_hand_written_euler_loop():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(4, 4, generator=g, dtype=F64) * 0.3
    v = lambda x, t: x @ W.t() * (1 + t[:, None])  # noqa: E731
    x_init = torch.randn(5, 4, generator=g, dtype=F64)
    for shift in (1.0, 3.0):
        grid = torch.linspace(1.0, 0.0, 11, dtype=F64)
        res = fastflow.flow_sample(v, x_init, method="euler", time_grid=grid, shift=shift, return_intermediates=True)
        s = shift * grid / (1 + (shift - 1) * grid)  # SD3's shift
        x, states = x_init.clone(), [x_init]
        for a, b in zip(s[:-1], s[1:]):
            x = x + (b - a) * v(x, torch.full((5,), float(a), dtype=F64))
            states.append(x)
        torch.testing.assert_close(res.x, x, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(res.intermediates, torch.stack(states), rtol=1e-12, atol=1e-13)
        assert bool((res.nfe == 10).all())
    # steps with a fixed-step method is the uniform grid
    a = fastflow.flow_sample(v, x_init, method="heun", steps=8)
    b = fastflow.flow_sample(v, x_init, method="heun", time_grid=torch.linspace(1, 0, 9))
    torch.testing.assert_close(a.x, b.x)


def test_flow_sample_grid_with_dopri5_and_errors():
    rate = torch.ones(3, dtype=F64)
    x_init = torch.randn(3, 2, dtype=F64)
    grid = torch.tensor([1.0, 0.6, 0.2, 0.0], dtype=F64)
    res = fastflow.flow_sample(decay, x_init, time_grid=grid, rtol=1e-10, atol=1e-12, return_intermediates=True,
                               model_kwargs={"rate": rate})
    want = x_init[None] * torch.exp(1.0 - grid)[:, None, None]  # dx/dt = -x backward from t = 1
    torch.testing.assert_close(res.intermediates, want, rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="strictly monotone"):
        fastflow.flow_sample(decay, x_init, time_grid=[1.0, 0.2, 0.5], model_kwargs={"rate": rate})
    with pytest.raises(ValueError, match="need a time grid"):
        fastflow.flow_sample(decay, x_init, shift=3.0, model_kwargs={"rate": rate})
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        fastflow.flow_sample(decay, x_init, time_grid=[2.0, 0.0], shift=3.0, model_kwargs={"rate": rate})


def _kdiffusion_dpmpp_2m(model, x, sigmas):
    """k-diffusion's sample_dpmpp_2m (k_diffusion/sampling.py), transcribed: the VE / EDM case."""
    s_in = x.new_ones([x.shape[0]])
    old = None
    for i in range(len(sigmas) - 1):
        den = model(x, sigmas[i] * s_in)
        t, t_next = -torch.log(sigmas[i]), -torch.log(sigmas[i + 1])
        h = t_next - t
        if old is None or sigmas[i + 1] == 0:
            x = (torch.exp(-t_next) / torch.exp(-t)) * x - torch.expm1(-h) * den
        else:
            r = (t - (-torch.log(sigmas[i - 1]))) / h
            x = (torch.exp(-t_next) / torch.exp(-t)) * x - torch.expm1(-h) * ((1 + 1 / (2 * r)) * den - old / (2 * r))
        old = den
    return x


@pytest.mark.parametrize("sched", [None, fastflow.schedulers.Cosine(), fastflow.schedulers.Polynomial(2.0)])
def test_flow_dpmpp_2m_is_k_diffusions_on_the_equivalent_ve_problem(sched):
    # x_t / alpha_t = x0 + (sigma_t / alpha_t) eps is the VE problem with sigma_ve = sigma / alpha; DPM-Solver++(2M)
    # is invariant under that change of variables, so flow_sample's states divided by alpha are k-diffusion's
    ref = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    path = fastflow.RectifiedFlow() if sched is None else fastflow.AffinePath(sched)
    oracle = fastflow.Oracle(path, ref)
    S = path.scheduler
    grid = torch.linspace(0.9, 0.05, 13, dtype=F64)
    x_init = torch.randn(6, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    res = fastflow.flow_sample(oracle, x_init, method="dpmpp_2m", time_grid=grid, scheduler=sched)
    c = S(grid)
    sig_ve = c.sigma / c.alpha

    def denoiser(y, s):  # the path's data prediction at the time of this sigma_ve
        i = int(torch.argmin((sig_ve - s[0]).abs()))
        t = torch.full((y.shape[0],), float(grid[i]), dtype=F64)
        xt = y * c.alpha[i]
        cc = S(t)
        v = oracle(xt, t)
        den = cc.d_sigma * cc.alpha - cc.sigma * cc.d_alpha
        return (cc.d_sigma[:, None] * xt - cc.sigma[:, None] * v) / den[:, None]

    want = _kdiffusion_dpmpp_2m(denoiser, x_init / c.alpha[0], sig_ve) * c.alpha[-1]
    torch.testing.assert_close(res.x, want, rtol=1e-12, atol=1e-12)
    assert bool((res.nfe == 12).all())


def test_flow_dpmpp_2m_to_the_data_end():
    # one reference point: the data prediction is exact, and the solver returns it at t = 0 from pure noise
    ref = torch.randn(1, 4, dtype=F64)
    res = fastflow.flow_sample(fastflow.Oracle(fastflow.RectifiedFlow(), ref), torch.randn(8, 4, dtype=F64),
                               method="dpmpp_2m", steps=5, return_intermediates=True)
    torch.testing.assert_close(res.x, ref.expand(8, 4), rtol=0, atol=1e-14)
    assert res.intermediates.shape == (6, 8, 4)
    with pytest.raises(ValueError, match="scheduler is for method='dpmpp_2m'"):
        fastflow.flow_sample(lambda x, t: x, torch.zeros(2, 2), scheduler=fastflow.schedulers.Cosine())


def test_odeint_steps_as_a_grid():
    # a fixed-step method on a given grid: one step per interval, exactly the hand-written loop
    grid = torch.tensor([1.0, 0.7, 0.45, 0.2, 0.05, 0.0], dtype=F64)
    x0 = torch.randn(3, 2, dtype=F64)
    res = fastflow.odeint(lambda x, t: -x * (1 + t[:, None]), x0, 1.0, 0.0, method="euler", steps=grid)
    x = x0.clone()
    for a, b in zip(grid[:-1], grid[1:]):
        x = x + (b - a) * (-x * (1 + a))
    torch.testing.assert_close(res.x, x, rtol=1e-14, atol=1e-15)
    assert bool((res.nfe == 5).all()) and bool((res.t == 0).all()) and bool(res.success.all())
    with pytest.raises(ValueError, match="t0 must be the grid's first time"):
        fastflow.odeint(lambda x, t: x, x0, 0.9, 0.0, method="euler", steps=grid)
    with pytest.raises(ValueError, match="strictly monotone"):
        fastflow.odeint(lambda x, t: x, x0, 1.0, 0.0, method="euler", steps=[1.0, 0.2, 0.5, 0.0])


def test_fixed_steps_raise_on_nan_though_checked_every_few_steps():
    # a NaN at step 5 of 50 carries forward to the check (no pass over x and no host sync between checks)
    def f(x, t):
        return torch.where(t[:, None] < 0.9, torch.full_like(x, float("nan")), -x)

    with pytest.raises(FloatingPointError, match="NaN or inf"):
        fastflow.odeint(f, torch.ones(3, 2, dtype=F64), 1.0, 0.0, method="euler", steps=50)
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        fastflow.odeint(f, torch.ones(3, 2, dtype=F64), 1.0, 0.0, method="rk4", steps=7)
