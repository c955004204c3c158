"""The progress bar of fastflow's long loops (solvers, samplers, the demo): tqdm when installed, else nothing."""
from __future__ import annotations

import warnings


def bar(enabled: bool, total: int, desc: str, unit: str = "it", *, leave: bool = True):
    """A tqdm bar of ``total`` units, or None when ``enabled`` is false or tqdm is missing (with a warning)."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        warnings.warn(f"{desc}: progress=True needs tqdm (pip install tqdm); running without a progress bar",
                      stacklevel=3)
        return None
    return tqdm(total=total, desc=desc, unit=unit, leave=leave)
