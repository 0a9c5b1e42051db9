#!/usr/bin/env bash
# scripts/sanitize.sh: builds lowbit's C code with AddressSanitizer + UndefinedBehaviorSanitizer
# (CPU only, -O0 -g) in a scratch copy of the tree and runs the CPU tests against that build.
#   bash scripts/sanitize.sh [pytest args]     (python: $PYTHON, default ./.venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
py=${PYTHON:-.venv/bin/python}
py="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")"  # absolute, venv kept
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git ls-files -z | xargs -0 -I{} cp --parents {} "$work"
(cd "$work" && LOWBIT_SANITIZE=1 LOWBIT_CUDA=0 "$py" setup.py -q build_ext --inplace >/dev/null)
asan=$(gcc -print-file-name=libasan.so)
ubsan=$(gcc -print-file-name=libubsan.so)
# Python and torch keep allocations alive at exit: leak reports would only list those.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:symbolize=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
echo "== ASan+UBSan build in $work; running the CPU tests against it"
cd "$root/tests"
LD_PRELOAD="$asan $ubsan" PYTHONPATH="$work/python" "$py" -c \
  "import lowbit, sys; f = lowbit._ops._C.__file__; print('testing', f); sys.exit(not f.startswith('$work'))"
LD_PRELOAD="$asan $ubsan" PYTHONPATH="$work/python" \
  "$py" -m pytest -q -p no:cacheprovider -m "not cuda and not slow" "$@"
