"""fastflow.odeint: known solutions, convergence orders, dopri5 against scipy's DOP853, per-sample clocks and step
counts, compaction, max_steps, dtypes, shapes, the callback and progress hooks, and every bad input."""
import math
import sys

import numpy as np
import pytest
import torch
from _util import DEVICE

import fastflow
from fastflow import ode
from fastflow.ode import step as _ode_step

F64 = torch.float64


def decay(lam):
    """dy/dt = -lam_i y with per-sample rates, looked up by batch index (f sees only the active rows)."""
    return lambda x, t, i: -lam[i].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1))) * x


def rotation(x, t):
    """Harmonic oscillator q' = p, p' = -q: a rotation of the plane by angle t."""
    return torch.stack((x[:, 1], -x[:, 0]), dim=1)


def rotated(x0, ang):
    c, s = torch.cos(ang), torch.sin(ang)
    return torch.stack((c * x0[:, 0] + s * x0[:, 1], -s * x0[:, 0] + c * x0[:, 1]), dim=1)


def cos_growth(x, t):
    """dy/dt = cos(t) y, y(t1) = y(t0) exp(sin t1 - sin t0): non-autonomous, so stage times matter."""
    return torch.cos(t)[:, None] * x


def t_growth(x, t):
    """dy/dt = t y, y(t1) = y(t0) exp((t1^2 - t0^2) / 2)."""
    return t[:, None] * x


def scaled_err(x, ref, rtol, atol):
    """max |x - ref| / (atol + rtol |ref|)."""
    x, ref = x.double().cpu(), ref.double().cpu()
    return float(((x - ref).abs() / (atol + rtol * ref.abs())).max())


# ------------------------------------------------------------------------------------------------------------------
# Registry

def test_registry_and_orders():
    assert {k: v.order for k, v in ode.METHODS.items()} == {"euler": 1, "heun": 2, "rk4": 4, "dopri5": 5}
    for m in ode.METHODS.values():  # consistent tableaux: row sums of a equal c, weights sum to 1
        assert len(m.a) == len(m.b) == len(m.c)
        assert all(abs(sum(row) - c) < 1e-14 for row, c in zip(m.a, m.c))
        assert abs(sum(m.b) - 1) < 1e-14
    assert abs(sum(ode.Dopri5.e)) < 1e-14 and ode.Dopri5.fsal and ode.Dopri5.a[-1] == ode.Dopri5.b[:-1]
    assert fastflow.odeint is ode.odeint and fastflow.ODEResult is ode.ODEResult
    assert "odeint" in fastflow.__all__ and "ODEResult" in fastflow.__all__


# ------------------------------------------------------------------------------------------------------------------
# Known solutions

@pytest.mark.parametrize("method,steps,tol", [("dopri5", None, 1e-5), ("rk4", 200, 1e-6), ("heun", 400, 1e-3)])
def test_exponential_decay_per_sample_rates(method, steps, tol):
    lam = torch.tensor([0.1, 0.7, 2.0, 5.0, 13.0], dtype=F64, device=DEVICE)
    x0 = torch.linspace(-2, 3, 5, dtype=F64, device=DEVICE)[:, None]
    r = fastflow.odeint(decay(lam), x0, 0.0, 1.0, method=method, steps=steps, with_index=True)
    exact = x0 * torch.exp(-lam)[:, None]
    print(method, (r.x - exact).abs().max().item(), r.nfe.tolist())
    assert r.success.all() and (r.t == 1.0).all()
    assert (r.x - exact).abs().max() < 10 * tol


@pytest.mark.parametrize("method,steps", [("dopri5", None), ("rk4", 100)])
def test_rotation(method, steps):
    x0 = torch.randn(6, 2, dtype=F64, device=DEVICE)
    t1 = torch.linspace(0.5, 2 * math.pi, 6, dtype=F64, device=DEVICE)
    r = fastflow.odeint(rotation, x0, 0.0, t1, method=method, steps=steps, rtol=1e-7, atol=1e-7)
    exact = rotated(x0, t1)
    print(method, (r.x - exact).abs().max().item())
    assert (r.x - exact).abs().max() < 1e-5
    assert torch.allclose(r.x.norm(dim=1), x0.norm(dim=1), rtol=1e-5)  # a rotation keeps the radius
    assert torch.equal(r.t, t1)


