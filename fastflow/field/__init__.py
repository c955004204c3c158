"""The empirical-field engine: one computation behind every family (docs/math.md, "The one computation").

    xbar_i = sum_j softmax_j( l(||x_i - a_i ref_j||^2, t_i) ) ref_j

:func:`evaluate` validates the inputs, picks a backend and returns a :class:`FieldResult`. Three backends sit
behind it, each in its own module:

- ``reference`` (:mod:`.reference`): direct differences, obviously correct, for tests in float64.
- ``torch`` (:mod:`.torch_backend`): chunked GEMMs with an online log-sum-exp; any device; the default.
- ``triton`` (:mod:`.triton_backend`, kernels in :mod:`fastflow.kernels.field`): fused kernels; CUDA, opt-in.

The log-weights l of every family are in :mod:`.logweights`. Every device goes to ``torch`` by default. On an
H100 (benchmarks/results/field_H100.json) the torch backend ran the IEEE-fp32 field 2.0x faster than the Triton
kernels at CIFAR (128, 4096, 3072) and 2.2x at (512, 65536, 3072), 64% of the fp32 GEMM ceiling against 30%:
the Triton tiles are untuned, and their fp32 dot runs on the FMA units. ``FASTFLOW_BACKEND`` (or the
``backend=`` argument, which wins) overrides the choice.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

import torch

from .._core import dispatch, loader, nvtx
from .._core import validate as V
from .._core.dispatch import BACKENDS, PRECISIONS
from . import autograd as _autograd
from .reference import field_reference
from .torch_backend import field_torch

if loader.has_triton():  # registers torch.ops.fastflow.field_triton (a triton_op), so torch.compile finds it
    from .triton_backend import field_triton

__all__ = ["evaluate", "prepare", "Prepared", "FieldResult", "FieldStats", "Law", "BACKENDS", "PRECISIONS"]


class Law(Protocol):
    """What the engine needs of a family (:class:`fastflow.Family` implements it).

    ``weight_params(d)`` -> (kind, p, q) of :mod:`.logweights`; ``reference_log_weight(d)`` -> l(r2, t) written
    from the formula (for the reference backend); ``path_scale(t)`` -> a_t (B,); ``t_max``: the largest t or None.
    ``noise_scale(t)`` -> s_t (B,), the time the log-weight sees (t itself, but an affine path's sigma_t).
    """

    t_max: float | None

    def weight_params(self, d: int) -> tuple[int, float, float]: ...

    def reference_log_weight(self, d: int): ...

    def path_scale(self, t: torch.Tensor) -> torch.Tensor: ...

    def noise_scale(self, t: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class FieldStats:
    """Side outputs of one pass of the field.

    Attributes:
        log_norm: (B,) logsumexp_j of the log-weights: the log-density of the perturbed empirical
            distribution at x, up to a constant that depends only on t.
        ess: (B,) effective sample size 1 / sum_j w_j^2 of the normalised weights, in [1, R]. Near 1 means
            one reference point dominates (the field memorises); compare with R to judge the reference set.
    """

    log_norm: torch.Tensor
    ess: torch.Tensor


@dataclass(frozen=True)
class FieldResult:
    """What :func:`evaluate` returns: the posterior mean and what the families build from it.

    Attributes:
        xbar: (B, d) posterior mean E[x0 | x_t = x], in the compute dtype (float64, else float32).
        x: (B, d) the queries in the compute dtype.
        t: (B,) the validated times in the compute dtype.
        log_norm: (B,) logsumexp_j of the log-weights (see :class:`FieldStats`).
        ess: (B,) effective sample size.
        dtype: the result dtype of the call (x's and ref's dtype).
        shape: (B, *shape) the queries' shape.
        velocity: (B, d) the velocity where the engine forms it itself (a user's radial CDF,
            :mod:`.flux`), else None.
        divergence: (B,) its divergence where the pass formed it (:mod:`.flux` with ``div``), else None.
    """

    xbar: torch.Tensor
    x: torch.Tensor
    t: torch.Tensor
    log_norm: torch.Tensor
    ess: torch.Tensor
    dtype: torch.dtype
    shape: tuple[int, ...]
    velocity: torch.Tensor | None = None
    divergence: torch.Tensor | None = None

    @property
    def stats(self) -> FieldStats:
        return FieldStats(log_norm=self.log_norm, ess=self.ess)

    def output(self, v: torch.Tensor, what: str = "the result") -> torch.Tensor:
        """A (B, d) compute-dtype result as (B, *shape) in the call's dtype; FloatingPointError where it is not
        finite there (a velocity (x - xbar) / t at tiny t overflows float16 at 65504, say)."""
        out = v.to(self.dtype)
        V.require_finite(out, lambda: FloatingPointError(
            f"{what} overflows {self.dtype} (largest finite {torch.finfo(self.dtype).max:.4g}): "
            f"{'compute in float32 or float64, or ' if self.dtype.itemsize < 4 else ''}raise t"))
        return out.reshape(self.shape)


def evaluate(law: Law, x, t, ref, *, t_name: str = "t", backend: str | None = None, precision: str = "ieee",
             chunk_size: int | None = None, mean: bool = True) -> FieldResult:
    """The posterior mean of ``law``'s weights at (x, t) over the reference set ``ref``.

    Args:
        law: the family (its log-weight, path scale and time bound; see :class:`Law`).
        x: (B, *shape) queries.  t: float or (B,) tensor > 0 (named ``t_name`` in errors).
        ref: (R, *shape) reference points, R >= 1, the same dtype family and device as x.
        backend: "reference", "torch" or "triton"; None: by device (module docstring).
        precision: "ieee" (default), or the opt-in "tf32" (CUDA) / "bf16".
        chunk_size: reference rows per streaming step, a positive int (default: from a memory budget).
        mean: False when only log_norm is wanted (log-densities): the torch backend then skips the weighted-sum
            GEMM, half the work, and ``xbar`` may be None; the other routes compute it anyway.

    Returns:
        :class:`FieldResult`.
    """
    pre = prepare(law, x, t, ref, t_name=t_name, precision=precision, chunk_size=chunk_size)
    if pre.B == 0:
        return pre.empty()
    x2, ref2, tt, d, chunk_size = pre.x2, pre.ref2, pre.t, pre.d, pre.chunk_size
    # the log-weight's time is the noise scale s_t of x_t = a_t x0 + s_t rho g (t itself but for affine paths)
    xbar, log_norm, ess = _run(x2, law.noise_scale(tt), ref2, a=law.path_scale(tt), params=law.weight_params(d),
                               log_weight_ref=law.reference_log_weight(d), backend=backend, precision=precision,
                               chunk_size=chunk_size, mean=mean)
    check_finite(f"{law!r}", *(v for v in (xbar, log_norm) if v is not None))
    return pre.result(xbar, log_norm, ess)


@dataclass(frozen=True)
class Prepared:
    """A field call's validated inputs: x2 (B, d) and ref2 (R, d) flattened (same dtype and device), t (B,) in
    the compute dtype ``cdt``, the call's ``dtype`` and (B, *shape) ``shape``, the checked ``chunk_size``."""

    x2: torch.Tensor
    ref2: torch.Tensor
    t: torch.Tensor
    dtype: torch.dtype
    cdt: torch.dtype
    shape: tuple[int, ...]
    chunk_size: int | None

    @property
    def B(self) -> int:
        return self.x2.shape[0]

    @property
    def d(self) -> int:
        return self.x2.shape[1]

    def result(self, xbar, log_norm, ess, **extra) -> FieldResult:
        return FieldResult(xbar, self.x2.to(self.cdt), self.t, log_norm, ess, self.dtype, self.shape, **extra)

    def empty(self, **extra) -> FieldResult:
        """The B = 0 result; where x requires grad, on its graph (a loss over an empty batch still
        backpropagates). ``extra`` names the optional fields to fill with empty tensors too."""
        x = self.x2.to(self.cdt)
        z = torch.zeros(0, dtype=self.cdt, device=x.device)
        xbar = x * 0.0 if _autograd.needs_grad(self.x2) else x.new_zeros(0, self.d)
        fill = {"velocity": xbar, "divergence": z}
        return self.result(xbar, z, z, **{k: fill[k] for k in extra})


def prepare(law: Law, x, t, ref, *, t_name: str = "t", precision: str = "ieee",
            chunk_size: int | None = None) -> Prepared:
    """Validate a field call (the checks every engine shares, with their errors): x and ref points of the same
    dtype and device, the precision for the device, chunk_size, and t (> 0, at most ``law.t_max``)."""
    x2, ref2 = V.points_and_ref(x, ref)  # the same dtype and device (checked)
    cdt = dispatch.compute_dtype(x2.dtype)
    dispatch.precision(precision, x2.device)
    chunk_size = V.chunk_size("chunk_size", chunk_size)
    tt = V.times(t_name, t, x2.shape[0], dtype=cdt, device=x2.device, upper=law.t_max)
    return Prepared(x2, ref2, tt, x2.dtype, cdt, (x2.shape[0],) + tuple(x.shape[1:]), chunk_size)


@nvtx.annotate("fastflow.field")
def _run(x2, t, ref2, *, a, params, log_weight_ref, backend=None, precision="ieee", chunk_size=None, mean=True):
    """Run a backend on validated, flattened inputs: x2 (B, d), ref2 (R, d), t, a (B,) in the compute dtype.

    Returns (xbar (B, d), log_norm (B,), ess (B,)) in the compute dtype; xbar None where ``mean`` is False and
    the torch backend ran.
    """
    name = dispatch.select_backend(x2.device, backend)
    kind, p, q = params
    if name == "reference":
        cdt = dispatch.compute_dtype(x2.dtype)
        return field_reference(x2.to(cdt), ref2.to(cdt), t, a, log_weight_ref)
    if _autograd.needs_grad(x2, t, ref2, a):  # the engine as forward, a streamed backward (.autograd)
        run = functools.partial(_run, params=params, log_weight_ref=log_weight_ref, backend=name,
                                precision=precision, chunk_size=chunk_size)
        return _autograd.field_grad(lambda x_, t_, ref_, a_: run(x_, t_, ref_, a=a_), x2, t, ref2, a, kind, p, q,
                                    chunk_size)
    if name == "triton" and x2.dtype != torch.float64:
        if V.compiling() and x2.device.type != "cuda":
            raise NotImplementedError(
                "backend='triton' compiles only on CUDA: the Triton interpreter runs kernels eagerly but cannot "
                "trace them. Inside torch.compile on the CPU use backend='torch' (the default).")
        return field_triton(x2, ref2, t, a, kind, p, q, precision=precision, chunk_size=chunk_size)
    # float64 on CUDA goes to the torch backend (cuBLAS DGEMM): the Triton kernels accumulate in float32.
    return field_torch(x2, ref2, t, a, kind, p, q, precision=precision, chunk_size=chunk_size, mean=mean)


def check_finite(name: str, *tensors: torch.Tensor) -> None:
    """Raise instead of returning NaN or inf (nothing returns NaN silently); recorded, read with the call's other
    value checks (:func:`fastflow._core.validate.require`)."""
    for v in tensors:
        V.require_finite(v, lambda: FloatingPointError(
            f"{name}: the log-weights overflowed (non-finite result). t is too small for the distances "
            "in this data (e.g. r^2 / t^2 beyond the float range); rescale the data or raise t."))
