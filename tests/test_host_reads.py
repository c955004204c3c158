"""Host reads per public call (issue 11 §4): a value check (NaN / inf, t > 0) needs a tensor value on the host, and on
a GPU each such read waits for the device. A public call reads at most once with value checks on (all its checks
packed into one integer) and never with them off (``fastflow.set_validate_args(False)``).

Counted on the CPU by a TorchDispatchMode that records every operator that hands a tensor value to Python
(``aten._local_scalar_dense``, to which ``item``, ``bool``, ``int`` and ``float`` of a tensor lower, and its kin) and
every copy from a device to the CPU. ``validate.reads_are_free`` is patched to False so that the CPU runs the branch
CUDA takes (the field's torch backend then centres without asking the data whether it must).
"""
import pytest
import torch
from _util import FAMILIES
from torch.utils._python_dispatch import TorchDispatchMode

import fastflow
from fastflow import draws
from fastflow._core import config, dispatch, loader
from fastflow._core import validate as V

aten = torch.ops.aten
READS = {aten._local_scalar_dense, aten.item, aten.is_nonzero, aten.equal}
COPIES = {aten._to_copy, aten.copy_, aten.to}


class CountReads(TorchDispatchMode):
    """Records the operators that move a tensor value to the host."""

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet in READS:
            self.reads.append(str(func))
        elif packet in COPIES:
            src = args[1] if packet is aten.copy_ else args[0]
            dst = args[0].device if packet is aten.copy_ else kwargs.get("device")
            if isinstance(src, torch.Tensor) and src.device.type != "cpu" and dst is not None \
                    and torch.device(dst).type == "cpu":
                self.reads.append(f"{func} to cpu")
        return func(*args, **kwargs)


def reads(fn):
    with CountReads() as mode:
        fn()
    return mode.reads


@pytest.fixture
def device_branch(monkeypatch):
    """Run the code path that CUDA runs: no data-dependent shortcut that would need a read."""
    monkeypatch.setattr(V, "reads_are_free", lambda device: False)


def _field_calls():
    gen = torch.Generator().manual_seed(0)
    B, R, d = 6, 40, 5
    x = torch.randn(B, d, generator=gen)
    ref = torch.randn(R, d, generator=gen)
    t = torch.rand(B, generator=gen) * 0.5 + 0.3
    calls = {}
    for name, make in FAMILIES.items():
        fam = make()
        calls[f"{name}.velocity"] = lambda fam=fam: fam.velocity(x, t, ref)
        calls[f"{name}.posterior_mean"] = lambda fam=fam: fam.posterior_mean(x, 0.5, ref, return_stats=True)
        calls[f"{name}.divergence"] = lambda fam=fam: fam.divergence(x, t, ref, return_velocity=True)
        calls[f"{name}.log_density"] = lambda fam=fam: fam.log_density(x, t, ref)
    calls["poisson1.velocity float16"] = lambda: fastflow.Poisson(1).velocity(x.half(), t, ref.half())
    calls["gaussian.velocity float64"] = lambda: fastflow.Gaussian().velocity(x.double(), t.double(), ref.double())
    calls["gaussian.velocity (B, 1, 5)"] = lambda: fastflow.Gaussian().velocity(x[:, None], t, ref[:, None])
    cosine, vp = (fastflow.AffinePath(s) for s in (fastflow.schedulers.Cosine(), fastflow.schedulers.VP()))
    calls["AffinePath(Cosine).velocity"] = lambda: cosine.velocity(x, t, ref)
    calls["AffinePath(VP).sample"] = lambda: vp.sample(x, t)
    student = fastflow.AffinePath(fastflow.schedulers.Cosine(), fastflow.StudentT(3.0))
    calls["AffinePath(StudentT).velocity"] = lambda: student.velocity(x, t, ref)
    calls["AffinePath(StudentT).sample"] = lambda: student.sample(x)
    calls["AffinePath(Cosine).divergence"] = lambda: cosine.divergence(x, t, ref)
    calls["AffinePath(StudentT).divergence float64"] = lambda: student.divergence(x.double(), t.double(), ref.double())
    calls["AffinePath(VP).log_density"] = lambda: vp.log_density(x, t, ref)
    calls["AffinePath(StudentT).log_density"] = lambda: student.log_density(x, t, ref)
    user = fastflow.RadialCDF(lambda r, t: 0.5 - torch.sigmoid(-2 * r / t) + 0.5 * (1 - torch.exp(-r / t**2)),
                              lam=lambda t: 0.3 * t * t)
    calls["RadialCDF(psi).velocity"] = lambda: user.velocity(x, t, ref)
    calls["RadialCDF(psi).posterior_mean"] = lambda: user.posterior_mean(x, t, ref, return_stats=True)
    calls["RadialCDF(psi).divergence"] = lambda: user.divergence(x, t, ref, return_velocity=True)
    calls["RadialCDF(psi).log_density float64"] = lambda: user.log_density(x.double(), t.double(), ref.double())
    oracle = fastflow.Oracle(fastflow.Gaussian(), ref)
    calls["Oracle.velocity_and_divergence"] = lambda: oracle.velocity_and_divergence(x, t)
    calls["pfgm.target"] = lambda: fastflow.pfgm.target(x, t, ref)
    calls["pfgm.target float z"] = lambda: fastflow.pfgm.target(x, 0.7, ref)
    calls["pfgmpp_target"] = lambda: fastflow.pfgmpp_target(x, t, ref, D=128)
    calls["stf_target"] = lambda: fastflow.stf_target(x, t.double(), ref)
    return calls


