"""Autograd through the exact field (issue 12 §3): posterior_mean (xbar and log_norm), velocity (AffinePath's too)
and the targets are differentiable in x, t and ref, with the backward streamed over chunks of the reference set
(fastflow/field/autograd.py).

- torch.autograd.gradcheck in float64 on small sizes, several chunks, for every family and path;
- the streamed backward against autograd of the float64 reference backend (direct differences), for several chunk
  sizes, strided inputs, float32 (the measured error is printed), B = 0, the targets and the gradient of ref;
- the path where nothing requires grad does not touch the autograd Function; the backward reads nothing on the
  host; torch.compile with a gradient;
- measurements (printed, not asserted): peak memory of forward and backward, and their times at
  (B, R, d) = (128, 1024, 3072).
"""
import functools
import time
import weakref

import pytest
import torch
from _util import rel_err_rows
from torch.utils._python_dispatch import TorchDispatchMode

import fastflow
from fastflow import schedulers as S
from fastflow._core import dispatch, loader
from fastflow._core import validate as V
from fastflow.field import autograd as AG

F64 = torch.float64

FAMILIES = {
    "poisson1": lambda: fastflow.Poisson(D=1),
    "poisson5": lambda: fastflow.Poisson(D=5),
    "gaussian": lambda: fastflow.Gaussian(),
    "tanh": lambda: fastflow.RadialCDF("tanh"),
    "exp": lambda: fastflow.RadialCDF("exp"),
    "rf": lambda: fastflow.RectifiedFlow(),
    "condot": lambda: fastflow.AffinePath(S.CondOT()),
    "cosine": lambda: fastflow.AffinePath(S.Cosine()),
    "vp": lambda: fastflow.AffinePath(S.VP()),
    "studentt3": lambda: fastflow.AffinePath(S.Cosine(), fastflow.StudentT(3)),
}
BOUNDED = ("rf", "condot", "cosine", "vp", "studentt3")  # t in (0, 1]


def _problem(name, B=4, R=9, d=3, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(R, d, generator=g, dtype=F64)
    x = ref[torch.arange(B) % R] + 0.4 * torch.randn(B, d, generator=g, dtype=F64)
    if name in BOUNDED:
        t = torch.rand(B, generator=g, dtype=F64) * 0.5 + 0.3
    else:
        t = torch.rand(B, generator=g, dtype=F64) * 0.6 + 0.4
    return x.to(dtype), t.to(dtype), ref.to(dtype)


def _paths():
    """The torch backend with the C++ epilogue (where built) and without it (the pure-torch step)."""
    out = [pytest.param(False, id="torch-pure")]
    if loader.has_C():
        out.append(pytest.param(True, id="torch-C"))
    return out


@pytest.fixture(params=_paths())
def engine(request, monkeypatch):
    if not request.param:
        monkeypatch.setattr(dispatch, "has_C", lambda: False)
    return request.param


# ---------------------------------------------------------------------------------------------------------------
# gradcheck: float64, several chunks

@pytest.mark.parametrize("name", list(FAMILIES))
def test_gradcheck_posterior_mean_and_velocity(name, engine):
    fam = FAMILIES[name]()
    x, t, ref = _problem(name)
    x.requires_grad_(True)
    t.requires_grad_(True)

    def pm(x, t):
        xbar, st = fam.posterior_mean(x, t, ref, return_stats=True, chunk_size=3)
        return xbar, st.log_norm

    assert torch.autograd.gradcheck(pm, (x, t))
    assert torch.autograd.gradcheck(lambda x, t: fam.velocity(x, t, ref, chunk_size=4), (x, t))


@pytest.mark.parametrize("name", ["poisson5", "gaussian", "tanh", "exp", "rf", "vp", "studentt3"])
def test_gradcheck_ref(name):
    """Gradients with respect to the reference set too (two passes: the row statistics, then the gradients)."""
    fam = FAMILIES[name]()
    x, t, ref = _problem(name)
    args = (x.requires_grad_(True), t.requires_grad_(True), ref.requires_grad_(True))

    def pm(x, t, ref):
        xbar, st = fam.posterior_mean(x, t, ref, return_stats=True, chunk_size=4)
        return xbar, st.log_norm

    assert torch.autograd.gradcheck(pm, args)


@pytest.mark.parametrize("name", ["pfgm", "pfgmpp", "stf"])
def test_gradcheck_targets(name):
    x, t, ref = _problem("gaussian")
    fn = {"pfgm": lambda x, s: fastflow.pfgm.target(x, s, ref, chunk_size=3),
          "pfgmpp": lambda x, s: fastflow.pfgmpp_target(x, s, ref, D=7, chunk_size=3),
          "stf": lambda x, s: fastflow.stf_target(x, s, ref, chunk_size=3)}[name]
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(True), t.requires_grad_(True)))
    assert torch.autograd.gradcheck(lambda x: fn(x, 0.7), (x,))  # a Python float time


