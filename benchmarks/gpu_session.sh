#!/usr/bin/env bash
# Everything a lent GPU machine should do for fastflow (device time is scarce):
#   build fastflow._C with its CUDA sources, run the tests on CUDA, run the benchmarks (field, ode_step, prior,
#   solvers). The whole run needs more than one 10-minute device call: split it by commenting sections out.
# Logs and JSON go to $OUT when set (the device tool's folder), else benchmarks/results/; commit the JSON,
# which names the device in every row. Usage: bash benchmarks/gpu_session.sh [bench_field.py args...]
set -uo pipefail
cd "$(dirname "$0")/.."
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYTHONUNBUFFERED=1
out=${OUT:-benchmarks/results}
mkdir -p "$out"
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' '_')
echo "== build ($gpu)"
python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -5
python3 -c "import fastflow, json; print(json.dumps(fastflow.backends(), indent=1))"
echo "== tests on CUDA"
FASTFLOW_TEST_DEVICE=cuda python3 -m pytest -q -x tests 2>&1 | tee "$out/tests_$gpu.log" | tail -20
echo "== bench_field"
python3 benchmarks/bench_field.py --out "$out/field_$gpu.json" "$@" 2>&1 | tee "$out/bench_field_$gpu.log" | tail -60
echo "== bench_ode_step"
for dt in float32 bfloat16; do
  python3 benchmarks/bench_ode_step.py --dtype "$dt" --out "$out/ode_step_$gpu.json" 2>&1 | tee -a "$out/bench_ode_step_$gpu.log" | tail -14
done
echo "== bench_prior"
python3 benchmarks/bench_prior.py --out "$out/prior_$gpu.json" 2>&1 | tee "$out/bench_prior_$gpu.log" | tail -30
echo "== bench_solvers (peers that are not installed are skipped with a note)"
python3 benchmarks/bench_solvers.py --device cuda --out "$out/solvers_$gpu.json" 2>&1 | tee "$out/bench_solvers_$gpu.log" | tail -30
