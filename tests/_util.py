"""Shared helpers for the tests (importable because pytest puts tests/ on sys.path via rootdir conftest)."""
import os

import torch
from conftest import rel_err_rows  # noqa: F401

import fastflow

FAMILIES = {
    "poisson1": lambda: fastflow.Poisson(D=1),
    "poisson128": lambda: fastflow.Poisson(D=128),
    "gaussian": lambda: fastflow.Gaussian(),
    "tanh": lambda: fastflow.RadialCDF("tanh"),
    "exp": lambda: fastflow.RadialCDF("exp"),
    "rf": lambda: fastflow.RectifiedFlow(),
}


def make_problem(fam, B, R, d, t_rel, *, own=True, gen=None, dtype=torch.float32):
    """ref ~ U(-1, 1)^d (pixel-like); t = t_rel * data scale (rms distance to the mean).

    own=True draws x_i near ref[i % R] at distance ~t (as in training: the source is in ref);
    own=False draws x uniformly in the same box (a query far from the data at small t).
    For RectifiedFlow t_rel is t itself, and x = (1 - t) ref_i + t eps.
    """
    ref = torch.rand(R, d, generator=gen, dtype=torch.float64) * 2 - 1
    idx = torch.arange(B) % R
    if isinstance(fam, fastflow.RectifiedFlow):
        t = float(t_rel)
        eps = torch.randn(B, d, generator=gen, dtype=torch.float64)
        x = (1 - t) * ref[idx] + t * eps if own else torch.rand(B, d, generator=gen, dtype=torch.float64) * 2 - 1
    else:
        scale = float(ref.std() * d ** 0.5) if R > 1 else d ** 0.5 / 3 ** 0.5
        t = float(t_rel) * scale
        if own:
            x = ref[idx] + t * torch.randn(B, d, generator=gen, dtype=torch.float64) / d ** 0.5
        else:
            x = torch.rand(B, d, generator=gen, dtype=torch.float64) * 2 - 1
    return x.to(dtype), t, ref.to(dtype)


#: Where the fast backends run: "cpu" (Triton under its interpreter), or "cuda" on a GPU machine with
#: FASTFLOW_TEST_DEVICE=cuda (conftest then leaves TRITON_INTERPRET unset, so the kernels are compiled).
DEVICE = torch.device(os.environ.get("FASTFLOW_TEST_DEVICE", "cpu"))


def dev(*tensors):
    """The tensors on DEVICE (the float64 references stay on the CPU)."""
    out = tuple(v.to(DEVICE) if isinstance(v, torch.Tensor) else v for v in tensors)
    return out if len(out) > 1 else out[0]