def test_gradcheck_scalar_tensor_time():
    """A 0-d t is broadcast to the rows; its gradient is their sum."""
    x, _, ref = _problem("poisson5")
    t = torch.tensor(0.6, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, t: fastflow.Poisson(2).velocity(x, t, ref, chunk_size=3),
                                    (x.requires_grad_(True), t))


# ---------------------------------------------------------------------------------------------------------------
# the streamed backward against autograd of the float64 reference (direct differences)

def _grads(fn, x, t, ref, G, wrt=("x", "t")):
    """d <G, fn(x, t, ref)> / d (inputs in wrt), fn's outputs a tuple (xbar-like, log_norm-like) or one tensor."""
    ins = {"x": x.detach().clone().requires_grad_("x" in wrt), "t": t.detach().clone().requires_grad_("t" in wrt),
           "ref": ref.detach().clone().requires_grad_("ref" in wrt)}
    out = fn(ins["x"], ins["t"], ins["ref"])
    out = out if isinstance(out, tuple) else (out,)
    loss = sum((o.double() * w).sum() for o, w in zip(out, G))
    return torch.autograd.grad(loss, [ins[k] for k in wrt])


def _upstream(B, shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, *shape, generator=g, dtype=F64), torch.randn(B, generator=g, dtype=F64)


def _rel(a, b):
    """Relative error of a whole gradient (a t or ref gradient is one vector)."""
    return float(torch.linalg.vector_norm(a.double() - b) / torch.linalg.vector_norm(b).clamp_min(1e-300))


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("chunk", [1, 5, None], ids=["chunk1", "chunk5", "budget"])
def test_streamed_backward_matches_reference_autograd(name, chunk, engine):
    fam = FAMILIES[name]()
    x, t, ref = _problem(name, B=6, R=23, d=7)
    G = _upstream(6, (7,))

    def pm(backend, chunk_size):
        def f(x, t, ref):
            xbar, st = fam.posterior_mean(x, t, ref, return_stats=True, backend=backend, chunk_size=chunk_size)
            return xbar, st.log_norm
        return f

    wrt = ("x", "t", "ref")
    want = _grads(pm("reference", None), x, t, ref, G, wrt)
    got = _grads(pm("torch", chunk), x, t, ref, G, wrt)
    for k, a, b in zip(wrt, got, want):
        assert a.shape == b.shape and a.dtype == F64, k
        assert rel_err_rows(a, b) < 1e-10 if k == "x" else _rel(a, b) < 1e-10, (k, _rel(a, b))
    # the velocity (for an affine path the scheduler's coefficients carry t too)
    gv = (G[0],)
    want = _grads(lambda x, t, ref: fam.velocity(x, t, ref, backend="reference"), x, t, ref, gv)
    got = _grads(lambda x, t, ref: fam.velocity(x, t, ref, chunk_size=chunk), x, t, ref, gv)
    assert rel_err_rows(got[0], want[0]) < 1e-10 and _rel(got[1], want[1]) < 1e-10


