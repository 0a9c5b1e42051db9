#!/usr/bin/env bash
# scripts/demo.sh: README command 1 — installs lowbit into ./.venv (torch 2.13.0, CPU build) and
# runs the main example.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q .
.venv/bin/python examples/quickstart.py "$@"