def test_rejected_steps_keep_the_fsal_stage():
    """Rejected steps must restore x and dopri5's first-same-as-last stage f(x, t) for those rows only: a too-long
    first step (h0) forces rejections in some rows while the others accept, and the result must still meet the
    tolerance (a stale or overwritten FSAL stage gives errors of ~100 tol here)."""
    t1 = torch.tensor([1.0, 2.5, 3.0, 2.0], dtype=F64, device=DEVICE)
    x0 = torch.ones(4, 3, dtype=F64, device=DEVICE)
    h0 = torch.tensor([0.01, 2.0, 0.01, 1.5], dtype=F64, device=DEVICE)
    r = fastflow.odeint(t_growth, x0, 0.0, t1, rtol=1e-8, atol=1e-8, h0=h0)
    exact = x0 * torch.exp(t1 ** 2 / 2)[:, None]
    err = scaled_err(r.x, exact, 1e-8, 1e-8)
    print("scaled err", err, "rejected", r.n_rejected.tolist())
    assert int(r.n_rejected[1]) > 0 and int(r.n_rejected[3]) > 0
    assert err < 10 and bool(r.success.all())


def test_non_autonomous_per_sample_times_forward_and_backward():
    """Per-sample t0 and t1 tensors, both directions in one batch; f uses t, so a mixed-up row/time pairing
    after compaction would show."""
    t0 = torch.tensor([0.0, 0.3, 1.5, -1.0, 2.0, 0.7], dtype=F64, device=DEVICE)
    t1 = torch.tensor([1.0, 2.5, 0.2, 1.0, -0.5, 0.71], dtype=F64, device=DEVICE)
    x0 = torch.rand(6, 3, dtype=F64, device=DEVICE) + 0.5
    exact = x0 * torch.exp((t1 ** 2 - t0 ** 2) / 2)[:, None]
    r = fastflow.odeint(t_growth, x0, t0, t1, rtol=1e-8, atol=1e-8)
    err = scaled_err(r.x, exact, 1e-8, 1e-8)
    print("scaled err", err, r.nfe.tolist())
    assert err < 100
    assert torch.equal(r.t, t1) and r.success.all()
    r4 = fastflow.odeint(cos_growth, x0, t0, t1, method="rk4", steps=200)
    assert (r4.x - x0 * torch.exp(torch.sin(t1) - torch.sin(t0))[:, None]).abs().max() < 1e-8


@pytest.mark.parametrize("method,steps", [("dopri5", None), ("euler", 2), ("rk4", 2)])
def test_lands_exactly_on_t1(method, steps):
    """t1 is reached exactly, not as t + (t1 - t), which misses these t1 by one ulp."""
    t0 = torch.tensor([2.0995500775556986, 2.9342793484326606, 2.323232950666686], dtype=F64)
    t1 = torch.tensor([-1.9670850704588012, -1.4627358582838876, -1.874787283438822], dtype=F64)
    r = fastflow.odeint(lambda x, t: -0.1 * x, torch.ones(3, 1, dtype=F64), t0, t1, method=method, steps=steps)
    assert torch.equal(r.t, t1) and r.success.all()


@pytest.mark.parametrize("method,steps", [("dopri5", None), ("euler", 2000)])
def test_backward_integration(method, steps):
    lam = torch.tensor([0.5, 2.0, 4.0], dtype=F64)
    x1 = torch.ones(3, 2, dtype=F64)
    r = fastflow.odeint(decay(lam), x1, 1.0, 0.0, method=method, steps=steps, with_index=True)
    exact = x1 * torch.exp(lam)[:, None]  # y(0) = y(1) e^lam
    print(method, scaled_err(r.x, exact, 1e-3, 0))
    assert scaled_err(r.x, exact, 1e-3 if method == "dopri5" else 1e-2, 0) < 1
    assert (r.t == 0.0).all()


