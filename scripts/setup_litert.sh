#!/usr/bin/env bash
# The PyTorch -> LiteRT converter (litert-torch) in its own environment, .venv/litert.
#
# Why a separate environment: litert-torch 0.10 pulls xdsl 0.28, which pins typing-extensions<4.13,
# and pydantic 2.11; apache-tvm-ffi needs typing-extensions>=4.13. pip cannot resolve both in one
# environment. So the converter lives in .venv/litert, which sees the main venv's packages (torch,
# numpy, hub's deps) through a .pth file placed *after* its own site-packages: its own older
# typing-extensions/pydantic win there, torch is not installed twice. compile/tflite_export.py runs
# the conversion in a subprocess of .venv/litert/bin/python. The main venv only gets ai-edge-litert
# (the interpreter, no xdsl), from requirements.txt.
#
# Usage: bash scripts/setup_litert.sh [MAIN_VENV]   (idempotent; ~1-2 min from the local wheel store)
set -euo pipefail
MAIN=${1:-.venv}
ENV="$MAIN/litert"
PIN="litert-torch==0.10.0"
STAMP="$ENV/.stamp-$(echo "$PIN" | sha256sum | cut -c1-12)"
[ -f "$STAMP" ] && exit 0
MAIN_PY="$MAIN/bin/python"
test -x "$MAIN_PY" || { echo "setup_litert: no main venv at $MAIN (run make setup)" >&2; exit 1; }
MAIN_SITE=$("$MAIN_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
BASE_PY=$("$MAIN_PY" -c 'import sys; print(sys._base_executable)')
echo "convhub setup: litert-torch converter environment in $ENV"
rm -rf "$ENV"
"$BASE_PY" -m venv "$ENV"
ENV_SITE=$("$ENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# "zz" sorts last: the main venv's packages come after the converter's own on sys.path
echo "$MAIN_SITE" > "$ENV_SITE/zz_convhub_main_venv.pth"
"$ENV/bin/pip" install -q --upgrade pip
# torch/torchvision are already visible through the .pth; the constraint keeps pip from replacing them
TORCH=$("$MAIN_PY" -c 'import torch; print(torch.__version__.split("+")[0])')
"$ENV/bin/pip" install -q "$PIN" "torch==$TORCH"
"$ENV/bin/python" -c "import litert_torch, ai_edge_quantizer, torch; print('litert-torch ok, torch', torch.__version__)"
touch "$STAMP"
