"""The bundled data of the demo: scikit-learn's 1797 8x8 digits."""
from __future__ import annotations

import torch

SHAPE = (64,)  # 8x8 digits, flattened
N_TEST = 360


def load_digits(seed: int = 0, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 digits as (N, 64) float32 in [-1, 1], shuffled with ``seed`` and split into
    (train (1437, 64), test (360, 64))."""
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as e:  # pragma: no cover - the demo extra installs it
        raise ImportError("fastflow demo needs scikit-learn for its bundled digits: pip install scikit-learn") from e
    data = torch.as_tensor(_load().data, dtype=torch.float32) / 8.0 - 1.0
    perm = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(seed))
    data = data[perm].to(device)
    return data[N_TEST:], data[:N_TEST]
