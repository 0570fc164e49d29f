#!/usr/bin/env bash
# Create the environment that builds the exporter corpus (.venv-corpus by default).
#
# It holds the pins of pyproject's [corpus] extra: torch 2.14.1 with torchvision 0.29.1 (PyPI's
# torchvision does not import beside the torch 2.13.0 CPU build), transformers 4.57.6, optimum
# 2.1.0 with optimum-onnx 0.1.0 (which needs transformers < 4.58) and onnxscript for the dynamo
# exporter, timm (efficientvit_b0) and ultralytics (its own YOLO exporter). mpcompile goes in
# editable with the extra, so the tests run from it too.
#
# Usage: bash tools/corpus_env.sh [VENV_DIR]     (idempotent; reuses a complete venv)
# Then:  VENV_DIR/bin/python -m models.corpus build --jobs 2
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo_root/.venv-corpus}"
python_bin="${PYTHON:-python3}"
stamp="$venv/.mpcompile-corpus-env"

# The stamp is the [corpus] extra itself: a change of any pin rebuilds the environment.
wanted="$("$python_bin" - "$repo_root/pyproject.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print(" ".join(tomllib.load(f)["project"]["optional-dependencies"]["corpus"]))
EOF
)"

check_imports() {
    "$venv/bin/python" -c 'import torch, torchvision.ops, transformers, optimum.exporters.onnx, onnxscript, onnxruntime, timm, ultralytics, models.corpus'
}

if [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]]; then
    # Refresh the editable install (cheap): the package layout may have changed.
    "$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$repo_root"
    echo "corpus environment ready: $venv"
    exit 0
fi

"$python_bin" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 10) else 1)' || {
    echo "error: the corpus environment needs Python >= 3.10; set PYTHON=..." >&2
    exit 1
}
"$python_bin" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet -e "$repo_root[corpus]"
(cd "$repo_root" && check_imports)
echo "$wanted" > "$stamp"
echo "corpus environment ready: $venv"