@pytest.mark.parametrize("two_pass", [False, True], ids=["one-pass", "two-pass"])
def test_both_backward_modes_in_float64(two_pass):
    """field_backward's two modes (one pass: the float64 default; two: float32's and ref's) agree with the
    reference in float64, with several chunks and a path scale."""
    for name in ("poisson5", "tanh", "vp"):
        fam = FAMILIES[name]()
        x, t, ref = _problem(name, B=5, R=19, d=4)
        d = 4
        tt = fam.noise_scale(t)
        a = fam.path_scale(t)
        kind, p, q = fam.weight_params(d)
        xbar, log_norm, _ = fastflow.field._run(x, tt, ref, a=a, params=(kind, p, q),
                                                log_weight_ref=fam.reference_log_weight(d), backend="reference")
        G, g = _upstream(5, (4,), seed=11)
        gx, gt, ga, _ = AG.field_backward(x, ref, tt, a, xbar, G, g, kind, p, q, chunk_size=3, two_pass=two_pass)
        xs, ts, as_ = (v.clone().requires_grad_(True) for v in (x, tt, a))
        wb, wl, _ = fastflow.field._run(xs, ts, ref, a=as_, params=(kind, p, q),
                                        log_weight_ref=fam.reference_log_weight(d), backend="reference")
        want = torch.autograd.grad((wb * G).sum() + (wl * g).sum(), (xs, ts, as_), allow_unused=True,
                                   materialize_grads=True)
        assert rel_err_rows(gx, want[0]) < 1e-10 and _rel(gt, want[1]) < 1e-10, name
        if name == "vp":
            assert _rel(ga, want[2]) < 1e-10


def test_strided_and_multidimensional_inputs():
    """Column-major x, a strided slice of a larger tensor, and (B, 2, 3) points give the contiguous answer."""
    fam = fastflow.Poisson(D=3)
    g = torch.Generator().manual_seed(3)
    ref = torch.randn(17, 2, 3, generator=g, dtype=F64)
    base = ref[:5] + 0.3 * torch.randn(5, 2, 3, generator=g, dtype=F64)
    t = torch.rand(5, generator=g, dtype=F64) + 0.5
    G = (torch.randn(5, 2, 3, generator=g, dtype=F64),)
    want = _grads(lambda x, t, ref: fam.velocity(x, t, ref, backend="reference"), base, t, ref, G)
    col = base.reshape(5, 6).t().contiguous().t().reshape(5, 2, 3)          # column-major rows (a view)
    wide = torch.zeros(5, 2, 6, dtype=F64)
    wide[:, :, ::2] = base
    for xin in (col, wide[:, :, ::2]):                                       # and every other element
        xg = xin.detach().requires_grad_(True)  # a leaf with xin's strides
        assert not xg.is_contiguous()
        tg = t.clone().requires_grad_(True)
        out = fam.velocity(xg, tg, ref, chunk_size=4)
        gx, gt = torch.autograd.grad((out * G[0]).sum(), (xg, tg))
        assert rel_err_rows(gx, want[0]) < 1e-12 and _rel(gt, want[1]) < 1e-12


@pytest.mark.parametrize("name", ["poisson1", "poisson128", "gaussian", "tanh", "exp", "rf", "cosine"])
def test_float32_against_float64(name, monkeypatch):
    """float32 computes its gradient in float32; against the float64 reference the worst row is printed (and held
    to 2x the error of plain float32 autograd through the direct-difference formula, or 1e-5: pixel-like data,
    t at 0.3 of the data scale, queries near their source, where one point carries most of the weight)."""
    fam = fastflow.Poisson(D=128) if name == "poisson128" else FAMILIES[name]()
    B, R, d = 16, 256, 192
    g = torch.Generator().manual_seed(4)
    ref = torch.rand(R, d, generator=g, dtype=F64) * 2 - 1
    if name in BOUNDED:
        t = torch.full((B,), 0.3, dtype=F64)
        x = (1 - t[:, None]) * ref[:B] + t[:, None] * torch.randn(B, d, generator=g, dtype=F64)
    else:
        scale = float(ref.std() * d ** 0.5)
        t = torch.full((B,), 0.3 * scale, dtype=F64)
        x = ref[:B] + t[:, None] * torch.randn(B, d, generator=g, dtype=F64) / d ** 0.5
    G = _upstream(B, (d,), seed=5)

    def pm(backend):
        def f(x, t, ref):
            xbar, st = fam.posterior_mean(x, t, ref, return_stats=True, backend=backend, chunk_size=64)
            return xbar, st.log_norm
        return f

    want = _grads(pm("reference"), x, t, ref, G)
    got = _grads(pm("torch"), x.float(), t.float(), ref.float(), G)
    plain = _grads(pm("reference"), x.float(), t.float(), ref.float(), G)  # plain fp32 autograd, for scale
    ex, et = rel_err_rows(got[0], want[0]), _rel(got[1], want[1])
    px, pt = rel_err_rows(plain[0], want[0]), _rel(plain[1], want[1])
    with monkeypatch.context() as m:  # the one-pass backward (the float64 default), for comparison
        m.setattr(AG, "field_backward", functools.partial(AG.field_backward, two_pass=False))
        one = _grads(pm("torch"), x.float(), t.float(), ref.float(), G)
    print(f"{name}: float32 streamed backward vs float64 reference: grad_x worst row {ex:.2e}, grad_t {et:.2e} "
          f"(plain fp32 autograd of the direct formula: {px:.2e}, {pt:.2e}; one pass: "
          f"{rel_err_rows(one[0], want[0]):.2e}, {_rel(one[1], want[1]):.2e})")
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    assert ex < max(2 * px, 1e-5) and et < max(2 * pt, 1e-5)


