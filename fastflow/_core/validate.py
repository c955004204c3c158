"""Argument checks shared by the public API. Errors name the argument and say what was expected (docs/api.md).

Checks on types, shapes, dtypes and devices are host-side and run at once. Checks on tensor *values* (NaN / inf,
t > 0, an output that overflows) need the value on the host: on a GPU each such read waits for the device
(a stall). Inside one public call (a function decorated with :func:`checked`) they are therefore recorded,
not read: :func:`require` stores a 0-d boolean "bad" tensor with a function that builds the error, and the
call ends with one read of all its flags packed into one integer (:func:`_flush`; on the CPU, where reads are
free, one plain read per flag), after which the first failing check, in the order the checks were made,
raises. A call that fails for another reason flushes first, so that bad input is reported as such rather than
as what it caused.

``fastflow.set_validate_args(False)`` (or FASTFLOW_VALIDATE_ARGS=0) turns the value checks off, as
``torch.distributions``' ``validate_args`` does: no host read at all, and NaN in gives NaN out.
"""
from __future__ import annotations

import contextvars
import functools
import math
import numbers
from collections.abc import Callable
from typing import TypeVar

import torch

from . import config

_F = TypeVar("_F", bound=Callable)

#: the process-wide switch set by :class:`set_validate_args`; None: FASTFLOW_VALIDATE_ARGS decides
_override: bool | None = None

#: the value checks recorded by the public call in progress (None outside one)
_pending: contextvars.ContextVar[list | None] = contextvars.ContextVar("fastflow_pending_checks", default=None)


class set_validate_args:
    """Turn fastflow's checks of tensor values (NaN / inf, t > 0, overflowing outputs) on or off.

    With checks on (the default), a public call reads the device once, at its end, for all its value checks; with
    them off it reads nothing, so a training loop on a GPU never waits, and invalid values give NaN or inf
    results instead of errors (as ``torch.distributions`` with ``validate_args=False``). Checks of types, shapes,
    dtypes and devices always run: they need no read.

    Like ``torch.set_grad_enabled``, it acts at once and also serves as a context manager that restores the
    previous setting on exit::

        fastflow.set_validate_args(False)          # from here on
        with fastflow.set_validate_args(False):    # for this block only
            loss = ...

    Args:
        enabled: True to check values, False not to. (FASTFLOW_VALIDATE_ARGS gives the default: true.)
    """

    def __init__(self, enabled: bool) -> None:
        global _override
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
        self.previous = _override
        _override = enabled

    def __enter__(self) -> set_validate_args:
        return self

    def __exit__(self, *exc) -> None:
        global _override
        _override = self.previous


def get_validate_args() -> bool:
    """Whether fastflow checks tensor values (see :class:`set_validate_args`)."""
    return config.validate_args() if _override is None else _override


def compiling() -> bool:
    """True while torch.compile traces: then the checks on tensor *values* (NaN / inf, t > 0) are skipped, since
    a traced graph cannot branch on data; the checks on types, shapes and devices still run (README:
    torch.compile)."""
    return torch.compiler.is_compiling()


def reads_are_free(device: torch.device) -> bool:
    """Whether reading a tensor value on the host costs nothing but the load: on the CPU, where there is no device
    to wait for. Elsewhere (CUDA) a read waits for the queued work (a stall), so an optimisation that would need
    one (the field's choice to skip centring) takes its data-independent branch instead; and while torch.compile
    traces, a graph cannot branch on data at all. Tests patch this to False to run the CUDA branch on the CPU."""
    return device.type == "cpu" and not compiling()


def checking_values() -> bool:
    """Whether value checks run now: switched on, and not while torch.compile traces."""
    return not compiling() and get_validate_args()


