"""Run the benchmark scripts at sizes that fit the machine, then write report.md with plots (report.py).

    python benchmarks/run.py                     # CPU: each script's quick sizes (~1 min on 2 cores)
    python benchmarks/run.py --device cuda       # every size on a GPU
    python benchmarks/run.py --only field prior  # some of field, prior, ode_step, solvers, construction, ot

Sizes: on a CPU the quick sizes of each script (the field at (32, 256, 3072), (128, 1024, 3072) and STF's
(64, 1024, 3072); the draws at (128, 3072) and (1000, 3072); the solvers' quick workloads; Sinkhorn at
B = 512); ``--full`` runs every
size. On CUDA every size (each script skips what would not fit in memory). Each script writes its own JSON and log
next to the report; the report quotes the scripts' goals (PASS / FAIL). Speed is measured here, never asserted
in the tests.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report import write_report  # noqa: E402

#: (name, script, CPU arguments, CUDA / full arguments)
SCRIPTS = (
    ("field", "bench_field.py", ["--sizes", "small", "cpu_goal", "stf", "--repeats", "5", "--divergence"],
     ["--divergence"]),
    ("prior", "bench_prior.py", ["--quick"], []),
    ("ode_step", "bench_ode_step.py", ["--B", "256"], []),
    ("solvers", "bench_solvers.py", ["--quick"], []),
    ("construction", "bench_construction.py", ["--repeats", "5", "--quiet"], ["--quiet"]),
    ("ot", "bench_ot.py", ["--quick"], []),
)
NAMES = tuple(s[0] for s in SCRIPTS)


def run(out: str | Path, *, device: str = "cpu", full: bool = False, only: tuple[str, ...] = NAMES,
        progress: bool = True) -> Path:
    """Run the scripts in ``only`` on ``device``, then :func:`write_report`. Returns the report's path."""
    bad = [n for n in only if n not in NAMES]
    if bad or not only:
        raise ValueError(f"only must name some of {NAMES}; got {list(only)}")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be cpu or cuda[:k], got {device!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bdir = HERE
    for name, script, cpu_args, big_args in SCRIPTS:
        if name not in only:
            continue
        args = big_args if (full or device != "cpu") else cpu_args
        cmd = [sys.executable, str(bdir / script), "--device", device, "--out", str(out / f"{name}.json"), *args]
        if name != "ode_step":
            cmd.append("--fresh")
        if progress:
            print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        with open(out / f"{name}.log", "w") as log:
            r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        if progress:
            print(f"   {time.perf_counter() - t0:.0f} s, log in {out / (name + '.log')}", flush=True)
        if r.returncode != 0:
            raise RuntimeError(f"benchmarks/{script} failed (exit {r.returncode}); see {out / (name + '.log')}")
    return write_report(out)




def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--out", default="fastflow_bench", help="output folder (default fastflow_bench)")
    p.add_argument("--full", action="store_true", help="every size on the CPU too (tens of minutes)")
    p.add_argument("--only", nargs="+", choices=NAMES, help="run only these benchmarks")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    path = run(args.out, device=args.device, full=args.full, only=tuple(args.only or NAMES), progress=not args.quiet)
    print(f"wrote {path} (with PNG plots and each script's JSON and log beside it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
