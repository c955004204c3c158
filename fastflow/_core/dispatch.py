"""Where a computation runs and in what precision: the backend choice, the compute dtype and the matmul precision.

Every fast path of fastflow (the field engine, the ODE step updates, the step-size control) asks this module,
so that the rules below hold everywhere:

- backend: the ``backend=`` argument, else ``FASTFLOW_BACKEND``, else ``torch`` (``triton`` on CUDA for callers
  whose Triton kernels measured faster there, ``prefer_triton``);
- compute dtype: float64 stays float64; float32, float16 and bfloat16 accumulate in float32;
- matmul precision: IEEE fp32 unless a caller opts in to tf32 on CUDA, without leaving the process-wide flag
  changed (even when threads call concurrently).
"""
from __future__ import annotations

import contextlib
import threading

import torch

from . import config, loader
from . import validate as V

BACKENDS = ("reference", "torch", "triton")
#: Dot-product precision. "ieee" (default) is true fp32; "tf32" (CUDA only) and "bf16" are an explicit opt-in:
#: at d = 3072 the Poisson temperature (d+1)/2 = 1537 multiplies any relative error of r^2 by that much.
PRECISIONS = ("ieee", "tf32", "bf16")


def select_backend(device: torch.device, requested: str | None = None, *, prefer_triton: bool = False) -> str:
    """The backend for tensors on ``device``: ``requested``, else $FASTFLOW_BACKEND, else ``torch``, or ``triton``
    on CUDA where the caller's kernels measured faster there (``prefer_triton``: the ODE step updates, 1.3-1.8x
    on an H100; the field's Triton kernels did not, see :mod:`fastflow.field`)."""
    if requested is not None:
        name = V.choice("backend", requested, BACKENDS)
    else:
        name = config.backend(BACKENDS)
    if name is None:
        return "triton" if prefer_triton and device.type == "cuda" and loader.has_triton() else "torch"
    if name == "triton":
        loader.require_triton(device)
    return name


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; float32, float16 and bfloat16 accumulate in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def precision(value, device: torch.device) -> str:
    """Check ``precision=``: one of :data:`PRECISIONS`; "tf32" only on CUDA (the CPU has no tf32 matmul)."""
    V.choice("precision", value, PRECISIONS)
    if value == "tf32" and device.type != "cuda":
        raise ValueError(f"precision='tf32' needs CUDA tensors (tf32 is a GPU matmul mode), got {device.type} "
                         "tensors; use 'ieee' (the default) or 'bf16'")
    return value


@torch.compiler.assume_constant_result
def has_C() -> bool:
    """loader.has_C(), fixed per process for torch.compile (which cannot trace the import behind the probe)."""
    return loader.has_C()


def use_ext(v: torch.Tensor, allowed: bool = True) -> bool:
    """Whether a C++ CPU op serves ``v``: a CPU tensor, with fastflow._C built."""
    return allowed and v.device.type == "cpu" and has_C()


#: Serialises the changes of torch's process-wide CUDA matmul flag: with two threads asking for "tf32" and "ieee",
#: unsynchronised save / set / restore pairs interleave and can leave the flag at the other thread's value.
_MATMUL_LOCK = threading.RLock()


def _flag_value(precision: str) -> str:
    return "tf32" if precision == "tf32" else "ieee"


@contextlib.contextmanager
def fp32_matmul_precision(precision: str, device: torch.device | None = None):
    """Run the block's CUDA float32 matmuls in IEEE fp32 (``"ieee"``, ``"bf16"``) or tf32 (``"tf32"``).

    CPU tensors (``device`` not CUDA) use IEEE fp32 whatever the flag: nothing is touched. On CUDA the flag is
    changed only where it differs from what the block needs, under a lock held for the block, and restored after:
    the process's setting is what it was before, also when threads call concurrently. While torch.compile traces,
    the process's setting stays (a graph cannot flip a global flag): IEEE unless the user chose otherwise.
    """
    if V.compiling() or (device is not None and device.type != "cuda"):
        yield
        return
    m = torch.backends.cuda.matmul
    want = _flag_value(precision)
    if hasattr(m, "fp32_precision"):  # torch >= 2.9
        def get():
            return m.fp32_precision

        def put(v):
            m.fp32_precision = v
    else:  # pragma: no cover - older torch
        def get():
            return "tf32" if m.allow_tf32 else "ieee"

        def put(v):
            m.allow_tf32 = v == "tf32"
    with _MATMUL_LOCK:
        prev = get()
        if prev == want:
            yield
            return
        put(want)
        try:
            yield
        finally:
            put(prev)
