"""Helpers shared by the benchmark scripts: timing, peak memory, row metadata, JSON rows and tables.

Every script in ``benchmarks/`` prints a table and writes JSON rows to ``benchmarks/results/`` (STYLE.md point 10).
A row is one (size, provider) measurement and carries its own metadata (device, versions, UTC timestamp), so rows
from different runs can sit in one file and still say where they came from.

Timing: on CUDA each call is bracketed by ``torch.cuda.Event`` pairs (the GPU timeline, host syncs inside the
call included); on CPU by ``time.perf_counter``. We report the median and the inter-quartile range.

Peak memory (extra memory that one call needs, on top of what already existed when it started):

- CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus ``memory_allocated()``
  before the call. Counts tensors of the caching allocator only (not cuBLAS workspaces or the CUDA context).
- CPU (Linux): the resident-set high-water mark. We return freed heap pages to the OS (``malloc_trim(0)``), reset
  the mark by writing ``5`` to ``/proc/self/clear_refs``, run the call, and report ``VmHWM - VmRSS(before)``.
  It counts every allocator in the process (PyTorch, MKL/oneDNN scratch, OpenMP stacks) at page granularity.
- CPU fallback (no writable clear_refs): the running sum of allocations recorded by ``torch.profiler`` with
  ``profile_memory=True`` (PyTorch's CPU allocator only).
"""
from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import gc
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def fmt_bytes(n: float | None) -> str:
    """Bytes as '3.5 MiB' ('-' for None)."""
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def fmt_num(v: float | None, spec: str = ".3g", unit: str = "") -> str:
    """A number with ``spec`` and ``unit`` ('-' for None or non-finite)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return format(v, spec) + unit


# --------------------------------------------------------------------------------------------------- seeding


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's (if installed) and torch's generators (all CUDA devices included)."""
    random.seed(seed)
    with contextlib.suppress(ImportError):
        import numpy as np

        np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds CUDA generators too when CUDA is initialised


# ---------------------------------------------------------------------------------------------------- timing


def start_run(args) -> torch.device:
    """The common start of every benchmark's main(): the device (refusing --device cuda without CUDA), torch's
    thread count (--threads) and the seeds (--seed)."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch.cuda.is_available() is False")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    return device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Per-call wall times of one measurement, in milliseconds."""

    times_ms: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.times_ms)

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    def quartiles(self) -> tuple[float, float]:
        if self.n < 2:
            return self.times_ms[0], self.times_ms[0]
        q1, _, q3 = statistics.quantiles(self.times_ms, n=4, method="inclusive")
        return q1, q3

    def as_dict(self) -> dict:
        """Flat keys for a JSON row: median, quartiles, IQR, min, max and the repeat count."""
        q1, q3 = self.quartiles()
        return {"median_ms": self.median, "q1_ms": q1, "q3_ms": q3, "iqr_ms": q3 - q1,
                "min_ms": min(self.times_ms), "max_ms": max(self.times_ms), "n_repeats": self.n}


def time_fn(fn: Callable[[], object], device: torch.device, *, repeats: int, warmup: int = 0,
            progress_desc: str | None = None) -> Timing:
    """Time ``repeats`` calls of ``fn`` after ``warmup`` untimed ones.

    CUDA: a pair of ``torch.cuda.Event`` per call (synchronised on the end event). CPU: ``time.perf_counter``.
    With ``progress_desc`` a progress bar (tqdm when installed, else one line per call) shows the calls.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    out = Timing()
    for _ in progress(range(repeats), total=repeats, desc=progress_desc):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.times_ms.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            out.times_ms.append((time.perf_counter() - t0) * 1e3)
    return out


def time_interleaved(fns: Sequence[Callable[[], object]], device: torch.device, *, repeats: int,
                     progress_desc: str | None = None) -> list[Timing]:
    """Time ``repeats`` rounds of calling every fn once, in turn; one :class:`Timing` per fn.

    Interleaving pairs each measurement with its yardstick (e.g. a bare GEMM) under the same machine conditions:
    on shared CPUs a burst of load from other processes then slows both, and their ratio stays meaningful.
    """
    synchronize(device)
    outs = [Timing() for _ in fns]
    for _ in progress(range(repeats), total=repeats, desc=progress_desc):
        for fn, out in zip(fns, outs):
            out.times_ms.extend(time_fn(fn, device, repeats=1).times_ms)
    return outs


def progress(it: Iterable, *, total: int, desc: str | None):
    """``it`` wrapped in a tqdm bar (stderr) when ``desc`` is given; prints per item when tqdm is missing."""
    if desc is None:
        return it
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _print_progress(it, total, desc)
    return tqdm(it, total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)


def _print_progress(it, total, desc):
    t0 = time.perf_counter()
    for i, v in enumerate(it):
        yield v
        print(f"  {desc}: {i + 1}/{total} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)


def fp32_ieee_matmul():
    """CUDA float32 matmuls in true IEEE fp32 (no TF32) inside the block, whatever the global setting was."""
    from fastflow._core.dispatch import fp32_matmul_precision

    return fp32_matmul_precision("ieee")


def ops_called(fn: Callable[[], object]) -> tuple[object, set[str]]:
    """Run ``fn`` once and return (its result, the names of the operators it dispatched, e.g. ``aten::randn``).

    Tells which implementation a public function took (e.g. whether a compiled ``fastflow::`` op ran) without
    reaching into its dispatch logic. Uses a ``TorchDispatchMode``: a little Python overhead per op, so call it
    outside the timed loop.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names: set[str] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(str(func.name()))
            return func(*args, **(kwargs or {}))

    rec = _Recorder()
    with rec:
        out = fn()
    return out, rec.names