def checked(fn: _F) -> _F:
    """Decorate a public call: its value checks (:func:`require`) are read once, when the outermost such call
    returns (or fails)."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        # traced by torch.compile (no value checks there), or inside another checked call (that one reads)
        if compiling() or _pending.get() is not None:
            return fn(*args, **kwargs)
        batch: list = []
        token = _pending.set(batch)
        try:
            out = fn(*args, **kwargs)
        except BaseException:
            _pending.reset(token)
            _flush(batch)  # a failed value check explains the failure better than what it caused
            raise
        _pending.reset(token)
        _flush(batch)
        return out
    return call  # type: ignore[return-value]


def require(bad: torch.Tensor, error: Callable[[], BaseException | None]) -> None:
    """Record a value check: ``bad`` a boolean tensor of one element, true where the check fails; ``error()``
    builds the exception to raise then (it may read values; returning None means "not an error after all", for
    a cheap check that can give a false alarm). Outside a :func:`checked` call it is read at once."""
    batch = _pending.get()
    if batch is not None:
        batch.append((bad, error))
    elif bool(bad):
        e = error()
        if e is not None:
            raise e


#: bits of the one int64 read: the first 62 checks each have one; bit 62 says that one of the others failed
_BITS = 62


def _flush(batch: list) -> None:
    """Read all recorded checks at once (one read per device; on the CPU, where reads cost nothing, one per check
    instead of packing them) and raise the first that failed."""
    if not batch:
        return
    failed = [False] * len(batch)
    by_device: dict[torch.device, list[int]] = {}
    for k, (bad, _) in enumerate(batch):
        by_device.setdefault(bad.device, []).append(k)
    for device, ks in by_device.items():
        if reads_are_free(device):  # the CPU: a read is a load, cheaper than packing the flags
            for k in ks:
                failed[k] = bool(batch[k][0])
            continue
        flags = torch.stack([batch[k][0].reshape(()) for k in ks]).to(torch.int64)
        head, rest = flags[:_BITS], flags[_BITS:]
        word = (head << torch.arange(head.numel(), device=device)).sum()
        if rest.numel():
            word = word + (rest.any().to(torch.int64) << _BITS)
        code = int(word)  # the one read
        for i, k in enumerate(ks[:_BITS]):
            failed[k] = bool(code >> i & 1)
        if code >> _BITS & 1:  # rare (more than 62 checks) and only when one failed: read the rest
            for k, f in zip(ks[_BITS:], rest.tolist()):
                failed[k] = bool(f)
    for k, (_, error) in enumerate(batch):
        if failed[k]:
            e = error()
            if e is not None:
                raise e


def _sum_dtype(v: torch.Tensor) -> torch.dtype | None:
    return torch.float32 if v.dtype.itemsize < 4 else None  # a float16 sum overflows long before its entries


def require_finite(v: torch.Tensor, error: Callable[[], BaseException]) -> None:
    """Record "v has no NaN or inf" (skipped when value checks are off). One reduction: a NaN or inf makes the sum
    NaN or inf; only when the sum is not finite (which finite values can also cause, by overflow) are the
    elements checked one by one, on the error path."""
    if not checking_values() or v.numel() == 0:
        return
    require(~torch.isfinite(v.sum(dtype=_sum_dtype(v))),
            lambda: None if bool(torch.isfinite(v).all()) else error())


def all_finite(v: torch.Tensor) -> bool:
    """True when no element is NaN or inf, read now (for loops that must decide on it: the ODE solvers).
    One reduction, as :func:`require_finite`. Always True when value checks are off or torch.compile traces."""
    if not checking_values() or v.numel() == 0 or bool(torch.isfinite(v.sum(dtype=_sum_dtype(v)))):
        return True
    return bool(torch.isfinite(v).all())


def tensor(name: str, v, *, min_dim: int = 1) -> torch.Tensor:
    """A finite floating-point tensor with at least ``min_dim`` dims, else TypeError / ValueError."""
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    if not v.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), got {v.dtype}")
    if v.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s) (batch first), got shape {tuple(v.shape)}")
    require_finite(v, lambda: ValueError(f"{name} contains NaN or inf"))
    return v


def points_and_ref(x, ref) -> tuple[torch.Tensor, torch.Tensor]:
    """Check ``x`` (B, *shape) against ``ref`` (R, *shape); return both flattened to (B, d) and (R, d)."""
    x = tensor("x", x)
    ref = tensor("ref", ref)
    if ref.shape[0] == 0:
        raise ValueError("ref is empty: the reference set needs at least one point, got shape "
                         f"{tuple(ref.shape)}")
    if tuple(x.shape[1:]) != tuple(ref.shape[1:]):
        raise ValueError(f"x and ref must share the per-point shape: x is {tuple(x.shape)} = (B, *shape), "
                         f"ref is {tuple(ref.shape)} = (R, *shape)")
    if x.device != ref.device:
        raise ValueError(f"x and ref must be on the same device, got {x.device} and {ref.device}")
    if x.dtype != ref.dtype:
        raise ValueError(f"x and ref must have the same dtype, got x {x.dtype} and ref {ref.dtype} (fastflow does "
                         "not promote silently: cast one, e.g. ref.to(x.dtype))")
    d = math.prod(x.shape[1:])
    return x.reshape(x.shape[0], d), ref.reshape(ref.shape[0], d)


def times(name: str, t, B: int, *, dtype: torch.dtype, device: torch.device, upper: float | None = None):
    """``t`` as a (B,) tensor of ``dtype``: a positive finite Python number or a (B,) / 0-d tensor."""
    if isinstance(t, torch.Tensor):
        if not t.is_floating_point() and t.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name} must be a float or a floating-point (B,) tensor, got {t.dtype}")
        if t.dim() == 0:
            t = t.reshape(1).expand(B)
        elif t.shape != (B,):
            raise ValueError(f"{name} must be a float or a tensor of shape (B,) = ({B},), got {tuple(t.shape)}")
        if t.device != device:
            raise ValueError(f"{name} must be on {device} like x, got {t.device}")
        big = torch.finfo(dtype).max
        if t.dtype.is_floating_point and torch.finfo(t.dtype).max > big and checking_values() and t.numel():
            require((t.abs() > big).any(), lambda: ValueError(
                f"{name} has values beyond the range of the compute dtype {dtype} (max {big:.3g}); pass float64 "
                "tensors to compute in float64"))
        t = t.to(dtype)
        if checking_values() and t.numel():
            bad = ~torch.isfinite(t) | (t <= 0)
            if upper is not None:
                bad |= t > upper
            lim = f" and <= {upper}" if upper is not None else ""
            require(bad.any(), lambda: ValueError(
                f"{name} must be finite and > 0{lim}; got {t[bad][:4].tolist()} at some entries"))
        return t.contiguous()
    if isinstance(t, bool) or not isinstance(t, numbers.Real):
        raise TypeError(f"{name} must be a float or a (B,) tensor, got {type(t).__name__}")
    t = float(t)
    if not math.isfinite(t) or t <= 0 or (upper is not None and t > upper):
        lim = f" and <= {upper}" if upper is not None else ""
        raise ValueError(f"{name} must be finite and > 0{lim}, got {t}")
    fi = torch.finfo(dtype)
    if t > fi.max or t < fi.tiny:
        raise ValueError(f"{name} = {t:g} is outside the range of the compute dtype {dtype} ({fi.tiny:.3g} to "
                         f"{fi.max:.3g}); pass float64 tensors to compute in float64")
    return torch.full((B,), t, dtype=dtype, device=device)


def choice(name: str, v, allowed) -> str:
    if not isinstance(v, str):
        raise TypeError(f"{name} must be a string, one of {list(allowed)}; got {type(v).__name__}")
    if v not in allowed:
        raise ValueError(f"unknown {name} {v!r}; expected one of {list(allowed)}")
    return v


def number(name: str, v, *, lower: float = 0.0, strict: bool = True) -> float:
    """A finite real Python number > ``lower`` (>= with ``strict=False``), as a float."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v) or (v <= lower if strict else v < lower):
        raise ValueError(f"{name} must be finite and {'>' if strict else '>='} {lower:g}, got {v}")
    return v


