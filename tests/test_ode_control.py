"""The step-size control of the adaptive solvers (fastflow/ode/control.py): the C++ op fastflow::rk_control_
against the torch reference, the PI formula by hand, bad arguments, and odeint with either."""
import math

import numpy as np
import pytest
import torch
from _util import DEVICE

from fastflow import odeint
from fastflow._core import loader as _loader
from fastflow.ode import control as ctl

needs_C = pytest.mark.skipif(not _loader.has_C(), reason=f"fastflow._C is not built ({_loader._C_error()})")
needs_triton = pytest.mark.skipif(not _loader.has_triton(), reason="triton is not installed")
K5 = 5  # dopri5: error order 4, k = 5


def make_state(n: int, tdt: torch.dtype, edt: torch.dtype, xdt: torch.dtype, seed: int = 0):
    """A batch that visits every branch: errors below and above 1, exactly 0, NaN and inf; non-finite states;
    rejected and landing rows; clocks far from zero where a small h stalls; forward and backward time."""
    g = torch.Generator().manual_seed(seed)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 10
    span = torch.rand(n, generator=g, dtype=torch.float64) * 5 + 0.1
    t1 = t + sign * span
    h_try = sign * span * torch.rand(n, generator=g, dtype=torch.float64)
    big = torch.rand(n, generator=g) < 0.1  # a clock at 1e8 with a step of 1e-9: stalls in float64 and float32
    t = torch.where(big, torch.full_like(t, 1e8), t)
    t1 = torch.where(big, t + sign * 5, t1)
    h_try = torch.where(big, sign * 1e-9, h_try)
    err = torch.rand(n, generator=g, dtype=torch.float64) * 3
    err[::17] = 0.0
    err[3::23] = float("nan")
    err[5::29] = float("inf")
    err[7::31] = 1.0  # accepted: err <= 1
    xmax = torch.rand(n, generator=g, dtype=torch.float64)
    xmax[11::19] = float("inf")
    xmax[13::37] = float("nan")
    err_prev = torch.rand(n, generator=g, dtype=torch.float64) + 1e-4
    status = torch.rand(n, ctl.N_STATUS, generator=g) < 0.3
    lands = torch.rand(n, generator=g) < 0.3
    status[:, ctl.LANDS] = lands
    t_next = torch.where(lands, t1, t + h_try)
    h_try = torch.where(lands, t1 - t, h_try)
    h = torch.rand(n, generator=g, dtype=torch.float64)  # overwritten: the controller's output
    state = dict(t=t.to(tdt), h=h.to(tdt), h_try=h_try.to(tdt), t_next=t_next.to(tdt), err_prev=err_prev.to(tdt),
                 status=status)
    return state, t1.to(tdt), err.to(edt), xmax.to(xdt)


def run(fn, state, t1, err, xmax, k=K5):
    s = {key: v.clone() for key, v in state.items()}
    fn(s["t"], s["h"], s["h_try"], s["t_next"], s["err_prev"], s["status"], t1, err, xmax, k)
    return s


def op(t, h, h_try, t_next, err_prev, status, t1, err, xmax, k):
    torch.ops.fastflow.rk_control_(t, h, h_try, t_next, err_prev, status, t1, err, xmax, ctl.gains(k))


IMPLS = {"reference": ctl.control_reference, "op": op, "triton": ctl.control_triton}


