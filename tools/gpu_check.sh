#!/usr/bin/env bash
# GPU check: validate the BERT-style encoder (base: 12 layers, hidden 768) converted to FP16 on the
# CUDA and TensorRT execution providers and print the speedups. Needs a CUDA machine with
# onnxruntime-gpu (see docs/gpu-check.md for bringing the wheel to a machine without network).
#
#   bash tools/gpu_check.sh                 # results under $OUT (or a temporary folder)
#   BATCH=8 SEQ=128 RUNS=100 bash tools/gpu_check.sh
#
# Environment: PYTHON (python3), OUT (where results go), WORK (where models go; default a temp
# folder), PRESET (base), BATCH (8), SEQ (128), RUNS (100), WARMUP (10), EPS (default: whichever
# of cuda/tensorrt load here, probed first; TensorRT needs its libraries, libnvinfer).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PRESET=${PRESET:-base}
BATCH=${BATCH:-8}
SEQ=${SEQ:-128}
RUNS=${RUNS:-100}
WARMUP=${WARMUP:-10}
if [ -z "${WORK:-}" ]; then
    WORK=$(mktemp -d -t mpcompile-gpu-check.XXXXXX)
    trap 'rm -f "$WORK"/encoder*.onnx*' EXIT  # models we made in a temp folder; results stay
fi
OUT=${OUT:-$WORK}
mkdir -p "$WORK" "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# onnxruntime-gpu loads CUDA, cuBLAS, cuFFT, cuRAND and cuDNN by soname: make the pip-installed
# NVIDIA libraries (nvidia-* packages, e.g. those PyTorch brings) findable.
NVIDIA_LIBS=$("$PYTHON" - <<'EOF'
import glob
import os
import site
import sys

roots = [p for p in sys.path if p.endswith("site-packages")] + site.getsitepackages()
dirs = {d for root in roots for d in glob.glob(os.path.join(root, "nvidia", "**", "lib"), recursive=True)}
print(":".join(sorted(dirs)))
EOF
)
if [ -n "$NVIDIA_LIBS" ]; then
    export LD_LIBRARY_PATH="$NVIDIA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not available"
"$PYTHON" - <<'EOF'
import onnxruntime as ort
print(f"onnxruntime {ort.__version__}, providers offered: {', '.join(ort.get_available_providers())}")
EOF

if [ -z "${EPS:-}" ]; then
    echo "== probing which GPU execution providers load"
    EPS=$("$PYTHON" - <<'EOF'
import sys
import onnx
from onnx import TensorProto, helper
import onnxruntime as ort

model = helper.make_model(
    helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]),
    opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 10
ort.set_default_logger_severity(4)
loaded = []
for short, provider in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
    if provider not in ort.get_available_providers():
        print(f"{short}: not offered by this onnxruntime", file=sys.stderr)
        continue
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=[provider, "CPUExecutionProvider"])
        ok = provider in session.get_providers()
    except Exception as exc:
        ok = False
        print(f"{short}: {str(exc).splitlines()[0][:200]}", file=sys.stderr)
    print(f"{short}: {'loads' if ok else 'does not load'}", file=sys.stderr)
    if ok:
        loaded.append(short)
print(",".join(loaded))
EOF
)
fi
if [ -z "$EPS" ]; then
    echo "error: neither the CUDA nor the TensorRT execution provider loads on this machine" >&2
    exit 15
fi
echo "execution providers to check: $EPS"

echo "== building the $PRESET encoder and converting it to FP16"
start=$(date +%s)
"$PYTHON" tools/bench/make_encoder.py --preset "$PRESET" -o "$WORK/encoder.onnx"
"$PYTHON" -m mpcompile.cli convert "$WORK/encoder.onnx" -o "$WORK/encoder.fp16.onnx" --overwrite
echo "built and converted in $(( $(date +%s) - start )) s"

echo "== validate (batch $BATCH, sequence $SEQ, $RUNS timed runs after $WARMUP warm-up)"
set +e
"$PYTHON" -m mpcompile.cli validate "$WORK/encoder.onnx" "$WORK/encoder.fp16.onnx" \
    --ep "$EPS" --shape "batch:$BATCH" --shape "sequence:$SEQ" \
    --runs "$RUNS" --warmup "$WARMUP" --save "$OUT/gpu_check.json"
status=$?
set -e

echo "== speedups"
"$PYTHON" - "$OUT/gpu_check.json" <<'EOF'
import json
import sys

result = json.load(open(sys.argv[1]))
print(f"onnxruntime {result['onnxruntime']}, inputs {result['inputs']['shapes']}, verdict "
      f"{'PASSED' if result['passed'] else 'FAILED'}")
print(f"{'EP':10} {'model':28} {'p50 FP32 ms':>12} {'p50 ms':>10} {'speedup':>8}  accuracy")
for row in result["eps"]:
    if row["status"] == "skipped":
        print(f"{row['ep']:10} skipped: {row['reason']}")
        continue
    latency = row["latency"] or {}
    original, converted = latency.get("original") or {}, latency.get("converted") or {}
    what = "FP32 + TensorRT FP16 mode" if row["role"] == "tensorrt-fp16-baseline" else "mpcompile FP16"
    speedup = latency.get("speedup")
    worst = max((o["max_abs_err"] for o in row["outputs"] if isinstance(o["max_abs_err"], float)), default=0.0)
    print(f"{row['ep']:10} {what:28} {original.get('p50_ms', float('nan')):12.3f} "
          f"{converted.get('p50_ms', float('nan')):10.3f} "
          f"{(f'{speedup:.2f}x' if isinstance(speedup, float) else '-'):>8}  "
          f"{row['status']} (max abs err {worst:.3g})")
EOF
echo "results: $OUT/gpu_check.json"
exit $status