def flag(name: str, v) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    return v


def count(name: str, n, minimum: int = 0) -> int:
    """A Python int >= ``minimum`` (a number of samples: 0; of steps or rows: 1)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(n).__name__} {n!r}")
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {n}")
    return int(n)


def point_shape(name: str, shape) -> tuple[int, ...]:
    """The per-point shape of drawn samples: an int or a sequence of positive ints (() for scalar points)."""
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list, torch.Size)) or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in shape):
        raise TypeError(f"{name} must be an int or a tuple of ints (the per-point shape), got {shape!r}")
    if any(s < 1 for s in shape):
        raise ValueError(f"{name} must have positive sizes (at least one element per point), got {tuple(shape)}")
    return tuple(int(s) for s in shape)


def float_dtype(name: str, dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point torch.dtype (float16/bfloat16/float32/float64), "
                        f"got {dtype!r}")
    return dtype


def generator(name: str, gen, device: torch.device):
    """None, or a torch.Generator on ``device``'s type (it draws there)."""
    if gen is None:
        return None
    if not isinstance(gen, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(gen).__name__}")
    if gen.device.type != device.type:
        raise ValueError(f"{name} must be on the device it draws on ({device.type}), got a {gen.device.type} "
                         "generator")
    return gen


def device(name: str, value) -> torch.device:
    """A torch.device from a device or a string; a CUDA request without a CUDA device says so and how to get one."""
    try:
        dev = torch.device(value)
    except (TypeError, RuntimeError) as e:
        raise TypeError(f"{name} must be a torch.device or a device string such as 'cpu' or 'cuda', "
                        f"got {value!r}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = (f"this torch ({torch.__version__}) is a CPU-only build" if torch.version.cuda is None
               else "torch finds no CUDA device on this machine")
        raise ValueError(f"{name}={str(value)!r} asks for CUDA, but {why}. On a machine with an NVIDIA GPU, "
                         "install a CUDA build of torch (pip's default torch wheel on Linux, or the CUDA index "
                         "of PyTorch's install selector) in place of the CPU-only one, then rebuild fastflow; "
                         "or use 'cpu'.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{name}={str(value)!r}: there are only {torch.cuda.device_count()} CUDA devices")
    return dev


def chunk_size(name: str, value) -> int | None:
    """None (a default), or a positive Python int."""
    return None if value is None else count(name, value, minimum=1)


def sample_device(dev, gen) -> torch.device:
    """Where drawn samples go: ``dev``; else the generator's device; else torch's default device."""
    if dev is not None:
        return device("device", dev)
    if isinstance(gen, torch.Generator):
        return gen.device
    if compiling():  # get_default_device is not traceable; a factory's tensor says the same
        return torch.empty(0).device
    return torch.get_default_device()


def f_output(out, shape: tuple, hint: str = "") -> torch.Tensor:
    """What a user's velocity f returned: a floating tensor of the given shape (the x it was given)."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"f must return a torch.Tensor dx/dt, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"f returned shape {tuple(out.shape)}, expected {tuple(shape)} (the shape of the x it was "
                         f"given{hint})")
    if not out.is_floating_point():
        raise TypeError(f"f must return a floating-point tensor, got {out.dtype}")
    return out