def _draw_calls():
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 2, 3, generator=gen)
    t = torch.rand(6, generator=gen) * 0.5 + 0.3
    calls = {}
    for name, make in FAMILIES.items():
        fam = make()
        calls[f"{name}.perturb"] = lambda fam=fam: fam.perturb(x0, t, generator=gen)
        calls[f"{name}.prior"] = lambda fam=fam: fam.prior(6, (2, 3), T=0.9, generator=gen)
        calls[f"{name}.prior d=1"] = lambda fam=fam: fam.prior(6, 1, T=0.9, generator=gen)
    calls["gaussian.perturb float16"] = lambda: fastflow.Gaussian().perturb(x0.half(), 0.5)
    user = fastflow.RadialCDF(lambda r, t: 1 - 2 * torch.sigmoid(-2 * r / t**2))
    calls["RadialCDF(psi).perturb"] = lambda: user.perturb(x0, t, generator=gen)
    calls["RadialCDF(psi).prior"] = lambda: user.prior(6, (2, 3), T=0.9, generator=gen)
    calls["pfgm.perturb"] = lambda: fastflow.pfgm.perturb(x0, generator=gen)
    calls["pfgm.prior"] = lambda: fastflow.pfgm.prior(6, (2, 3), z_max=40.0, generator=gen)
    calls["pfgm.prior upper_norm"] = lambda: fastflow.pfgm.prior(6, (2, 3), z_max=40.0, upper_norm=300.0)
    return calls


def _paths(kind):
    """The ways a call can be served: for the field the torch backend with and without the compiled epilogue and
    the Triton kernels; for the draws the fused op and the pure-torch pieces."""
    paths = []
    if kind == "field":
        paths.append(("torch pure", lambda m: m.setattr(dispatch, "has_C", lambda: False)))
        if loader.has_C():
            paths.append(("torch C", lambda m: None))
        if loader.has_triton():
            paths.append(("triton", lambda m: m.setenv("FASTFLOW_BACKEND", "triton")))
    else:
        paths.append(("pieces", lambda m: m.setattr(draws, "can_draw_fused", lambda *a, **k: False)))
        if draws.can_draw_fused(torch.device("cpu"), torch.float32, draws.RADIUS_ONE):
            paths.append(("fused", lambda m: None))
    return paths