# ------------------------------------------------------------------------------------------------------------------
# Convergence orders and accuracy

@pytest.mark.parametrize("method,ns", [("euler", [16, 32, 64, 128]), ("heun", [8, 16, 32, 64]),
                                       ("rk4", [8, 16, 32, 64])])
def test_convergence_order(method, ns):
    """Global error ~ h^p: the slope of log(err) against log(h) is the method's order."""
    x0 = torch.tensor([[1.0], [0.5]], dtype=F64)
    t0, t1 = 0.0, 2.0
    exact = x0 * math.exp(math.sin(t1) - math.sin(t0))
    errs = [float((fastflow.odeint(cos_growth, x0, t0, t1, method=method, steps=n).x - exact).abs().max())
            for n in ns]
    slope = np.polyfit(np.log([(t1 - t0) / n for n in ns]), np.log(errs), 1)[0]
    p = ode.METHODS[method].order
    print(method, errs, "slope", slope)
    assert abs(slope - p) < 0.3


def lotka_volterra(x, t):
    a, b = x[:, 0], x[:, 1]
    return torch.stack((a * (1.5 - b), b * (a - 3.0)), dim=1)


def test_dopri5_against_scipy_dop853():
    pytest.importorskip("scipy")
    from scipy.integrate import solve_ivp
    x0 = torch.tensor([[1.0, 1.0], [2.0, 0.5], [0.5, 2.0], [3.0, 3.0]], dtype=F64)
    t1 = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=F64)
    tol = 1e-8
    r = fastflow.odeint(lotka_volterra, x0, 0.0, t1, rtol=tol, atol=tol)
    ref = torch.tensor(np.stack([
        solve_ivp(lambda t, y: [y[0] * (1.5 - y[1]), y[1] * (y[0] - 3.0)], (0.0, float(t1[i])), x0[i].numpy(),
                  method="DOP853", rtol=1e-12, atol=1e-12).y[:, -1] for i in range(4)]))
    err = scaled_err(r.x, ref, tol, tol)
    print("scaled err vs DOP853", err, "nfe", r.nfe.tolist())
    assert err < 100
    assert r.success.all() and torch.equal(r.t, t1)
    loose = fastflow.odeint(lotka_volterra, x0, 0.0, t1, rtol=1e-4, atol=1e-4)
    assert (loose.nfe < r.nfe).all()  # the tolerance steers the step size
    assert scaled_err(loose.x, ref, tol, tol) > err


# ------------------------------------------------------------------------------------------------------------------
# Per-sample step sizes and compaction

def test_step_counts_follow_stiffness():
    """Rates 0.1..100 in one batch: the stiff samples take many steps, the easy ones few, fewer than a run that
    shares one step size across the batch (one sample holding every rate)."""
    lam = torch.logspace(-1, 2, 6, dtype=F64)
    x0 = torch.ones(6, 1, dtype=F64)
    r = fastflow.odeint(decay(lam), x0, 0.0, 1.0, with_index=True)
    shared = fastflow.odeint(lambda x, t: -lam[None] * x, x0.T.clone(), 0.0, 1.0)
    print("nfe per sample", r.nfe.tolist(), "shared", shared.nfe.tolist())
    assert r.nfe[-1] > 5 * r.nfe[0]
    assert (r.nfe[1:] >= r.nfe[:-1]).all()  # harder rate, no fewer evaluations
    assert r.nfe[0] < shared.nfe[0] / 5
    assert r.nfe.sum() < 6 * shared.nfe[0]
    assert (r.x - torch.exp(-lam)[:, None]).abs().max() < 1e-4


