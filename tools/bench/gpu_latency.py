"""GPU latency: FP32 vs mpcompile FP16 vs ONNX Runtime's transformers FP16, on CUDA and TensorRT.

    python tools/bench/gpu_latency.py                               # base encoder, batch 1/8/32, seq 128
    python tools/bench/gpu_latency.py --preset tiny --eps cpu --batches 1 --runs 5   # smoke test anywhere

For the BERT-style encoder (tools/bench/make_encoder.py) it builds, once each:

- ``fp32``: the FP32 model;
- ``mpcompile``: ``mpcompile.convert(target=cuda)`` (fusions off);
- ``ort-fp16``: ``onnxruntime.transformers`` ``OnnxModel.convert_float_to_float16(keep_io_types=True)``
  of the same graph (fusions off);
- ``mpcompile+fusions``: ``mpcompile.convert(optimize="transformer", target=cuda)``;
- ``ort-fp16+fusions``: ORT's transformers optimizer (bert fusions) then its FP16 conversion.

and times each on every requested execution provider that loads (IO binding on CUDA/TensorRT, so
host/device copies are excluded), printing p50 latency and throughput per batch size, and the
ratios the issue's targets name: mpcompile FP16 vs FP32 (target >= 2x on CUDA) and vs ORT's FP16
of the same graph (target >= 1x). Results go to ``--out`` as JSON and markdown.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import numpy as np
import onnx

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import mpcompile  # noqa: E402
from mpcompile.validate.latency import measure  # noqa: E402
from mpcompile.validate.runners import EP_ALIASES, EpLoadError, OrtRunner, provider_options  # noqa: E402
from tools.bench.make_encoder import PRESETS, write_encoder  # noqa: E402

VARIANTS = ("fp32", "mpcompile", "ort-fp16", "mpcompile+fusions", "ort-fp16+fusions")


def build_variants(preset_name: str, work: pathlib.Path) -> dict[str, pathlib.Path]:
    """Write the FP32 encoder and its four FP16 conversions; returns name -> path."""
    from onnxruntime.transformers.onnx_model import OnnxModel
    from onnxruntime.transformers.optimizer import optimize_model

    preset = PRESETS[preset_name]
    paths = {name: work / f"{name.replace('+', '_')}.onnx" for name in VARIANTS}
    write_encoder(preset, paths["fp32"])
    mpcompile.convert_file(paths["fp32"], paths["mpcompile"], target="cuda")
    mpcompile.convert_file(paths["fp32"], paths["mpcompile+fusions"], target="cuda", optimize="transformer")

    plain = OnnxModel(onnx.load(paths["fp32"]))
    plain.convert_float_to_float16(keep_io_types=True)
    plain.save_model_to_file(str(paths["ort-fp16"]))

    fused = optimize_model(
        str(paths["fp32"]), model_type="bert", num_heads=preset.heads, hidden_size=preset.hidden, opt_level=0
    )
    fused.convert_float_to_float16(keep_io_types=True)
    fused.save_model_to_file(str(paths["ort-fp16+fusions"]))
    return paths


def encoder_feeds(batch: int, sequence: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "input_ids": rng.integers(0, vocab, size=(batch, sequence), dtype=np.int64),
        "attention_mask": np.ones((batch, sequence), dtype=np.int64),
    }


def time_variant(path: pathlib.Path, provider: str, feeds, runs: int, warmup: int, cache: str) -> dict | str:
    runner = OrtRunner(path.name, str(path), provider, provider_options(provider, cache))
    try:
        runner.activate()
    except EpLoadError as exc:
        return f"skipped: {exc}"
    stats = measure(runner.timer(feeds), runs=runs, warmup=warmup)
    batch = next(iter(feeds.values())).shape[0]
    return {"p50_ms": stats.p50_ms, "p90_ms": stats.p90_ms, "samples_per_s": batch * 1e3 / stats.p50_ms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="base", choices=sorted(PRESETS))
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--eps", default="cuda,tensorrt")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--work", type=pathlib.Path, help="folder for the models (default: a temp folder)")
    parser.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path("gpu_latency"), help="results prefix"
    )
    args = parser.parse_args(argv)

    work = args.work or pathlib.Path(tempfile.mkdtemp(prefix="mpcompile-gpu-latency-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    paths = build_variants(args.preset, work)
    print(f"built {len(paths)} models in {time.perf_counter() - start:.1f} s under {work}", flush=True)

    providers = [
        EP_ALIASES.get(name.strip().lower(), name.strip()) for name in args.eps.split(",") if name.strip()
    ]
    vocab = PRESETS[args.preset].vocab
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="trt-cache-") as cache:
        for provider in providers:
            for batch in (int(b) for b in args.batches.split(",")):
                feeds = encoder_feeds(batch, args.seq, vocab)
                row: dict = {"provider": provider, "batch": batch, "sequence": args.seq}
                for name, path in paths.items():
                    row[name] = time_variant(path, provider, feeds, args.runs, args.warmup, cache)
                    print(f"{provider} batch {batch} {name}: {row[name]}", flush=True)
                results.append(row)

    lines = [
        f"| EP | batch | {' | '.join(f'{v} p50 ms' for v in VARIANTS)} | mpcompile vs fp32 | mpcompile vs ort-fp16 | "
        "fused: mpcompile vs ort |",
        "|---|---:|" + "---:|" * (len(VARIANTS) + 3),
    ]
    for row in results:

        def p50(name: str, row=row) -> float | None:
            value = row[name]
            return value["p50_ms"] if isinstance(value, dict) else None

        def ratio(a: str, b: str) -> str:
            if p50(a) is None or p50(b) is None:
                return "n/a"
            return f"{p50(b) / p50(a):.2f}x"

        cells = [f"{p50(v):.2f}" if p50(v) is not None else "skipped" for v in VARIANTS]
        lines.append(
            f"| {row['provider']} | {row['batch']} | {' | '.join(cells)} | {ratio('mpcompile', 'fp32')} | "
            f"{ratio('mpcompile', 'ort-fp16')} | {ratio('mpcompile+fusions', 'ort-fp16+fusions')} |"
        )
    table = "\n".join(lines)
    print(table)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    args.out.with_suffix(".md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