@pytest.mark.parametrize("impl", [pytest.param("op", marks=needs_C), pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("tdt,edt,xdt", [
    (torch.float64, torch.float32, torch.float32),
    (torch.float64, torch.float64, torch.float64),
    (torch.float32, torch.float32, torch.bfloat16),
    (torch.float32, torch.float64, torch.float16),
])
def test_fast_paths_match_reference(impl, tdt, edt, xdt):
    """The C++ op (CPU) and the Triton kernel (the interpreter here; compiled with FASTFLOW_TEST_DEVICE=cuda)
    against the torch reference, over every branch."""
    device = DEVICE if impl == "triton" else torch.device("cpu")
    state, t1, err, xmax = make_state(1000, tdt, edt, xdt)
    ref = run(ctl.control_reference, state, t1, err, xmax)
    state, t1, err, xmax = ({key: v.to(device) for key, v in state.items()}, t1.to(device), err.to(device),
                            xmax.to(device))
    got = run(op if impl == "op" else ctl.control_triton, state, t1, err, xmax)
    got = {key: v.cpu() for key, v in got.items()}
    st_ref, st_got = ref["status"], got["status"]
    # every branch was visited
    assert st_ref[:, ctl.ACCEPT].any() and (~st_ref[:, ctl.ACCEPT]).any()
    assert st_ref[:, ctl.DONE].any() and st_ref[:, ctl.STALLED].any() and st_ref[:, ctl.BAD].any()
    assert torch.equal(st_got, st_ref), torch.nonzero(st_got != st_ref)[:5]
    # pow differs by an ulp or so between std::pow and torch's vectorised pow; Triton's exp(p log x) by a few
    rtol = 1e-13 if tdt == torch.float64 else 4e-6
    for key in ("t", "h", "h_try", "err_prev"):
        torch.testing.assert_close(got[key], ref[key], rtol=rtol, atol=0, msg=key)
    # t_next = t + h_try cancels on backward steps: its error is on the scale of |t| + |h_try|
    scale = ref["t"].double().abs() + ref["h_try"].double().abs()
    assert ((got["t_next"].double() - ref["t_next"].double()).abs() <= rtol * scale).all()


@pytest.mark.parametrize("impl", ["reference", pytest.param("op", marks=needs_C),
                                  pytest.param("triton", marks=needs_triton)])
def test_pi_step_by_hand(impl):
    """One accepted step (err 0.5, err_prev 0.2) and one rejected step (err 4), computed by hand."""
    f64 = torch.float64
    t = torch.tensor([0.0, 0.0], dtype=f64)
    h_try = torch.tensor([0.1, 0.1], dtype=f64)
    state = dict(t=t, h=torch.zeros(2, dtype=f64), h_try=h_try, t_next=t + h_try,
                 err_prev=torch.tensor([0.2, 0.2], dtype=f64), status=torch.zeros(2, 6, dtype=torch.bool))
    t1 = torch.tensor([10.0, 10.0], dtype=f64)
    fn = IMPLS[impl]
    s = run(fn, state, t1, torch.tensor([0.5, 4.0]), torch.ones(2))
    fac_acc = 0.9 * 0.5 ** (-0.85 / 5) * 0.2 ** (0.2 / 5)
    fac_rej = 0.9 * 4.0 ** (-1 / 5)
    assert s["h"].tolist() == pytest.approx([0.1 * fac_acc, 0.1 * fac_rej], rel=1e-14)
    assert s["t"].tolist() == [0.1, 0.0]  # the accepted row moved, the rejected one did not
    assert s["err_prev"].tolist() == [0.5, 0.2]
    assert s["status"][:, ctl.ACCEPT].tolist() == [True, False]
    assert s["status"][:, ctl.REJECTED].tolist() == [False, True]
    assert not s["status"][:, [ctl.DONE, ctl.STALLED, ctl.BAD, ctl.LANDS]].any()
    # the next trial step starts where each row is
    assert s["t_next"].tolist() == pytest.approx([0.1 + 0.1 * fac_acc, 0.1 * fac_rej], rel=1e-14)
    # the row after a rejection may not grow, even with a tiny error
    s2 = run(fn, s, t1, torch.tensor([1e-8, 1e-8]), torch.ones(2))
    assert float(s2["h"][1]) == pytest.approx(float(s["h_try"][1]), rel=1e-14)  # factor clamped to 1
    assert float(s2["h"][0]) == pytest.approx(10 * float(s["h_try"][0]), rel=1e-14)  # clamped to FAC_MAX


@pytest.mark.parametrize("impl", ["reference", pytest.param("op", marks=needs_C),
                                  pytest.param("triton", marks=needs_triton)])
def test_landing(impl):
    """A proposed step within 1% of t1 is stretched onto t1; landing there (accepted) is done."""
    f64 = torch.float64
    fn = IMPLS[impl]
    t, t1 = torch.tensor([0.0], dtype=f64), torch.tensor([1.0], dtype=f64)
    state = dict(t=t, h=torch.zeros(1, dtype=f64), h_try=torch.tensor([0.5], dtype=f64),
                 t_next=torch.tensor([0.5], dtype=f64), err_prev=torch.ones(1, dtype=f64),
                 status=torch.zeros(1, 6, dtype=torch.bool))
    # err chosen so that the factor is 0.9 * e^-0.17 = 1/0.996: the next step 0.502 covers 1.004x of the rest
    e = (0.9 * 0.996) ** (1 / 0.17)
    s = run(fn, state, t1, torch.tensor([e], dtype=f64), torch.ones(1))
    assert s["status"][0, ctl.LANDS] and s["t_next"].item() == 1.0 and s["h_try"].item() == 0.5
    s = run(fn, s, t1, torch.tensor([0.5], dtype=f64), torch.ones(1))
    assert s["status"][0, ctl.DONE] and s["t"].item() == 1.0


@needs_C
@pytest.mark.parametrize("change,match", [
    (dict(t=lambda s: s["t"].half()), "t must be float32 or float64"),
    (dict(h=lambda s: s["h"].float()), "h must have t's dtype"),
    (dict(t1=lambda s: s["t1"][:-1]), r"t1 must be a contiguous \(5,\)"),
    (dict(err_prev=lambda s: torch.zeros(10, dtype=torch.float64)[::2]), "err_prev must be a contiguous"),
    (dict(err=lambda s: s["err"].long()), "err must be float64, float32, float16 or bfloat16"),
    (dict(status=lambda s: torch.zeros(5, 4, dtype=torch.bool)), r"status must be a contiguous \(5, 6\) bool"),
    (dict(status=lambda s: torch.zeros(5, 6, dtype=torch.uint8)), "status must be"),
    (dict(gains=lambda s: s["gains"][:-1]), "gains must hold 8 numbers"),
])
def test_op_rejects_bad_arguments(change, match):
    state, t1, err, xmax = make_state(5, torch.float64, torch.float32, torch.float32)
    args = dict(state, t1=t1, err=err, xmax=xmax, gains=ctl.gains(K5))
    for key, fn in change.items():
        args[key] = fn(args)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.fastflow.rk_control_(args["t"], args["h"], args["h_try"], args["t_next"], args["err_prev"],
                                       args["status"], args["t1"], args["err"], args["xmax"], args["gains"])


@needs_C
def test_op_opcheck():
    import fastflow._core.ops  # noqa: F401  (the fake implementations)

    state, t1, err, xmax = make_state(6, torch.float64, torch.float32, torch.float32)
    s = state
    torch.library.opcheck(torch.ops.fastflow.rk_control_,
                          (s["t"], s["h"], s["h_try"], s["t_next"], s["err_prev"], s["status"], t1, err, xmax,
                           ctl.gains(K5)))


@pytest.mark.parametrize("impl", [pytest.param("op", marks=needs_C), pytest.param("triton", marks=needs_triton)])
def test_odeint_same_steps_with_either_control(monkeypatch, impl):
    """odeint with a fast control (the C++ op; the Triton kernel, forced, under the interpreter) and with the
    reference takes the same steps (per-sample nfe, accepted and rejected counts) and lands on the same solution,
    on a batch of mixed stiffness with a stiff start."""
    B, d = 64, 8
    g = torch.Generator().manual_seed(3)
    lam = torch.logspace(0, 2, B, dtype=torch.float64)[:, None]
    x0 = torch.randn(B, d, generator=g, dtype=torch.float64)

    def f(x, t, idx):  # only the rows still integrating come in: their rates are lam[idx]
        return -lam[idx] * (x - torch.cos(t)[:, None])

    with monkeypatch.context() as mp:
        if impl == "triton":
            mp.setattr(ctl, "control", ctl.control_triton)
        res = odeint(f, x0, 0.0, 3.0, rtol=1e-7, atol=1e-9, with_index=True)
    monkeypatch.setattr(ctl, "control", ctl.control_reference)
    ref = odeint(f, x0, 0.0, 3.0, rtol=1e-7, atol=1e-9, with_index=True)
    assert torch.equal(res.nfe, ref.nfe) and torch.equal(res.n_accepted, ref.n_accepted)
    assert torch.equal(res.n_rejected, ref.n_rejected) and int(res.n_rejected.sum()) > 0
    assert res.success.all() and torch.equal(res.t, ref.t)
    torch.testing.assert_close(res.x, ref.x, rtol=1e-12, atol=1e-12)
    # and the solution is right: x' = -lam (x - cos t) has x = c e^(-lam t) + lam (lam cos t + sin t) / (1 + lam^2)
    t = 3.0
    part0 = lam * lam / (1 + lam * lam)
    exact = (x0 - part0) * torch.exp(-lam * t) + lam * (lam * math.cos(t) + math.sin(t)) / (1 + lam * lam)
    assert float((res.x - exact).abs().max()) < 1e-5
    assert np.unique(res.nfe.numpy()).size > 3  # per-sample steps: the stiff rows took more
