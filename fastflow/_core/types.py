"""Type aliases shared by the public signatures (for readers and type checkers; nothing here is checked at runtime).

The modules start with ``from __future__ import annotations``, so the aliases appear by name in their signatures
and ``typing.get_type_hints`` resolves them to the unions below.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeAlias

import torch

__all__ = ["Time", "Shape", "DeviceLike", "LogWeight"]

#: a time (t, sigma, T, z, ...): a Python float for every row, or a (B,) tensor, one per row
Time: TypeAlias = float | torch.Tensor

#: a per-point shape: an int, or a sequence of ints (``()`` for scalar points)
Shape: TypeAlias = int | Sequence[int]

#: where to draw or compute: a torch.device, a device string such as ``"cuda:0"``, or None (the default)
DeviceLike: TypeAlias = torch.device | str | None

#: a log-weight written from its formula, ``f(r2, t) -> l(r^2, t)``: squared distances and times, broadcast
LogWeight: TypeAlias = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
