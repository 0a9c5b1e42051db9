#!/usr/bin/env bash
# benchmarks/quality_grid.sh: the QAT quality grid — the main job (examples/qat_selfdistill.py)
# over specs x training data x step budgets, one run after another, each writing
# OUT/<spec>-<data>-<steps>/results.json; then benchmarks/quality_table.py prints the table.
# Usage: bash benchmarks/quality_grid.sh OUT "int:2:64 int:3:64 nf:3:64" "generated text" "40 300"
#        [extra flags for qat_selfdistill.py...]
# The generated data are cached in OUT/gen_cache (keyed by prompts, tokens, temperature, seed, not
# by spec), so only the first run of each budget samples. Runs already holding a results.json
# are skipped, so an interrupted grid resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?OUT folder}; specs=${2:-"int:2:64 int:3:64 nf:3:64"}; datas=${3:-"generated text"}
budgets=${4:-"40"}; shift $(( $# < 4 ? $# : 4 ))
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
for steps in $budgets; do
  for spec in $specs; do
    IFS=: read -r fmt bits g <<< "$spec"
    for d in $datas; do
      run="$out/$fmt$bits-g$g-$d-$steps"
      [ -f "$run/results.json" ] && { echo "== $run: done already"; continue; }
      echo "== $run: $(date -u +%H:%M:%S)"
      "$py" examples/qat_selfdistill.py --format "$fmt" --bits "$bits" --group-size "$g" \
        --data "$d" --steps "$steps" --out "$run" --no-pack "$@" > "$run.log" 2>&1 \
        || { echo "   failed, see $run.log"; continue; }
      tail -n 3 "$run.log"
    done
  done
done
"$py" benchmarks/quality_table.py "$out"