@pytest.mark.parametrize("kind", ["field", "draw"])
def test_one_read_per_call_with_checks_and_none_without(kind, device_branch, monkeypatch):
    calls = _field_calls() if kind == "field" else _draw_calls()
    for path, setup in _paths(kind):
        with monkeypatch.context() as m:
            setup(m)
            for name, call in calls.items():
                on = reads(call)
                assert len(on) <= 1, f"{name} ({path}), checks on: {len(on)} host reads {on}"
                with fastflow.set_validate_args(False):
                    off = reads(call)
                assert not off, f"{name} ({path}), checks off: {len(off)} host reads {off}"


def test_the_cpu_shortcuts():
    """On the CPU (reads are free) the field's torch backend reads two numbers to skip centring pixel-like data,
    and the recorded checks are read one by one (a load each, cheaper than packing them); with checks off the two
    numbers are all."""
    calls = _field_calls()
    for name in ("poisson1.velocity", "pfgm.target", "stf_target"):
        with fastflow.set_validate_args(False):
            assert len(reads(calls[name])) == 2, name
        assert len(reads(calls[name])) > 3, name


def test_reads_do_not_change_results(device_branch):
    """The device branch (always centred) agrees with the float64 reference as the CPU branch does."""
    gen = torch.Generator().manual_seed(2)
    ref = torch.rand(64, 300, generator=gen) * 2 - 1
    x = ref[:8] + 0.3 * torch.randn(8, 300, generator=gen)
    for fam in (fastflow.Poisson(1), fastflow.Gaussian()):
        want = fam.posterior_mean(x.double(), 0.5, ref.double(), backend="reference")
        got = fam.posterior_mean(x, 0.5, ref, backend="torch")
        assert torch.allclose(got.double(), want, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# the switch, and what deferring the checks must keep

def test_switch_is_a_function_and_a_context_manager(monkeypatch):
    monkeypatch.setattr(V, "_override", None)
    assert fastflow.get_validate_args() is True
    with fastflow.set_validate_args(False):
        assert fastflow.get_validate_args() is False
        with fastflow.set_validate_args(True):
            assert fastflow.get_validate_args() is True
        assert fastflow.get_validate_args() is False
    assert fastflow.get_validate_args() is True
    fastflow.set_validate_args(False)
    assert fastflow.get_validate_args() is False
    fastflow.set_validate_args(True)
    with pytest.raises(TypeError, match="enabled must be a bool"):
        fastflow.set_validate_args(0)
    monkeypatch.setattr(V, "_override", None)
    monkeypatch.setenv("FASTFLOW_VALIDATE_ARGS", "0")
    assert fastflow.get_validate_args() is False
    monkeypatch.setenv("FASTFLOW_VALIDATE_ARGS", "maybe")
    with pytest.raises(ValueError, match="FASTFLOW_VALIDATE_ARGS must be a boolean"):
        config.validate_args()


def test_checks_off_gives_nan_not_errors_and_shape_checks_stay():
    x = torch.randn(4, 3)
    x[1, 2] = float("nan")
    ref = torch.randn(10, 3)
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        fastflow.Poisson(1).velocity(x, 1.0, ref)
    with fastflow.set_validate_args(False):
        v = fastflow.Poisson(1).velocity(x, 1.0, ref)
        assert torch.isnan(v[1]).all() and torch.isfinite(v[[0, 2, 3]]).all()
        v = fastflow.Gaussian().velocity(torch.randn(4, 3), torch.tensor([1.0, 0.0, 1.0, 1.0]), ref)
        assert not torch.isfinite(v[1]).all()
        with pytest.raises(ValueError, match="per-point shape"):
            fastflow.Poisson(1).velocity(x, 1.0, torch.randn(10, 4))
        with pytest.raises(ValueError, match="must be finite and > 0"):
            fastflow.Poisson(1).velocity(x, -1.0, ref)  # a Python number costs no read: always checked


def test_the_first_failing_check_is_reported():
    """Deferred checks raise in the order they were made: x before t, t before the output."""
    x = torch.randn(4, 3)
    ref = torch.randn(10, 3)
    bad_t = torch.tensor([1.0, -1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="t must be finite and > 0; got \\[-1.0\\]"):
        fastflow.Gaussian().velocity(x, bad_t, ref)
    x[0, 0] = float("inf")
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        fastflow.Gaussian().velocity(x, bad_t, ref)
    with pytest.raises(ValueError, match="ref contains NaN or inf"):
        fastflow.Gaussian().velocity(torch.randn(4, 3), bad_t, ref.masked_fill(ref > 1, float("nan")))


def test_a_failed_check_explains_a_later_failure():
    """When the body raises after a value check failed, the check's error is raised (the cause), chained to the
    body's (what it caused)."""
    @V.checked
    def f(v):
        V.tensor("v", v)
        raise RuntimeError("downstream")

    with pytest.raises(ValueError, match="v contains NaN") as info:
        f(torch.tensor([1.0, float("nan")]))
    assert isinstance(info.value.__context__, RuntimeError)
    with pytest.raises(RuntimeError, match="downstream"):
        f(torch.tensor([1.0, 2.0]))


def test_nested_calls_read_once_and_many_checks_pack(device_branch):
    @V.checked
    def inner(v):
        V.tensor("inner", v)
        return v

    @V.checked
    def outer(vs):
        for k, v in enumerate(vs):
            V.tensor(f"v{k}", v)
            inner(v)
        return vs

    good = [torch.randn(3) for _ in range(40)]  # 80 checks: past the 62 bits of the packed word
    assert len(reads(lambda: outer(good))) == 1
    for j in (0, 30, 31, 35):  # checks 2j (outer's) and 2j + 1 (inner's) fail; bits 0..61 are one check each
        vs = [v.clone() for v in good]
        vs[j][1] = float("nan")
        with pytest.raises(ValueError, match=f"^v{j} contains NaN"):
            outer(vs)
    with pytest.raises(ValueError, match="^v3 contains NaN"):  # the first failure wins, wherever the others are
        outer([v.masked_fill(torch.tensor(k in (3, 35)), float("nan")) for k, v in enumerate(good)])


def test_a_sum_that_overflows_is_not_an_error():
    """The one-reduction finiteness check can be fooled by finite values whose sum overflows; the error path then
    looks at the elements and finds nothing wrong."""
    big = torch.full((8, 2), 3e38)
    calls = []

    @V.checked
    def f(v):
        V.tensor("v", v)
        calls.append(1)
        return v

    assert f(big) is big and calls == [1]


def test_zero_gaussian_rows_are_replaced_without_a_read(monkeypatch):
    """nonzero_normal: an all-zero row (2^-24 per float32 entry) takes the second draw's row at d <= 2, else e_1."""
    draws_seen = []

    def fake_normal(n, d, *, generator, device, dtype):
        g = torch.ones(n, d, dtype=dtype) * (len(draws_seen) + 2)
        if not draws_seen:
            g[1] = 0.0
            g[3] = 0.0
        else:
            g[3] = 0.0
        draws_seen.append(g)
        return g

    monkeypatch.setattr(draws, "normal", fake_normal)
    out = []
    assert not reads(lambda: out.extend(draws.nonzero_normal(5, 2, generator=None, device=torch.device("cpu"),
                                                             dtype=torch.float32)))
    g, norm = out
    assert torch.equal(g[1], torch.tensor([3.0, 3.0]))  # the backup draw's row
    assert torch.equal(g[3], torch.tensor([1.0, 0.0]))  # zero in both draws: e_1
    assert torch.equal(g[0], torch.tensor([2.0, 2.0]))
    assert torch.allclose(norm, torch.linalg.vector_norm(g, dim=1)) and bool((norm > 0).all())
    draws_seen.clear()
    g, norm = draws.nonzero_normal(5, 4, generator=None, device=torch.device("cpu"), dtype=torch.float32)
    assert len(draws_seen) == 1 and torch.equal(g[1], torch.tensor([1.0, 0, 0, 0]))
    assert torch.allclose(norm, torch.linalg.vector_norm(g, dim=1))