@pytest.mark.parametrize("method,steps", [("dopri5", None), ("heun", 7)])
def test_compaction_matches_solo_runs(method, steps):
    """f only ever sees the active rows (the batch shrinks as samples land), and each sample's result, nfe and
    step counts equal a run of that sample alone."""
    lam = torch.tensor([0.2, 30.0, 1.0, 8.0, 0.05], dtype=F64)
    t1 = torch.tensor([1.0, 0.5, 3.0, 0.0, 2.0], dtype=F64)  # sample 3 has a zero-length interval
    x0 = torch.randn(5, 3, dtype=F64)
    seen = []

    def f(x, t, i):
        seen.append(x.shape[0])
        assert x.shape[0] == t.shape[0] == i.shape[0]
        return -lam[i][:, None] * x + torch.sin(t)[:, None]

    r = fastflow.odeint(f, x0, 0.0, t1, method=method, steps=steps, with_index=True)
    print("batch sizes f saw", sorted(set(seen), reverse=True), "nfe", r.nfe.tolist())
    assert max(seen) == 4  # the zero-length sample never enters
    assert seen == sorted(seen, reverse=True)
    if method == "dopri5":  # fixed steps: all land on the same step
        assert min(seen) == 1
    assert r.nfe[3] == 0 and torch.equal(r.x[3], x0[3])
    for k in range(5):
        solo = fastflow.odeint(lambda x, t, _i, k=k: -lam[k] * x + torch.sin(t)[:, None], x0[k:k + 1], 0.0,
                               t1[k:k + 1], method=method, steps=steps, with_index=True)
        assert torch.allclose(r.x[k], solo.x[0], rtol=1e-13, atol=1e-15)
        assert r.nfe[k] == solo.nfe[0] and r.n_accepted[k] == solo.n_accepted[0]
        assert r.n_rejected[k] == solo.n_rejected[0]
    assert int(r.nfe.sum()) == sum(seen)  # each row of each call counted once, for its own sample