def test_memorising_regime_in_float32():
    """Where one reference point carries nearly all the weight (ess ~ 1), the gradient of xbar is a covariance
    that is exponentially small, and beta_j = w_j G . (y_j - xbar) cancels: float32 resolves it only to
    ~eps |G| |y| / |grad|. The streamed backward is held to the error of plain float32 autograd through the
    direct-difference formula (flash-attention's rule), which it beats by far; both are printed."""
    x, t, ref = _problem("gaussian", B=6, R=40, d=10)
    fam = fastflow.Poisson(D=16)
    t = 4.0 * t  # PFGM++ radius sigma sqrt(D): ess 1.0000 to 1.016 here
    G = (2.0 * fam.posterior_mean(x, t, ref),)  # the gradient of ||xbar||^2

    def f(backend):
        return lambda x, t, ref: fam.posterior_mean(x, t, ref, backend=backend)

    want = _grads(f("reference"), x, t, ref, G)
    fast = _grads(f("torch"), x.float(), t.float(), ref.float(), G)
    plain = _grads(f("reference"), x.float(), t.float(), ref.float(), G)
    ef, ep = rel_err_rows(fast[0], want[0]), rel_err_rows(plain[0], want[0])
    print(f"memorising (ess ~ 1), float32 grad_x worst row: streamed {ef:.2e}, plain fp32 autograd {ep:.2e}")
    assert ef <= 2 * ep and _rel(fast[1], want[1]) <= 2 * _rel(plain[1], want[1])


def test_half_precision_gradient_dtype():
    x, t, ref = _problem("gaussian", B=4, R=30, d=8, dtype=torch.float16)
    xg = x.requires_grad_(True)
    (gx,) = torch.autograd.grad(fastflow.Gaussian().posterior_mean(xg, 0.8, ref).float().sum(), xg)
    assert gx.dtype == torch.float16 and torch.isfinite(gx).all()
    want = _grads(lambda x, t, ref: fastflow.Gaussian().posterior_mean(x, 0.8, ref, backend="reference"),
                  x.double(), t.double(), ref.double(), (torch.ones(4, 8, dtype=F64),), ("x",))
    assert rel_err_rows(gx, want[0]) < 3e-3


def test_empty_batch():
    ref = torch.randn(10, 3, dtype=F64)
    x = torch.zeros(0, 3, dtype=F64, requires_grad=True)
    t = torch.zeros(0, dtype=F64, requires_grad=True)
    for fn in (lambda: fastflow.Poisson(1).velocity(x, t, ref), lambda: fastflow.stf_target(x, t, ref),
               lambda: fastflow.pfgm.target(x, t, ref), lambda: fastflow.AffinePath(S.VP()).velocity(x, t, ref)):
        out = fn()
        gx, gt = torch.autograd.grad(out.sum(), (x, t), allow_unused=True, materialize_grads=True)
        assert gx.shape == (0, 3) and gt.shape == (0,)


@pytest.mark.parametrize("name", ["pfgm", "pfgmpp", "stf"])
def test_targets_match_reference(name):
    x, t, ref = _problem("gaussian", B=5, R=31, d=6)
    fn = {"pfgm": fastflow.pfgm.target, "stf": fastflow.stf_target,
          "pfgmpp": lambda *a, **k: fastflow.pfgmpp_target(*a, D=11, **k)}[name]
    G = (torch.randn(5, 7 if name == "pfgm" else 6, dtype=F64),)
    want = _grads(lambda x, t, ref: fn(x, t, ref, backend="reference"), x, t, ref, G)
    for chunk in (2, None):
        got = _grads(lambda x, t, ref: fn(x, t, ref, chunk_size=chunk), x, t, ref, G)
        assert rel_err_rows(got[0], want[0]) < 1e-10 and _rel(got[1], want[1]) < 1e-10


