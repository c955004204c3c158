"""The one place that records which optional pieces are importable: Triton, the compiled extension, CUDA.

``import fastflow`` never fails for lack of any of them; a backend asked for explicitly but missing raises an
error that says how to get it.
"""
from __future__ import annotations

import importlib
import os

import torch

from . import config

#: results of the probes, filled on first use. A plain dict rather than functools.lru_cache: torch.compile traces
#: through a dict lookup, but not into an lru_cache wrapper.
_probed: dict[str, str | None] = {}


def reprobe() -> None:
    """Forget the cached probes: the next check imports again (after changing FASTFLOW_DISABLE_C, say)."""
    _probed.clear()


def _C_error() -> str | None:
    if "C" not in _probed:
        if config.disable_c():
            _probed["C"] = "disabled by FASTFLOW_DISABLE_C"
        else:
            try:
                importlib.import_module("fastflow._C")  # registers torch.ops.fastflow.* (TORCH_LIBRARY)
                _probed["C"] = None
            except Exception as e:  # ImportError, or an ABI mismatch surfacing as OSError
                _probed["C"] = f"{type(e).__name__}: {e}"
    return _probed["C"]


def has_C() -> bool:
    """True when the compiled extension ``fastflow._C`` loaded (its ops are in ``torch.ops.fastflow``)."""
    return _C_error() is None


def has_C_cuda() -> bool:
    """True when ``fastflow._C`` was compiled with its CUDA sources."""
    return has_C() and bool(getattr(importlib.import_module("fastflow._C"), "WITH_CUDA", False))


def _triton_error() -> str | None:
    if "triton" not in _probed:
        try:
            import triton
            import triton.language  # noqa: F401

            _probed["triton"] = None
        except Exception as e:
            _probed["triton"] = f"{type(e).__name__}: {e}"
    return _probed["triton"]


def has_triton() -> bool:
    return _triton_error() is None


def triton_interpret() -> bool:
    """Triton's interpreter runs kernels on CPU tensors (TRITON_INTERPRET=1; the tests use it)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_usable_on(device: torch.device) -> bool:
    if not has_triton():
        return False
    return device.type == "cuda" or (device.type == "cpu" and triton_interpret())


def require_C():
    if not has_C():
        raise RuntimeError(
            "fastflow._C (the compiled extension) is not available "
            f"({_C_error()}). Build it from the source tree with `pip install --no-build-isolation -e .` "
            "(torch must be importable; a C++ compiler is needed, and nvcc for the CUDA parts)."
        )


def require_triton(device: torch.device):
    if not has_triton():
        raise RuntimeError(f"the triton backend needs Triton ({_triton_error()}): `pip install triton`.")
    if not triton_usable_on(device):
        raise RuntimeError(
            f"the triton backend runs on CUDA tensors; got a {device.type} tensor. On the CPU it runs only "
            "under Triton's interpreter (set TRITON_INTERPRET=1 before importing triton), which is for tests."
        )


def backends() -> dict:
    """What this installation can run: the field backends, the compiled extension, Triton, CUDA and versions.

    Returns:
        dict with keys ``"field_backends"`` (list of usable backend names for CPU and CUDA tensors),
        ``"C"``, ``"C_cuda"``, ``"triton"``, ``"cuda"``, ``"devices"``, ``"torch"``, ``"triton_version"``,
        and ``"C_error"`` / ``"triton_error"`` with the reason when one is missing.
    """
    info = {
        "C": has_C(),
        "C_cuda": has_C_cuda(),
        "triton": has_triton(),
        "triton_interpret": triton_interpret(),
        "cuda": torch.cuda.is_available(),
        "devices": ["cpu"] + [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())],
        "torch": torch.__version__,
        "triton_version": None,
        "C_error": _C_error(),
        "triton_error": _triton_error(),
    }
    if info["triton"]:
        import triton

        info["triton_version"] = triton.__version__
    names = ["reference", "torch"]
    if info["triton"] and (info["cuda"] or info["triton_interpret"]):
        names.append("triton")
    info["field_backends"] = names
    return info
