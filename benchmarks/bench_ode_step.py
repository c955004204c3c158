"""Benchmark of the Runge-Kutta step updates (fastflow/ode/step.py): the reference against the fused paths.

Per size (B, d) and dtype, three calls of a dopri5 step, each timed for every provider:

- ``combine_b``: y5 = y + h sum_j b_j K_j (6 nonzero of 7 stages; dopri5's last stage input, first same as last);
- ``combine_a5``: y + h sum_j a_5j K_j (4 stages), a middle stage;
- ``error_norm``: the scaled RMS error of h sum_j e_j K_j (6 nonzero of 7 stages).

Providers:

- ``reference``: :mod:`fastflow.ode.step_reference`, one ``add_`` per stage (what the solvers ran before);
- ``torch_bmm``: the batched-GEMM form (``use_ext_op=False``: the torch backend without the extension);
- ``fastflow_C`` (CPU): the C++ ops ``fastflow::rk_combine_`` / ``rk_error_norm_`` (the torch backend's default);
- ``triton`` (CUDA): the fused kernels (:mod:`fastflow.kernels.ode`).

Timing: the providers of one call are interleaved call by call (``_common.time_interleaved``), median and
inter-quartile range. GB/s: the bytes one fused pass must move (the stages with a nonzero coefficient, y, and
out or y_new) / median, for every provider alike.

Usage::

    python benchmarks/bench_ode_step.py                       # (1000, 3072) float32, 30 repeats
    python benchmarks/bench_ode_step.py --threads 1 --repeats 50
    python benchmarks/bench_ode_step.py --B 64 --d 196608 --dtype bfloat16 --device cuda
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import _common as C
import torch

import fastflow
from fastflow.ode.step_reference import combine_reference, error_norm_reference
from fastflow.ode.step_torch import combine_torch, error_norm_torch

B_DOPRI5 = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]
A5_DOPRI5 = [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729]
E_DOPRI5 = [71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40]
RTOL, ATOL = 1e-3, 1e-6
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def providers(device: torch.device, y, K, h, y_new, out):
    """{provider: {call: fn}} for the providers that run on ``device``."""
    prov = {
        "reference": {
            "combine_b": lambda: combine_reference(y, K, h, B_DOPRI5, out=out),
            "combine_a5": lambda: combine_reference(y, K, h, A5_DOPRI5, out=out),
            "error_norm": lambda: error_norm_reference(y, y_new, K, h, E_DOPRI5, RTOL, ATOL),
        },
        "torch_bmm": {
            "combine_b": lambda: combine_torch(y, K, h, B_DOPRI5, out, use_ext_op=False),
            "combine_a5": lambda: combine_torch(y, K[:4], h, A5_DOPRI5, out, use_ext_op=False),
            "error_norm": lambda: error_norm_torch(y, y_new, K, h, E_DOPRI5, RTOL, ATOL, use_ext_op=False),
        },
    }
    if device.type == "cpu" and fastflow.backends()["C"]:
        prov["fastflow_C"] = {
            "combine_b": lambda: combine_torch(y, K, h, B_DOPRI5, out),
            "combine_a5": lambda: combine_torch(y, K[:4], h, A5_DOPRI5, out),
            "error_norm": lambda: error_norm_torch(y, y_new, K, h, E_DOPRI5, RTOL, ATOL),
        }
    if device.type == "cuda" and fastflow.backends()["triton"]:
        from fastflow.ode.step_triton import combine_triton, error_norm_triton

        prov["triton"] = {
            "combine_b": lambda: combine_triton(y, K, h, B_DOPRI5, out),
            "combine_a5": lambda: combine_triton(y, K[:4], h, A5_DOPRI5, out),
            "error_norm": lambda: error_norm_triton(y, y_new, K, h, E_DOPRI5, RTOL, ATOL),
        }
    return prov


def bytes_moved(call: str, B: int, d: int, itemsize: int) -> int:
    """What one fused pass reads and writes: the nonzero stages, y, and out (combine) or y_new (error norm)."""
    stages = {"combine_b": 5, "combine_a5": 4, "error_norm": 6}[call]
    return (stages + 2) * B * d * itemsize


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--B", type=int, default=1000)
    p.add_argument("--d", type=int, default=3072)
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/ode_step_<device>.json)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    C.seed_everything(0)
    dtype = DTYPES[args.dtype]
    B, d = args.B, args.d
    y = torch.randn(B, d, device=device).to(dtype)
    K = torch.randn(7, B, d, device=device).to(dtype)
    h = torch.rand(B, device=device, dtype=torch.float64) * 0.1
    out = torch.empty_like(y)
    y_new = combine_reference(y, K, h, B_DOPRI5)
    prov = providers(device, y, K, h, y_new, out)
    run_ts = C.utc_now()
    meta = dict(benchmark="bench_ode_step", timestamp=run_ts, **C.device_info(device), **C.versions(),
                B=B, d=d, dtype=args.dtype, cpu_pressure_avg10=C.cpu_pressure() if device.type == "cpu" else None)
    print(f"bench_ode_step: {meta['device_name']} ({device.type}, {meta['num_threads']} threads), "
          f"torch {meta['torch']}, triton {meta['triton']}; B={B} d={d} {args.dtype}, S=7, {args.repeats} repeats")
    rows = []
    t0 = time.perf_counter()
    for call in ("combine_b", "combine_a5", "error_norm"):
        names = list(prov)
        for name in names:  # warm-up (and Triton's compilation)
            prov[name][call]()
        timings = C.time_interleaved([prov[n][call] for n in names], device, repeats=args.repeats)
        ref_ms = timings[0].median
        for name, t in zip(names, timings):
            gbs = bytes_moved(call, B, d, y.element_size()) / (t.median * 1e-3) / 1e9
            rows.append(C.json_safe(dict(meta, call=call, provider=name, **t.as_dict(), gb_per_s=gbs,
                                         speedup_vs_reference=ref_ms / t.median)))
    print(f"\n{'call':11s} {'provider':11s} {'median ms':>10s} {'IQR ms':>15s} {'min ms':>8s} {'GB/s':>7s} "
          f"{'x ref':>6s}")
    for r in rows:
        print(f"{r['call']:11s} {r['provider']:11s} {r['median_ms']:10.3f} {r['q1_ms']:7.3f}-{r['q3_ms']:<7.3f} "
              f"{r['min_ms']:8.3f} {r['gb_per_s']:7.1f} {r['speedup_vs_reference']:6.1f}")
    press = C.cpu_pressure() if device.type == "cpu" else None
    if press is not None and press > 10:
        print(f"note: CPU pressure (PSI some avg10) {press:.0f}%: other processes share the cores; timings are noisy "
              "(compare --threads 1)")
    out_path = args.out or C.RESULTS_DIR / f"ode_step_{C.device_kind(device)}.json"
    old = C.load_rows(out_path)
    key = ("device", "device_name", "B", "d", "dtype", "num_threads", "call", "provider")
    merged, kept = C.merge_rows(old, rows, key=key)
    C.write_json_atomic(out_path, {
        "benchmark": "bench_ode_step",
        "description": "dopri5 step updates: reference vs fused paths (see bench_ode_step.py)",
        "last_run": {"timestamp": run_ts, "argv": sys.argv[1:], "elapsed_s": time.perf_counter() - t0},
        "rows": merged,
    })
    print(f"\nwrote {len(rows)} rows to {out_path}" + (f" ({kept} earlier rows kept)" if kept else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
