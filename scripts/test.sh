#!/usr/bin/env bash
# scripts/test.sh: README command 2 — installs lowbit and its test extras into ./.venv (torch
# 2.13.0, the CPU build) and runs the test suite. LOWBIT_CUDA=auto compiles the CUDA kernels
# whenever nvcc is found; CUDA tests skip without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q ".[test]"
.venv/bin/python -c "import lowbit, json; print(json.dumps(lowbit.build_info()))"
cd tests && ../.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
