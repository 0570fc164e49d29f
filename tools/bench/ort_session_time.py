"""How long ONNX Runtime's CPU EP takes to create a session on a model, and to run it once.

    python tools/bench/ort_session_time.py MODEL.onnx [all|basic|none]

Prints one JSON line: session creation seconds, one run's seconds (batch 1, sequence 16 feeds
from ``models.make_inputs``) and whether every output is finite. Run it under ``timeout``.
"""

import json
import pathlib
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
import models

path, level = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "all")
opts = ort.SessionOptions()
opts.log_severity_level = 3
opts.graph_optimization_level = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}[level]
t = time.perf_counter()
s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
t1 = time.perf_counter()
feeds = models.make_inputs(onnx.load(path, load_external_data=False), dims={"batch": 1, "sequence": 16})
outs = s.run(None, feeds)
t2 = time.perf_counter()
print(
    json.dumps(
        {
            "model": path,
            "level": level,
            "session_s": round(t1 - t, 1),
            "run_s": round(t2 - t1, 2),
            "finite": bool(all(np.isfinite(o).all() for o in outs)),
        }
    )
)