def test_combine_and_error_norm_are_the_step_arithmetic(monkeypatch):
    """Every stage combination and error norm goes through fastflow.ode.step (where fused kernels plug in)."""
    calls = {"combine": 0, "error_norm": 0}

    def counting(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    x0 = torch.randn(3, 2, dtype=F64)
    ref = fastflow.odeint(rotation, x0, 0.0, 1.0)
    monkeypatch.setattr(_ode_step, "combine", counting("combine", _ode_step.combine))
    monkeypatch.setattr(_ode_step, "error_norm", counting("error_norm", _ode_step.error_norm))
    r = fastflow.odeint(rotation, x0, 0.0, 1.0)
    steps = int(r.n_accepted.max() + r.n_rejected.max())
    assert calls["combine"] == 6 * steps + 1  # 6 stages per step, + the starting-step probe
    assert calls["error_norm"] == steps + 3  # one per step, + 3 norms of the starting step
    assert torch.equal(r.x, ref.x)


# ------------------------------------------------------------------------------------------------------------------
# Stopping: max_steps, zero-length intervals, non-finite f

def test_max_steps_returns_unfinished_samples():
    lam = torch.tensor([0.1, 100.0], dtype=F64)
    x0 = torch.ones(2, 1, dtype=F64)
    r = fastflow.odeint(decay(lam), x0, 0.0, 1.0, max_steps=6, with_index=True)
    print(r.success.tolist(), r.t.tolist(), r.nfe.tolist())
    assert r.success.tolist() == [True, False]
    assert r.t[0] == 1.0 and 0.0 < r.t[1] < 1.0
    assert r.n_accepted[1] + r.n_rejected[1] == 6
    assert abs(float(r.x[1, 0]) - math.exp(-100 * float(r.t[1]))) < 1e-4  # x is the state at the returned t
    fixed = fastflow.odeint(decay(lam), x0, 0.0, 1.0, method="rk4", steps=10, max_steps=4, with_index=True)
    assert not fixed.success.any()
    assert torch.allclose(fixed.t, torch.full((2,), 0.4, dtype=F64)) and (fixed.nfe == 16).all()


def test_zero_length_interval():
    x0 = torch.randn(3, 2)
    calls = []
    r = fastflow.odeint(lambda x, t: calls.append(1) or x, x0, 0.5, 0.5)
    assert not calls and torch.equal(r.x, x0) and r.success.all() and (r.nfe == 0).all()
    assert (r.t == 0.5).all() and r.t.dtype == F64


def test_empty_batch():
    r = fastflow.odeint(rotation, torch.zeros(0, 2), 0.0, 1.0)
    assert r.x.shape == (0, 2) and r.nfe.shape == (0,) and r.success.shape == (0,)


def test_nonfinite_f_raises():
    x0 = torch.ones(3, 2, dtype=F64)

    def blows_up(x, t):
        return torch.where(t[:, None] > 0.5, torch.full_like(x, math.nan), -x)

    with pytest.raises(FloatingPointError, match="f returned NaN"):
        fastflow.odeint(blows_up, x0, 0.0, 1.0, method="euler", steps=10)
    with pytest.raises(FloatingPointError, match="f returned NaN"):
        fastflow.odeint(blows_up, x0, 0.0, 1.0)
    with pytest.raises(FloatingPointError, match="initial state"):
        fastflow.odeint(lambda x, t: x * math.inf, x0, 0.0, 1.0)


def test_step_size_underflow_at_a_singularity_stops_the_sample():
    """y = 1 / (0.5 - t) blows up at t = 0.5: the step shrinks until t + h == t; that sample stops with success
    False (finite x, t just short of 0.5), and the other sample, whose t1 = 0.4 is before the blow-up, is fine."""
    x0 = torch.full((2, 1), 2.0, dtype=F64)
    t1 = torch.tensor([0.4, 1.0], dtype=F64)
    r = fastflow.odeint(lambda x, t: (0.5 - t).pow(-2)[:, None].expand_as(x), x0, 0.0, t1)
    print(r.t.tolist(), r.x.flatten().tolist(), r.nfe.tolist())
    assert r.success.tolist() == [True, False]
    assert abs(float(r.x[0, 0]) - 10.0) < 1e-3
    assert 0.5 - 1e-9 < float(r.t[1]) < 0.5 and torch.isfinite(r.x).all() and r.x[1, 0] > 1e8
    assert r.n_accepted[1] + r.n_rejected[1] < 10_000  # it stopped on the stall, not on max_steps


def test_dopri5_rejects_trial_steps_where_f_is_not_finite():
    """f is NaN outside its domain (x < -0.5) while the solution e^-t stays inside: a too-long trial step leaves the
    domain, and is rejected and retried shorter instead of returning NaN or raising."""
    x0 = torch.ones(2, 1, dtype=F64)

    def f(x, t):
        return torch.where(x < -0.5, torch.full_like(x, math.nan), -x)

    r = fastflow.odeint(f, x0, 0.0, 3.0, h0=torch.tensor([5.0, 0.1], dtype=F64), rtol=1e-8, atol=1e-8)
    print(r.n_rejected.tolist(), scaled_err(r.x, x0 * math.exp(-3.0), 1e-8, 1e-8))
    assert r.success.all() and r.n_rejected[0] >= 1
    assert scaled_err(r.x, x0 * math.exp(-3.0), 1e-8, 1e-8) < 100


# ------------------------------------------------------------------------------------------------------------------
# Dtypes and shapes

def test_float32_state_float64_time():
    lam = torch.tensor([0.3, 3.0], dtype=F64)
    x0 = torch.ones(2, 4)
    seen = []

    def f(x, t, i):
        seen.append((x.dtype, t.dtype))
        return -lam[i].float()[:, None] * x

    r = fastflow.odeint(f, x0, 0.0, 0.1, with_index=True)
    assert r.x.dtype == torch.float32 and r.t.dtype == F64
    assert (r.t == 0.1).all()  # lands on t1 in float64 (0.1 is not a float32 number)
    assert set(seen) == {(torch.float32, torch.float32)}  # f gets t in x's dtype
    assert (r.x - torch.exp(-0.1 * lam).float()[:, None]).abs().max() < 1e-4
    r32 = fastflow.odeint(f, x0, 0.0, 0.1, with_index=True, dtype_t=torch.float32)
    assert r32.t.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_states_integrate_in_float32(dtype):
    x0 = torch.randn(4, 2).to(dtype)
    seen = set()

    def f(x, t):
        seen.add((x.dtype, t.dtype))
        return rotation(x, t)

    r = fastflow.odeint(f, x0, 0.0, 1.0, rtol=1e-4, atol=1e-4)
    assert r.x.dtype == dtype and r.t.dtype == F64 and seen == {(dtype, dtype)}
    assert (r.x.float() - rotated(x0.float(), torch.ones(4))).abs().max() < 3e-2
    # 100 increments of 5e-4 from 1: each is about half an ulp of float16 at 1 (bfloat16: an eighth), so a state
    # kept in the half dtype rounds every step (fp16: 1.098, bf16: 1.0); in float32 it ends at 1.05, rounded once.
    r = fastflow.odeint(lambda x, t: torch.full_like(x, 0.05), torch.ones(2, 1, dtype=dtype), 0.0, 1.0,
                        method="euler", steps=100)
    ulp = float(torch.finfo(dtype).eps)
    print(dtype, r.x.flatten().tolist())
    assert (r.x.double() - 1.05).abs().max() <= ulp


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method,steps", [("dopri5", None), ("rk4", 50)])
def test_image_shaped_state(dtype, method, steps):
    """x of shape (B, 3, 4, 4): f gets the original shape, the result keeps it; non-contiguous x0 is fine."""
    x0 = torch.randn(5, 4, 4, 3, dtype=dtype, device=DEVICE).permute(0, 3, 1, 2)  # (5, 3, 4, 4), non-contiguous
    rates = torch.linspace(0.5, 2.0, 3, dtype=dtype, device=DEVICE)[None, :, None, None]
    shapes = set()

    def f(x, t):
        shapes.add(tuple(x.shape[1:]))
        return -rates * x

    r = fastflow.odeint(f, x0, 0.0, 1.0, method=method, steps=steps)
    assert shapes == {(3, 4, 4)} and r.x.shape == x0.shape and r.x.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 1e-5
    assert (r.x - x0 * torch.exp(-rates)).abs().max() < tol


def test_no_graph_through_the_solver():
    """A network f with parameters and an x0 that requires grad: odeint samples without building a graph."""
    net = torch.nn.Linear(3, 3).double()
    x0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    r = fastflow.odeint(lambda x, t: net(x) * 0.1, x0, 0.0, 1.0)
    assert not r.x.requires_grad and r.success.all()


# ------------------------------------------------------------------------------------------------------------------
# Hooks

def test_callback():
    lam = torch.tensor([0.5, 20.0, 3.0], dtype=F64)
    x0 = torch.ones(3, 2, dtype=F64)
    infos = []
    r = fastflow.odeint(decay(lam), x0, 0.0, 1.0, callback=infos.append, with_index=True, h0=0.5)
    assert r.n_rejected.sum() > 0  # (h0 = 0.5 is too long for lam = 20): rejected steps are not reported
    assert infos and [i.step for i in infos] == sorted({i.step for i in infos})
    acc = torch.zeros(3, dtype=torch.long)
    last_t = torch.zeros(3, dtype=F64)
    for info in infos:
        m = info.index.numel()
        assert info.t.shape == info.h.shape == (m,) and info.x.shape == (m, 2) and info.nfe.shape == (3,)
        assert (info.t > last_t[info.index]).all()  # each sample's clock only moves forward
        assert torch.allclose(info.x, torch.exp(-lam[info.index] * info.t)[:, None], atol=1e-4)
        last_t[info.index] = info.t
        acc[info.index] += 1
    assert torch.equal(acc, r.n_accepted) and (last_t == 1.0).all()
    assert torch.equal(infos[-1].nfe, r.nfe)
    with pytest.raises(RuntimeError, match="stop"):  # exceptions from the callback propagate
        fastflow.odeint(rotation, x0, 0.0, 1.0, callback=lambda info: (_ for _ in ()).throw(RuntimeError("stop")))


def test_progress_bar(monkeypatch, capsys):
    x0 = torch.randn(3, 2, dtype=F64)
    quiet = fastflow.odeint(rotation, x0, 0.0, 1.0)
    loud = fastflow.odeint(rotation, x0, 0.0, 1.0, progress=True)
    assert "3/3" in capsys.readouterr().err and torch.equal(loud.x, quiet.x)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # tqdm missing: a warning, same result
    with pytest.warns(UserWarning, match="tqdm"):
        r = fastflow.odeint(rotation, x0, 0.0, 1.0, progress=True)
    assert torch.equal(r.x, quiet.x)


# ------------------------------------------------------------------------------------------------------------------
# Bad input

X = torch.ones(3, 2)
OK = dict(f=rotation, x0=X, t0=0.0, t1=1.0)

BAD = [
    ("f", dict(f="rotation"), TypeError, "f must be callable"),
    ("x0-list", dict(x0=[[1.0, 2.0]]), TypeError, "x0 must be a torch.Tensor"),
    ("x0-int", dict(x0=torch.ones(3, 2, dtype=torch.long)), TypeError, "x0 must be a floating-point"),
    ("x0-0d", dict(x0=torch.tensor(1.0)), ValueError, "x0 must have at least 1"),
    ("x0-empty-rows", dict(x0=torch.ones(3, 0)), ValueError, "x0 must have at least one element"),
    ("x0-nan", dict(x0=torch.tensor([[1.0, math.nan]] * 3)), ValueError, "x0 contains NaN"),
    ("t0-shape", dict(t0=torch.zeros(4)), ValueError, r"t0 must be a float or a tensor of shape \(B,\)"),
    ("t1-shape", dict(t1=torch.ones(3, 1)), ValueError, r"t1 must be a float or a tensor of shape \(B,\)"),
    ("t0-nan", dict(t0=math.nan), ValueError, "t0 must be finite"),
    ("t1-inf", dict(t1=torch.tensor([1.0, math.inf, 1.0])), ValueError, "t1 contains NaN or inf"),
    ("t0-str", dict(t0="0"), TypeError, "t0 must be a float"),
    ("t1-bool", dict(t1=torch.ones(3, dtype=torch.bool)), TypeError, "t1 must be"),
    ("method", dict(method="rk45"), ValueError, "unknown method 'rk45'"),
    ("method-type", dict(method=4), TypeError, "method must be a string"),
    ("rtol", dict(rtol=0.0), ValueError, "rtol must be finite and > 0"),
    ("atol", dict(atol=-1e-6), ValueError, "atol must be finite and > 0"),
    ("steps-missing", dict(method="rk4"), ValueError, "steps is required"),
    ("steps-zero", dict(method="euler", steps=0), ValueError, "steps must be >= 1"),
    ("steps-float", dict(method="heun", steps=2.5), TypeError, "steps must be an int"),
    ("steps-adaptive", dict(steps=10), ValueError, "steps is for the fixed-step methods"),
    ("max_steps", dict(max_steps=0), ValueError, "max_steps must be >= 1"),
    ("callback", dict(callback=3), TypeError, "callback must be callable"),
    ("progress", dict(progress="yes"), TypeError, "progress must be a bool"),
    ("h0-negative", dict(h0=-0.1), ValueError, "h0 must be finite and > 0"),
    ("h0-tensor", dict(h0=torch.tensor([0.1, 0.0, 0.1])), ValueError, "h0 must be > 0"),
    ("h0-fixed", dict(method="rk4", steps=3, h0=0.1), ValueError, "h0 is for the adaptive"),
    ("dtype_t", dict(dtype_t=torch.int64), TypeError, "dtype_t must be a floating-point"),
    ("dtype_t-half", dict(dtype_t=torch.float16), ValueError, "dtype_t must be torch.float64"),
    ("f-shape", dict(f=lambda x, t: x[:, :1]), ValueError, r"f returned shape \(3, 1\), expected \(3, 2\)"),
    ("f-type", dict(f=lambda x, t: x.numpy()), TypeError, "f must return a torch.Tensor"),
    ("f-int", dict(f=lambda x, t: x.long()), TypeError, "f must return a floating-point"),
]


@pytest.mark.parametrize("kw,exc,match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input(kw, exc, match):
    args = {**OK, **kw}
    with pytest.raises(exc, match=match):
        fastflow.odeint(args.pop("f"), args.pop("x0"), args.pop("t0"), args.pop("t1"), **args)
