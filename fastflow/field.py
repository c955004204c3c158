"""The empirical-field engine: one computation behind every family (MATH.md §4).

    xbar_i = sum_j softmax_j( l(||x_i - a_i ref_j||^2, t_i) ) ref_j

Three backends sit behind one dispatch:

- ``reference``: direct differences (:mod:`fastflow._field_reference`), for tests in float64.
- ``torch``: chunked GEMMs with an online log-sum-exp (:mod:`fastflow._field_torch`); any device.
- ``triton``: fused kernels (:mod:`fastflow.kernels.field`, launched by :mod:`fastflow._field_triton`); CUDA.

Every device goes to ``torch`` by default; ``triton`` is an opt-in. On an H100 (benchmarks/results/field_H100.json)
the torch backend ran the IEEE-fp32 field 2.0x faster than the Triton kernels at CIFAR (128, 4096, 3072) and 2.2x
at (512, 65536, 3072), 64% of the fp32 GEMM ceiling against 30%: the Triton tiles are untuned, and their fp32 dot
runs on the FMA units. The environment variable ``FASTFLOW_BACKEND`` (or the ``backend=`` argument, which wins)
overrides the choice.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from . import _nvtx
from . import _loader
from . import _validate as V
from ._field_reference import field_reference
from ._field_torch import field_torch

if _loader.has_triton():  # registers torch.ops.fastflow.field_triton (a triton_op), so torch.compile finds it
    from ._field_triton import field_triton

BACKENDS = ("reference", "torch", "triton")
#: Dot-product precision. "ieee" (default) is true fp32; "tf32" and "bf16" are an explicit opt-in:
#: at d = 3072 the Poisson temperature (d+1)/2 = 1537 multiplies any relative error of r^2 by that much.
PRECISIONS = ("ieee", "tf32", "bf16")


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


def select_backend(device: torch.device, requested: str | None = None, *, prefer_triton: bool = False) -> str:
    """The backend for tensors on ``device``: ``requested``, else $FASTFLOW_BACKEND, else ``torch``, or ``triton``
    on CUDA where the caller's kernels measured faster there (``prefer_triton``: the ODE step updates, 1.3-1.8x
    on an H100; the field's Triton kernels did not, see the module docstring)."""
    name = requested if requested is not None else os.environ.get("FASTFLOW_BACKEND") or None
    if name is None:
        return "triton" if prefer_triton and device.type == "cuda" and _loader.has_triton() else "torch"
    V.choice("backend" if requested is not None else "FASTFLOW_BACKEND", name, BACKENDS)
    if name == "triton":
        _loader.require_triton(device)
    return name


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32, float16 and bfloat16 accumulate in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@_nvtx.annotate("fastflow.field")
def empirical_field(x2, t, ref2, *, a, params, log_weight_ref, backend=None, precision="ieee", chunk_size=None):
    """Run the engine on validated, flattened inputs.

    Args:
        x2: (B, d) queries.  ref2: (R, d) reference points (same dtype and device as x2).
        t: (B,) times in the compute dtype.  a: (B,) path scale (ones for the isotropic families).
        params: (kind, p, q) for the fast backends.  log_weight_ref: f(r2, t) for the reference backend.

    Returns:
        (xbar, log_norm, ess): (B, d), (B,), (B,) in the compute dtype.
    """
    V.choice("precision", precision, PRECISIONS)
    name = select_backend(x2.device, backend)
    kind, p, q = params
    if name == "reference":
        cdt = compute_dtype(x2.dtype)
        return field_reference(x2.to(cdt), ref2.to(cdt), t, a, log_weight_ref)
    if name == "triton" and x2.dtype != torch.float64:
        if V.compiling() and x2.device.type != "cuda":
            raise NotImplementedError(
                "backend='triton' compiles only on CUDA: the Triton interpreter runs kernels eagerly but cannot "
                "trace them. Inside torch.compile on the CPU use backend='torch' (the default).")
        return field_triton(x2, ref2, t, a, kind, p, q, precision=precision, chunk_size=chunk_size)
    # float64 on CUDA goes to the torch backend (cuBLAS DGEMM): the Triton kernels accumulate in float32.
    return field_torch(x2, ref2, t, a, kind, p, q, precision=precision, chunk_size=chunk_size)


def check_finite(name: str, *tensors: torch.Tensor) -> None:
    """Raise instead of returning NaN or inf (API.md: nothing returns NaN silently)."""
    for v in tensors:
        if not V.all_finite(v):
            raise FloatingPointError(
                f"{name}: the log-weights overflowed (non-finite result). t is too small for the distances "
                "in this data (e.g. r^2 / t^2 beyond the float range); rescale the data or raise t."
            )

