"""Names users choose from (CLI and API), kept free of heavy imports so ``--help`` stays fast."""

from __future__ import annotations

# Target name -> ONNX Runtime execution provider (None: no provider constraint).
TARGET_PROVIDERS: dict[str, str | None] = {
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "cpu": "CPUExecutionProvider",
    "dml": "DmlExecutionProvider",
    "any": None,
}
TARGET_NAMES = tuple(TARGET_PROVIDERS)
DEFAULT_TARGET = "cuda"

OPTIMIZE_LEVELS = ("basic", "extended", "transformer")

PRECISIONS = ("fp16", "bf16")
DEFAULT_PRECISION = "fp16"
