#!/usr/bin/env bash
# scripts/torch_matrix.sh: builds ONE lowbit wheel and runs the test suite against it under each
# torch version given, each in a fresh venv; prints one summary line per version.
#
#   bash scripts/torch_matrix.sh [--keep] VERSION... [-- PYTEST_ARGS...]
#   e.g. bash scripts/torch_matrix.sh 2.11.0 2.13.0 2.14.1 2.15.0
#
# The wheel is built once (pip wheel --no-deps; LOWBIT_CUDA=auto as in CI, so the CUDA kernels
# are compiled whenever nvcc is found) and installed with its [test] extras into every venv
# after `pip install torch==VERSION`. Every pip call of a venv runs with a constraints file that
# holds exactly torch==VERSION: it keeps the extras from moving torch, and it replaces any
# machine-wide pip constraint (such as a cap at torch 2.14.1), so the version asked for is the
# version tested. Where pip finds torch is pip's own business (its index, find-links, cache):
# CUDA builds of torch are several GB each, so this is not part of CI.
# The suite runs from a snapshot's tests/ with lowbit imported from the venv (never from
# python/), and a failing version does not stop the others. Exit status: 0 only if every
# version passed.
#
#   TORCH_MATRIX_DIR   work folder (default /tmp/lowbit-torch-matrix): src/, wheel/, logs/,
#                      venv-*/
#   TORCH_MATRIX_WHEEL a lowbit wheel built before (e.g. by CI): used instead of building one
#   PYTHON             the Python that builds the wheel and makes the venvs (default python3)
#   --keep             keep each venv (default: removed after its run, they are GBs)
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
keep=0
versions=()
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) keep=1 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        -*) echo "torch_matrix: unknown option $1" >&2; exit 2 ;;
        *) versions+=("$1") ;;
    esac
    shift
done
pytest_args=("$@")
if [ ${#versions[@]} -eq 0 ]; then
    echo "usage: bash scripts/torch_matrix.sh [--keep] VERSION... [-- PYTEST_ARGS...]" >&2
    exit 2
fi
py=${PYTHON:-python3}
work=${TORCH_MATRIX_DIR:-/tmp/lowbit-torch-matrix}
mkdir -p "$work/logs"
work=$(cd "$work" && pwd)
unset PYTHONPATH  # lowbit must come from the installed wheel

# a snapshot of the tracked files (working-tree content): the wheel is built from it and the
# suite runs from its tests/, so editing the checkout during a run changes nothing; it holds no
# in-place .so, so a test that imported lowbit from python/ instead of the venv would fail
rm -rf "$work/src"
mkdir -p "$work/src"
git ls-files -z | xargs -0 -I{} cp --parents {} "$work/src"
if [ -n "${TORCH_MATRIX_WHEEL:-}" ]; then
    wheel=$(cd "$(dirname "$TORCH_MATRIX_WHEEL")" && pwd)/$(basename "$TORCH_MATRIX_WHEEL")
    [ -f "$wheel" ] || { echo "torch_matrix: TORCH_MATRIX_WHEEL=$wheel: no such file" >&2; exit 2; }
    echo "== using the wheel $wheel"
else
    echo "== building the lowbit wheel (LOWBIT_CUDA=${LOWBIT_CUDA:-auto}) into $work/wheel"
    rm -rf "$work/wheel"
    t0=$(date +%s)
    if ! LOWBIT_CUDA=${LOWBIT_CUDA:-auto} "$py" -m pip wheel -q --no-deps -w "$work/wheel" \
            "$work/src" > "$work/logs/wheel.log" 2>&1; then
        tail -30 "$work/logs/wheel.log"
        echo "torch_matrix: wheel build failed (log: $work/logs/wheel.log)" >&2
        exit 1
    fi
    wheel=$(ls "$work"/wheel/lowbit-*.whl)
    echo "   built in $(( $(date +%s) - t0 )) s"
fi
echo "   $(basename "$wheel"), sha256 $(sha256sum "$wheel" | cut -c1-16)"

summary=()
status=0
for v in "${versions[@]}"; do
    venv="$work/venv-$v"
    log="$work/logs/torch-$v.log"
    cons="$work/constraints-$v.txt"
    echo "torch==$v" > "$cons"
    echo "== torch $v: venv $venv (log $log)"
    t0=$(date +%s)
    rm -rf "$venv"
    : > "$log"
    line=""
    {
        "$py" -m venv "$venv" &&
        PIP_CONSTRAINT="$cons" "$venv/bin/python" -m pip install -q "torch==$v" &&
        PIP_CONSTRAINT="$cons" "$venv/bin/python" -m pip install -q "$wheel[test]"
    } >> "$log" 2>&1 || line="install failed"
    if [ -z "$line" ]; then
        info=$(cd "$work" && VENV="$venv" "$venv/bin/python" -c '
import os, torch, lowbit
assert os.path.realpath(lowbit.__file__).startswith(os.path.realpath(os.environ["VENV"])), lowbit.__file__
b = lowbit.build_info()
print("%s (cuda %s), lowbit %s cuda_built=%s isa=%s"
      % (torch.__version__, torch.version.cuda, b["version"], b["cuda_built"], b["cpu_isa"]))
' 2>> "$log")
        if [ -z "$info" ]; then
            line="import failed"
        else
            echo "   installed: $info"
            (cd "$work/src/tests" && "$venv/bin/python" -m pytest -q -p no:cacheprovider \
                "${pytest_args[@]}") >> "$log" 2>&1
            rc=$?
            res=$(grep -E "^=*\s*[0-9]+ (passed|failed)|^=*\s*[0-9]+ .* in [0-9.]+s" "$log" | tail -1 \
                  | sed -E 's/^=+ *//; s/ *=+$//')
            verdict=PASS
            [ $rc -eq 0 ] || { verdict=FAIL; status=1; }
            line="$verdict: ${res:-no pytest summary} (pytest exit $rc); installed $info"
        fi
    fi
    case "$line" in
        install*|import*) status=1; line="FAIL: $line (see $log)" ;;
    esac
    dt=$(( $(date +%s) - t0 ))
    summary+=("torch $v $line; ${dt} s in all")
    echo "   ${summary[-1]}"
    [ $keep -eq 1 ] || rm -rf "$venv"
done

echo "== summary (wheel $(basename "$wheel"))"
printf '%s\n' "${summary[@]}"
exit $status
