"""Every ``FASTFLOW_*`` environment switch, parsed in one place.

===========================  ======================================================================  =========
variable                     meaning                                                                 default
===========================  ======================================================================  =========
``FASTFLOW_BACKEND``         force a backend: ``reference``, ``torch`` or ``triton`` (unset: by device)  unset
``FASTFLOW_DISABLE_C``       ignore the compiled extension ``fastflow._C`` (boolean)                    false
``FASTFLOW_FIELD_BUDGET_MB`` memory budget of one chunk of the field's torch backend, MiB (> 0)         256
``FASTFLOW_NVTX``            record NVTX ranges when the ``nvtx`` package is installed (boolean)        true
``FASTFLOW_TRITON_TILES``    override Triton tile sizes, e.g. ``BLOCK_M=16,BLOCK_K=1024`` (tests)       unset
``FASTFLOW_VALIDATE_ARGS``   check tensor values (NaN / inf, t > 0) in public calls (boolean)        true
===========================  ======================================================================  =========

Booleans follow one rule: ``1``, ``true``, ``yes``, ``on`` are true; ``0``, ``false``, ``no``, ``off`` and the
empty string are false (case-insensitive, surrounding spaces ignored); anything else is a ValueError that names
the variable. The build switches ``FASTFLOW_FORCE_CUDA`` and ``FASTFLOW_SKIP_CUDA_BUILD`` are read by setup.py
with the same rule.

The variables are read when used, not at import, so that a test (or a user) may change them in between; each
value is parsed by the one function below that owns it.
"""
from __future__ import annotations

import math
import os

TRUE = ("1", "true", "yes", "on")
FALSE = ("", "0", "false", "no", "off")

#: the field's default chunk budget in MiB (FASTFLOW_FIELD_BUDGET_MB overrides it)
DEFAULT_FIELD_BUDGET_MB = 256.0


def parse_flag(name: str, raw: str | None, default: bool) -> bool:
    """The one boolean rule (module docstring) for the value ``raw`` of variable ``name`` (None: unset)."""
    if raw is None:
        return default
    v = raw.strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise ValueError(f"{name} must be a boolean ({'/'.join(TRUE)} or {'/'.join(FALSE[1:])}, or empty), "
                     f"got {raw!r}")


def flag(name: str, default: bool = False) -> bool:
    """The boolean environment variable ``name`` (module docstring's rule)."""
    return parse_flag(name, os.environ.get(name), default)


def disable_c() -> bool:
    """FASTFLOW_DISABLE_C: ignore the compiled extension."""
    return flag("FASTFLOW_DISABLE_C", False)


def nvtx() -> bool:
    """FASTFLOW_NVTX: record NVTX ranges (when the nvtx package is installed)."""
    return flag("FASTFLOW_NVTX", True)


def validate_args() -> bool:
    """FASTFLOW_VALIDATE_ARGS: check tensor values in public calls (``fastflow.set_validate_args`` wins)."""
    return flag("FASTFLOW_VALIDATE_ARGS", True)


def backend(allowed: tuple[str, ...]) -> str | None:
    """FASTFLOW_BACKEND: one of ``allowed``, or None when unset or empty."""
    raw = os.environ.get("FASTFLOW_BACKEND")
    if raw is None or not raw.strip():
        return None
    name = raw.strip()
    if name not in allowed:
        raise ValueError(f"unknown FASTFLOW_BACKEND {raw!r}; expected one of {list(allowed)} (or unset)")
    return name


def field_budget_mb() -> float:
    """FASTFLOW_FIELD_BUDGET_MB: a finite number of MiB > 0 (default 256)."""
    raw = os.environ.get("FASTFLOW_FIELD_BUDGET_MB")
    if raw is None:
        return DEFAULT_FIELD_BUDGET_MB
    try:
        v = float(raw)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"FASTFLOW_FIELD_BUDGET_MB must be a finite number of MiB > 0 (default "
                         f"{DEFAULT_FIELD_BUDGET_MB:g}), got {raw!r}")
    return v


def triton_tiles() -> dict[str, int]:
    """FASTFLOW_TRITON_TILES: ``NAME=int,...`` overrides of the Triton tile sizes (empty dict when unset)."""
    raw = os.environ.get("FASTFLOW_TRITON_TILES")
    if raw is None or not raw.strip():
        return {}
    out = {}
    for item in raw.split(","):
        key, sep, val = item.partition("=")
        try:
            out[key.strip()] = int(val)
        except ValueError:
            sep = ""
        if not sep or not key.strip() or out.get(key.strip(), 0) < 1:
            raise ValueError(f"FASTFLOW_TRITON_TILES must be NAME=positive int pairs separated by commas "
                             f"(e.g. BLOCK_M=16,BLOCK_K=1024), got {raw!r}")
    return out
