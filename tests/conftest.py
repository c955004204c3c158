"""Test configuration: Triton runs in interpreter mode on the CPU, and every test starts from a fixed seed.

TRITON_INTERPRET must be set before triton is first imported (any @triton.jit decoration reads it).
"""
import os

if os.environ.get("FASTFLOW_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from fastflow._core import loader as _loader

if _loader.has_triton():
    # Decorate the kernels now, while TRITON_INTERPRET=1: a test that flips the variable later must not
    # be the first to import them (triton picks interpreter or compiler at decoration time).
    import fastflow.kernels.field
    import fastflow.kernels.ode  # noqa: F401


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny tensors (``pytestmark = pytest.mark.usefixtures("one_thread")``): torch's intra-op
    pool only adds synchronisation there, which on 2 shared cores under load took such a file from 4 s to 13-33 s.
    The thread count is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def rel_err_rows(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Worst row of ||out - ref|| / ||ref||, in float64 (STYLE.md §5)."""
    out = out.reshape(out.shape[0], -1).double().cpu()
    ref = ref.reshape(ref.shape[0], -1).double()
    num = torch.linalg.vector_norm(out - ref, dim=1)
    den = torch.linalg.vector_norm(ref, dim=1).clamp_min(1e-300)
    return float((num / den).max()) if out.shape[0] else 0.0