def test_coincident_points_give_finite_gradients():
    """x on a reference point (the radial kinds' r^-(d-1) is clamped there) and tiny t: finite, never NaN."""
    g = torch.Generator().manual_seed(6)
    ref = torch.randn(12, 5, generator=g)
    for fam in (fastflow.RadialCDF("tanh"), fastflow.RadialCDF("exp"), fastflow.Poisson(1), fastflow.Gaussian()):
        for dt, tv in ((torch.float32, 1e-3), (F64, 1e-3), (F64, 1e-20)):
            x = ref[:4].to(dt).clone().requires_grad_(True)
            t = torch.full((4,), tv, dtype=dt, requires_grad=True)
            xbar, st = fam.posterior_mean(x, t, ref.to(dt), return_stats=True)
            gx, gt = torch.autograd.grad((xbar.sum() + st.log_norm.sum()), (x, t))
            assert torch.isfinite(gx).all() and torch.isfinite(gt).all(), (fam, dt, tv)


# ---------------------------------------------------------------------------------------------------------------
# what must not change: the path without grad, host reads, torch.compile, other backends

def test_no_grad_path_does_not_use_the_function(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the autograd Function ran although nothing needs a gradient")

    monkeypatch.setattr(AG, "field_grad", boom)
    x, t, ref = _problem("poisson5")
    fastflow.Poisson(5).velocity(x, t, ref)
    fastflow.pfgm.target(x, t, ref)
    xg = x.clone().requires_grad_(True)
    with torch.no_grad():
        out = fastflow.Poisson(5).velocity(xg, t, ref)
    with torch.inference_mode():
        fastflow.stf_target(xg, t, ref)
    assert not out.requires_grad
    with pytest.raises(AssertionError, match="autograd Function ran"):
        fastflow.Poisson(5).velocity(xg, t, ref)


class _CountReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten._local_scalar_dense, torch.ops.aten.item,
                                   torch.ops.aten.is_nonzero, torch.ops.aten.equal):
            self.n += 1
        return func(*args, **(kwargs or {}))


def test_backward_reads_nothing_on_the_host(monkeypatch):
    """The backward takes the device branch everywhere (always centred): no value crosses to the host."""
    monkeypatch.setattr(V, "reads_are_free", lambda device: False)
    x, t, ref = _problem("rf", B=5, R=40, d=6, dtype=torch.float32)
    xg, tg = x.requires_grad_(True), t.requires_grad_(True)
    with fastflow.set_validate_args(False):
        out = fastflow.RectifiedFlow().velocity(xg, tg, ref, chunk_size=16)
    with _CountReads() as mode:
        out.sum().backward()
    assert mode.n == 0 and xg.grad is not None and tg.grad is not None


def test_compile_with_gradient():
    """A compiled call whose input requires grad traces the autograd Function and agrees with eager mode."""
    torch._dynamo.reset()
    x, t, ref = _problem("gaussian", B=6, R=40, d=10, dtype=torch.float32)
    t = t + 1.0  # ess > 1: a gradient float32 resolves (see test_memorising_regime_in_float32)

    def loss(x, t):
        return (fastflow.pfgmpp_target(x, t, ref, D=16) ** 2).sum()

    def grads(fn, dtype):
        xi, ti = x.to(dtype).requires_grad_(True), t.to(dtype).requires_grad_(True)
        return torch.autograd.grad(fn(xi, ti), (xi, ti))

    want = grads(lambda x, t: (fastflow.pfgmpp_target(x, t, ref.double(), D=16, backend="reference") ** 2).sum(),
                 F64)
    eager = grads(loss, torch.float32)
    compiled = grads(torch.compile(loss, fullgraph=True, backend="aot_eager"), torch.float32)
    for got in (eager, compiled):  # compiled, the forward always centres: not bitwise eager's, as accurate
        assert rel_err_rows(got[0], want[0]) < 1e-4 and _rel(got[1], want[1]) < 1e-4


