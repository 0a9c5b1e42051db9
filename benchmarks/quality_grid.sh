#!/usr/bin/env bash
# benchmarks/quality_grid.sh: the QAT quality grid — the main job (examples/qat_selfdistill.py)
# over specs x training data x step budgets x methods x learning rates, one run after another,
# each writing OUT/<spec>-<data>-<steps>-<method>-lr<lr>/results.json; then
# benchmarks/quality_table.py prints the table (CPU seconds per run).
# Usage: bash benchmarks/quality_grid.sh OUT "int:2:64 int:3:64" "generated text" "40 300" \
#          ["plain clip block both"] ["5e-5 2e-4"] [extra flags for qat_selfdistill.py...]
# Methods: plain = BitDistiller's QAT after the clipping calibration; clip = --learn clip (the
# clipping factors trained too); block = --block-init $BLOCK_INIT (EfficientQAT's Block-AP before
# QAT, default 10 steps per block); both = the two. The learning rate is QAT's --lr (block-wise
# init keeps its own --block-lr). Methods default to "plain", learning rates to "5e-5".
# The generated data are cached in OUT/gen_cache (keyed by prompts, tokens, temperature, seed, not
# by spec or method), so only the first run of each budget samples. Runs already holding a
# results.json are skipped, so an interrupted grid resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?OUT folder}; specs=${2:-"int:2:64 int:3:64 nf:3:64"}; datas=${3:-"generated text"}
budgets=${4:-"40"}; shift $(( $# < 4 ? $# : 4 ))
# optional 5th and 6th arguments (anything not starting with "-" is taken as one)
methods="plain"; lrs="5e-5"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then methods=$1; shift; fi
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then lrs=$1; shift; fi
block=${BLOCK_INIT:-10}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
for steps in $budgets; do
  for spec in $specs; do
    IFS=: read -r fmt bits g <<< "$spec"
    for d in $datas; do
      for m in $methods; do
        case $m in
          plain) flags=() ;;
          clip) flags=(--learn clip) ;;
          block) flags=(--block-init "$block") ;;
          both) flags=(--learn clip --block-init "$block") ;;
          *) echo "method: one of plain clip block both, got $m" >&2; exit 2 ;;
        esac
        for lr in $lrs; do
          run="$out/$fmt$bits-g$g-$d-$steps-$m-lr$lr"
          [ -f "$run/results.json" ] && { echo "== $run: done already"; continue; }
          echo "== $run: $(date -u +%H:%M:%S)"
          "$py" examples/qat_selfdistill.py --format "$fmt" --bits "$bits" --group-size "$g" \
            --data "$d" --steps "$steps" --lr "$lr" "${flags[@]}" --out "$run" --no-pack "$@" \
            > "$run.log" 2>&1 || { echo "   failed, see $run.log"; continue; }
          tail -n 3 "$run.log"
        done
      done
    done
  done
done
"$py" benchmarks/quality_table.py "$out"
