#!/usr/bin/env bash
# Everything a lent GPU machine should do for fastflow (device time is scarce: 30 minutes a session).
#   bash benchmarks/gpu_session.sh [SECTION...]
#   SECTION: build tests field prior ode_step solvers construction ot demo report (default: all but demo and report)
# One 10-minute device call holds about build + tests, or build + the four benchmarks with the sizes below: split
# the sections over two calls. demo and report run the CLI on the GPU (`fastflow demo --device cuda`, 3 files, and
# `python benchmarks/run.py --device cuda`, report.md + plots); the device tool returns at most 8 files a call. Logs and
# JSON go to $OUT when set (the device tool's folder), else benchmarks/results/; commit the JSON (every row names
# the device) under a name that says the GPU.
#
# Seen on the device image (2026-11-23, H100, torch 2.11+cu130): its CXX=/opt/gcc/bin/g++ links libstdc++
# statically into fastflow._C, and the second copy of the iostreams then segfaults as soon as an error message
# formats a number (tests/test_errors.py and the *_rejects_bad_arguments tests catch it). The system g++ links it
# dynamically, so the build below names it.
set -uo pipefail
cd "$(dirname "$0")/.."
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYTHONUNBUFFERED=1
[ -x /usr/bin/g++ ] && export CC=/usr/bin/gcc CXX=/usr/bin/g++
export MAX_JOBS=${MAX_JOBS:-16}
out=${OUT:-benchmarks/results}
mkdir -p "$out"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' '_')
sections=${*:-build tests field prior ode_step solvers construction ot}
has() { [[ " $sections " == *" $1 "* ]]; }
if has build || ! python3 -c "import fastflow._C" 2>/dev/null; then
  echo "== build ($gpu)"
  FASTFLOW_FORCE_CUDA=1 python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -5
  python3 -c "import fastflow, json; print(json.dumps(fastflow.backends()))"
  readelf -d fastflow/_C*.so | grep -q 'libstdc++' || echo "WARNING: fastflow._C does not link libstdc++ dynamically"
fi
if has tests; then
  echo "== tests on CUDA (xdist: a crashing test takes its worker down, not the run)"
  FASTFLOW_TEST_DEVICE=cuda timeout 480 python3 -m pytest -q -n 8 -p no:cacheprovider -p no:benchmark tests \
    > "$out/tests_$gpu.log" 2>&1
  echo "pytest rc=$?"; grep -E "FAILED|ERROR|passed|failed" "$out/tests_$gpu.log" | tail -30
fi
if has construction; then
  echo "== bench_construction (a user psi against the closed form; its divergence)"
  python3 benchmarks/bench_construction.py --sizes cpu_goal celeba --quiet --out "$out/construction_$gpu.json" \
    2>&1 | tee "$out/bench_construction_$gpu.log" | tail -20
fi
if has field; then
  echo "== bench_field (the GPU goals' sizes)"
  python3 benchmarks/bench_field.py --sizes cifar scaleout --repeats 5 --budget-s 4 --out "$out/field_$gpu.json" \
    2>&1 | tee "$out/bench_field_$gpu.log" | tail -30
fi
if has prior; then
  echo "== bench_prior"
  python3 benchmarks/bench_prior.py --providers fastflow fastflow_pfgm torch_vectorised --B 1000 --d 3072 196608 \
    --D 1 128 --budget-s 2 --out "$out/prior_$gpu.json" 2>&1 | tee "$out/bench_prior_$gpu.log" | tail -20
fi
if has ode_step; then
  echo "== bench_ode_step"
  python3 benchmarks/bench_ode_step.py --device cuda --out "$out/ode_step_$gpu.json" 2>&1 \
    | tee "$out/bench_ode_step_$gpu.log" | tail -14
fi
if has solvers; then
  echo "== bench_solvers (peers that are not installed are skipped with a note)"
  python3 benchmarks/bench_solvers.py --device cuda --out "$out/solvers_$gpu.json" 2>&1 \
    | tee "$out/bench_solvers_$gpu.log" | tail -30
fi
if has ot; then
  echo "== bench_ot (on CUDA tensors POT runs its torch backend on the GPU: the fair peer there)"
  python3 benchmarks/bench_ot.py --device cuda --out "$out/ot_$gpu.json" 2>&1 | tee "$out/bench_ot_$gpu.log" | tail -20
fi
if has demo; then
  echo "== fastflow demo --device cuda"
  python3 -m fastflow demo --device cuda --quiet --out "$out/demo_$gpu" 2>&1 | tail -25
fi
if has report; then
  echo "== benchmarks/run.py --device cuda"
  python3 benchmarks/run.py --device cuda --quiet --out "$out/report_$gpu" 2>&1 | tail -25
fi
