#!/usr/bin/env bash
# Create .venv/ with the CPU build of torch and install actstore with its model side and dev tools
# (`.[models,s3,dev]`; the reader alone, for laptops and query workers, is a plain `pip install .`).
# GPU: set TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128").
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
.venv/bin/python -m pip install -q -e ".[models,s3,dev]"
echo "actstore installed in .venv/ ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
