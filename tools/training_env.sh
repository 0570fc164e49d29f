#!/usr/bin/env bash
# Create the separate ONNX Runtime training environment (.venv-training by default).
#
# onnxruntime-training-cpu 1.19.2 is the last ORT training release: it cannot share an
# environment with onnxruntime/onnxruntime-gpu, loads models up to IR version 10, needs
# numpy < 2 and imports torch without declaring it. onnxscript is there for torch.onnx.export's
# default (dynamo) exporter, which tests/test_training_exports.py uses, and transformers for its
# Hugging Face models. mpcompile goes in editable and
# without dependencies so the pins below stay as they are.
#
# Usage: bash tools/training_env.sh [VENV_DIR]     (idempotent; reuses a complete venv)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo_root/.venv-training}"
python_bin="${PYTHON:-python3}"
stamp="$venv/.mpcompile-training-env"
requirements=(
    "onnxruntime-training-cpu==1.19.2"
    "torch==2.13.0"
    "onnx==1.17.*"
    "onnx-ir==1.1.0"
    "onnxscript==0.7.2"  # torch's default (dynamo) exporter needs it; 0.7.2 takes onnx 1.17 / onnx-ir 1.1
    "transformers==4.57.6"  # the Hugging Face models tests/test_training_exports.py exports and trains
    "numpy<2"
    "ml_dtypes>=0.5"
    "click>=8.1"
    "rich>=13"
    "pytest>=8"
    "setuptools>=68"
    "wheel"
)

install_mpcompile() {
    # Editable, without dependencies, so the pins above stay as they are.
    "$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$repo_root"
}

if [[ -f "$stamp" && "$(cat "$stamp")" == "${requirements[*]}" ]]; then
    install_mpcompile  # refresh the editable install (cheap): the package layout may have changed
    echo "training environment ready: $venv"
    exit 0
fi

"$python_bin" -c 'import sys; sys.exit(0 if (3, 9) <= sys.version_info[:2] <= (3, 12) else 1)' || {
    echo "error: onnxruntime-training-cpu 1.19.2 needs Python 3.9-3.12; set PYTHON=..." >&2
    exit 1
}
"$python_bin" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet "${requirements[@]}"
install_mpcompile
"$venv/bin/python" -c 'import onnxruntime.training.api, onnxruntime.training.artifacts, onnx_ir, mpcompile'
echo "${requirements[*]}" > "$stamp"
echo "training environment ready: $venv"
