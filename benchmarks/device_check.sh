#!/usr/bin/env bash
# benchmarks/device_check.sh OUTDIR: the GPU-machine check of every CUDA kernel lowbit has —
# builds the CUDA extension in place, runs the CUDA tests, runs compute-sanitizer (memcheck) on a
# small CUDA test, runs the GPU benchmarks, and writes logs to OUTDIR (at most 8 files: env.log,
# build.log, tests.log, sanitizer.log, bench.md, summary.txt). Budget: under 8 minutes.
#   bash benchmarks/device_check.sh "$OUT"
set -uo pipefail
out=${1:?usage: device_check.sh OUTDIR}
mkdir -p "$out"
out=$(readlink -f "$out")
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
summary="$out/summary.txt"
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
t0=$(date +%s)

{ nvidia-smi; nvcc --version; $PY -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"; } >"$out/env.log" 2>&1

# 1. build (sm_90 only: this machine is Hopper; keeps the build short)
if LOWBIT_CUDA=1 LOWBIT_CUDA_ARCHS="${LOWBIT_CUDA_ARCHS:-90}" $PY setup.py build_ext --inplace >"$out/build.log" 2>&1; then
  note "build: ok ($(( $(date +%s) - t0 ))s)"
else
  note "build: FAILED (see build.log)"; tail -40 "$out/build.log"; exit 1
fi
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
$PY -c "import lowbit, json; print(json.dumps(lowbit.build_info()))" 2>&1 | tee -a "$summary"

# 2. CUDA tests (and the CPU tests of the same files for the CUDA build on this torch)
if timeout 300 $PY -m pytest -q -p no:cacheprovider -m cuda tests -rf >"$out/tests.log" 2>&1; then
  note "cuda tests: ok — $(tail -1 "$out/tests.log")"
else
  note "cuda tests: FAILED — $(tail -1 "$out/tests.log")"; grep -E "^(FAILED|ERROR)" "$out/tests.log" | head -20 | tee -a "$summary"
fi

# 3. compute-sanitizer on the small CUDA test of each op family (test_cuda_sanitizer_small*:
#    fake_quant's, test_cuda_sanitizer_small_qlinear for quant_linear's GEMV + WMMA kernels)
if command -v compute-sanitizer >/dev/null; then
  timeout 150 compute-sanitizer --tool memcheck --error-exitcode 3 \
    $PY -m pytest -q -p no:cacheprovider -m cuda -x tests -k "sanitizer_small" \
    >"$out/sanitizer.log" 2>&1
  note "compute-sanitizer memcheck: exit $? — $(grep -E 'ERROR SUMMARY|passed|failed|not supported' "$out/sanitizer.log" | tail -2 | tr '\n' ' ')"
else
  note "compute-sanitizer: not found"
fi

# 4. GPU benchmarks
{
  # every benchmark takes --device cuda (bench_qlinear: W{2,3,4}A16 vs torch fp16 and int4 tinygemm)
  for b in benchmarks/bench_*.py; do
    echo "## $b"; timeout 150 $PY "$b" --device cuda; echo
  done
} >"$out/bench.md" 2>&1
note "benchmarks: $(grep -c '^|' "$out/bench.md") table rows (bench.md)"
note "total: $(( $(date +%s) - t0 ))s"