@pytest.mark.skipif(not loader.has_triton(), reason="Triton is not installed")
def test_triton_forward_with_streamed_backward():
    x, t, ref = _problem("poisson5", B=5, R=70, d=9, dtype=torch.float32)
    G = _upstream(5, (9,), seed=7)

    def pm(backend):
        def f(x, t, ref):
            xbar, st = fastflow.Poisson(5).posterior_mean(x, t, ref, return_stats=True, backend=backend,
                                                         chunk_size=32)
            return xbar, st.log_norm
        return f

    want = _grads(pm("reference"), x.double(), t.double(), ref.double(), G)
    got = _grads(pm("triton"), x, t, ref, G)
    assert rel_err_rows(got[0], want[0]) < 1e-4 and _rel(got[1], want[1]) < 1e-4


# ---------------------------------------------------------------------------------------------------------------
# measurements: memory and time (printed, not asserted)

class _PeakMemory(TorchDispatchMode):
    """Live bytes of the storages that ops create while the mode is on (inputs made before it are not counted):
    each new storage is counted until its last tensor is freed."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.largest = 0
        self._seen = set()

    def _free(self, key, n):
        self._seen.discard(key)
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(a, torch.Tensor)}  # a view or an in-place op allocates nothing
        for v in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(v, torch.Tensor) and v.device.type == "cpu":
                st = v.untyped_storage()
                key = st.data_ptr()
                if key and key not in self._seen and key not in inputs:
                    n = st.nbytes()
                    self._seen.add(key)
                    self.live += n
                    self.largest = max(self.largest, n)
                    weakref.finalize(v, self._free, key, n)
        self.peak = max(self.peak, self.live)
        return out


def test_measure_memory_of_backward():
    B, R, d = 64, 4096, 1024
    g = torch.Generator().manual_seed(8)
    ref = torch.rand(R, d, generator=g) * 2 - 1
    x = (ref[:B] + 0.2 * torch.randn(B, d, generator=g)).requires_grad_(True)
    t = torch.full((B,), 3.0)
    fam = fastflow.Poisson(D=1)
    with torch.no_grad(), _PeakMemory() as fwd:
        fam.velocity(x, t, ref, chunk_size=512)
    with _PeakMemory() as both:
        out = fam.velocity(x, t, ref, chunk_size=512)
        out.backward(torch.ones_like(out))
    mb = 2.0 ** 20
    print(f"\n(B, R, d) = ({B}, {R}, {d}) float32, chunk 512: forward peak {fwd.peak / mb:.1f} MiB (largest "
          f"tensor {fwd.largest / mb:.1f} MiB), forward + backward peak {both.peak / mb:.1f} MiB (largest tensor "
          f"{both.largest / mb:.1f} MiB); "
          f"B*d = {B * d * 4 / mb:.2f} MiB, chunk*d = {512 * d * 4 / mb:.2f} MiB, R*d = {R * d * 4 / mb:.1f} MiB, "
          f"a B x R x d tensor would be {B * R * d * 4 / mb:.0f} MiB")
    assert x.grad is not None


def test_measure_time_forward_and_backward():
    B, R, d = 128, 1024, 3072
    g = torch.Generator().manual_seed(9)
    ref = torch.rand(R, d, generator=g) * 2 - 1
    x0 = ref[:B] + 0.3 * torch.randn(B, d, generator=g)
    t = torch.full((B,), 5.0)
    fam = fastflow.Poisson(D=1)

    def fwd():
        with torch.no_grad():
            fam.velocity(x0, t, ref)

    def fwd_bwd():
        x = x0.clone().requires_grad_(True)
        fam.velocity(x, t, ref).sum().backward()

    def best(fn, n=5):
        fn()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    tf, tb = best(fwd), best(fwd_bwd)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(AG, "field_backward", functools.partial(AG.field_backward, two_pass=False))
        t1 = best(fwd_bwd)
    print(f"\n(B, R, d) = ({B}, {R}, {d}) float32 on {torch.get_num_threads()} threads: forward {tf * 1e3:.0f} ms, "
          f"forward + backward {tb * 1e3:.0f} ms ({tb / tf:.2f}x; one-pass backward {t1 * 1e3:.0f} ms, "
          f"{t1 / tf:.2f}x)")