# ---------------------------------------------------------------------------------------------------- memory

MEM_METHOD_CUDA = ("cuda: torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), minus "
                   "memory_allocated() before the call (caching-allocator tensors only)")
MEM_METHOD_CPU_RSS = ("cpu: resident-set high-water mark, VmHWM after a /proc/self/clear_refs reset, minus VmRSS "
                      "before the call, after malloc_trim(0) (every allocator in the process, page granularity)")
MEM_METHOD_CPU_PROFILER = ("cpu: peak of the running sum of allocations recorded by torch.profiler "
                           "(profile_memory=True; PyTorch's CPU allocator only)")


def _proc_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, val = line.split(":", 1)
                out[key] = int(val.split()[0]) * 1024  # reported in kB
    return out


def _malloc_trim() -> None:
    """Give glibc's free heap pages back to the OS, so that reusing them counts again in the next peak."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).malloc_trim(0)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5: reset the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def memory_method(device: torch.device) -> str:
    """How :func:`peak_memory` measures on ``device`` (for the output's header and the JSON rows)."""
    if device.type == "cuda":
        return MEM_METHOD_CUDA
    if os.path.exists("/proc/self/status") and _reset_hwm():
        return MEM_METHOD_CPU_RSS
    return MEM_METHOD_CPU_PROFILER


def peak_memory(fn: Callable[[], object], device: torch.device) -> tuple[object, int]:
    """Run ``fn`` once and return (its result, the extra bytes it needed at its peak); see the module docstring."""
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        synchronize(device)
        return out, torch.cuda.max_memory_allocated(device) - before
    if memory_method(device) == MEM_METHOD_CPU_RSS:
        _malloc_trim()
        before = _proc_status()["VmRSS"]
        _reset_hwm()
        out = fn()
        return out, max(0, _proc_status()["VmHWM"] - before)
    return _profiler_peak(fn)


def _profiler_peak(fn):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    # self_cpu_memory_usage: what an op allocated minus what it freed itself (its children are events of their
    # own); "[memory]" events are frees outside any op. In start-time order, their running sum is the live total.
    deltas = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    running = peak = 0
    for _, delta in deltas:
        running += delta
        peak = max(peak, running)
    return out, peak


def available_memory(device: torch.device) -> tuple[int, str]:
    """Bytes a new allocation can still get on ``device``, and where the number comes from.

    CPU: MemAvailable of /proc/meminfo, capped by the cgroup's limit minus its usage when one is set.
    CUDA: free bytes of ``torch.cuda.mem_get_info`` after ``empty_cache()``.
    """
    if device.type == "cuda":
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(device)
        return free, "torch.cuda.mem_get_info"
    avail, src = None, "unknown"
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail, src = int(line.split()[1]) * 1024, "/proc/meminfo MemAvailable"
    for limit_f, usage_f in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                             ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                              "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        with contextlib.suppress(OSError, ValueError):
            limit = int(Path(limit_f).read_text().strip())  # "max" (no limit) raises ValueError
            if limit < 2**60:
                room = limit - int(Path(usage_f).read_text().strip())
                if avail is None or room < avail:
                    avail, src = room, f"cgroup {limit_f} - usage"
    if avail is None:  # not Linux: assume half of nothing is known; callers then run everything
        return 2**62, "unknown (no /proc/meminfo)"
    return avail, src


# -------------------------------------------------------------------------------------------------- metadata


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_pressure() -> float | None:
    """The share of the last 10 s in which some runnable task waited for a CPU (Linux PSI), in percent.

    High values mean the cores are shared (a VM's vCPUs on a busy host, other jobs): CPU timings are then noisy.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some"):
                    return float(line.split("avg10=")[1].split()[0])
    return None


#: environment variables that change how the CPU threads behave; recorded in every row
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def thread_env() -> dict:
    """The threading environment variables that are set (see ``THREAD_ENV``)."""
    return {k: os.environ[k] for k in THREAD_ENV if k in os.environ}


def device_info(device: torch.device) -> dict:
    """Row metadata about the device: its type, its name (GPU model or CPU model) and the thread count."""
    info = {"device": device.type, "num_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "thread_env": thread_env()}
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        info["device_name"] = torch.cuda.get_device_name(idx)
        info["device_memory_bytes"] = torch.cuda.get_device_properties(idx).total_memory
    else:
        info["device_name"] = cpu_model()
        with contextlib.suppress(OSError, ValueError):
            info["device_memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return info


def device_kind(device: torch.device) -> str:
    """A file-name friendly device label: ``cpu`` or ``cuda-<gpu model>`` (e.g. ``cuda-nvidia-h100-80gb-hbm3``)."""
    if device.type != "cuda":
        return device.type
    idx = device.index if device.index is not None else torch.cuda.current_device()
    name = "".join(c if c.isalnum() else "-" for c in torch.cuda.get_device_name(idx).lower())
    return "cuda-" + "-".join(p for p in name.split("-") if p)


def versions() -> dict:
    """Python, torch, CUDA (torch's build), Triton, NumPy and fastflow versions (None where not importable)."""
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "triton": None, "numpy": None, "fastflow": None}
    for mod in ("triton", "numpy", "fastflow"):
        with contextlib.suppress(Exception):
            out[mod] = __import__(mod).__version__
    return out


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------ JSON output


def start_notes(meta: dict) -> None:
    """Before a run: the threading environment, and a warning when the cores are already busy."""
    if meta["thread_env"]:
        print(f"threading environment: {meta['thread_env']}")
    if (meta["cpu_pressure_avg10"] or 0) > 10:
        print(f"note: CPU pressure (PSI some avg10) is {meta['cpu_pressure_avg10']:.0f}%: the cores are shared, "
              "CPU timings will be noisy")


def pressure_note(rows, device: torch.device, why: str) -> None:
    """After a CPU run, say so if other processes competed for the cores (PSI 'some' avg10 above 10%)."""
    worst = max((r.get("cpu_pressure_avg10") or 0.0 for r in rows), default=0.0)
    if device.type == "cpu" and worst > 10:
        print(f"\nnote: CPU pressure (PSI 'some' avg10) reached {worst:.0f}% during this run: other processes competed "
              f"for the cores. {why}; rerun on a quiet machine, or compare --threads 1.")


def write_results(out_path: Path, *, benchmark: str, description: str, run_ts: str, device: torch.device,
                  meta: dict, elapsed: float, goals, merged, n_new: int, kept: int, **last_run_extra) -> None:
    """Write a benchmark's JSON file ({benchmark, description, last_run, goals, rows}) and say so."""
    import sys
    write_json_atomic(out_path, {
        "benchmark": benchmark,
        "description": description,
        "last_run": {"timestamp": run_ts, "argv": sys.argv[1:], "device": device.type,
                     "device_name": meta["device_name"], "elapsed_s": elapsed, **last_run_extra},
        "goals": goals,
        "rows": merged,
    })
    print(f"\nwrote {n_new} rows to {out_path}" + (f" ({kept} earlier rows kept)" if kept else ""))


def write_json_atomic(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON through a temporary file in the same folder, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, allow_nan=False, default=_json_default)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _json_default(v):
    if isinstance(v, (torch.dtype, torch.device, Path)):
        return str(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


def json_safe(v):
    """NaN and inf become None (JSON has no such numbers), recursively."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    return v


def load_rows(path: Path) -> list[dict]:
    """The ``rows`` of an earlier result file, or [] when there is none (or it cannot be read)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        print(f"note: ignoring unreadable {path} ({e})", file=sys.stderr)
        return []
    return list(data.get("rows", [])) if isinstance(data, dict) else list(data)


def merge_rows(old: Sequence[dict], new: Sequence[dict], key: Sequence[str]) -> tuple[list[dict], int]:
    """``new`` plus the rows of ``old`` whose ``key`` no new row has; returns (rows, how many old rows were kept)."""
    seen = {tuple(r.get(k) for k in key) for r in new}
    kept = [r for r in old if tuple(r.get(k) for k in key) not in seen]
    return kept + list(new), len(kept)


# ------------------------------------------------------------------------------------------------- printing


def print_table(rows: Sequence[dict], columns: Sequence[tuple[str, Callable[[dict], str]]], *,
                file=None) -> None:
    """Print ``rows`` as an aligned text table; ``columns`` are (header, row -> cell text)."""
    file = file or sys.stdout
    cells = [[h for h, _ in columns]] + [[str(f(r)) for _, f in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]

    def line(c):
        return "  ".join(s.ljust(w) if i == 0 or not _numeric(s) else s.rjust(w)
                         for i, (s, w) in enumerate(zip(c, widths))).rstrip()

    print(line(cells[0]), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for c in cells[1:]:
        print(line(c), file=file)


def _numeric(s: str) -> bool:
    s = s.split()[0] if s.split() else s
    try:
        float(s.rstrip("x%"))
        return True
    except ValueError:
        return s == "-"
