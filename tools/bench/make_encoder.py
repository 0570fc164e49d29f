"""Write a deterministic BERT-style encoder for the conversion benchmarks.

    python tools/bench/make_encoder.py --preset base -o /tmp/bench/base.onnx
    python tools/bench/make_encoder.py --layers 4 --hidden 128 --heads 4 --ffn 512 -o enc.onnx
    python tools/bench/make_encoder.py --list

Weights are generated lazily, one tensor at a time, while the file is written, so models with
external data (xl, > 2 GB) never hold more than one weight in memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import time

import onnx_ir as ir

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from models import bert_encoder  # noqa: E402

# Tensors of at least this many bytes go to the external data file.
EXTERNAL_THRESHOLD_BYTES = 1024


@dataclasses.dataclass(frozen=True)
class Preset:
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int = 30522
    max_seq: int = 512
    external_data: bool = False
    interleave_blocked: bool = False
    blocked_ops: tuple[str, ...] = ("Pow",)


def _deep(layers: int, interleave_blocked: bool = False, blocked_ops: tuple[str, ...] = ("Pow",)) -> Preset:
    return Preset(
        layers,
        64,
        4,
        256,
        vocab=1000,
        max_seq=128,
        interleave_blocked=interleave_blocked,
        blocked_ops=blocked_ops,
    )


PRESETS: dict[str, Preset] = {
    "tiny": Preset(2, 64, 4, 256, vocab=1000, max_seq=128),
    "base": Preset(12, 768, 12, 3072),  # ~110M parameters, ~440 MB
    "large": Preset(24, 1024, 16, 4096),  # ~335M parameters, ~1.3 GB
    "xl": Preset(24, 1536, 24, 6144, external_data=True),  # ~730M parameters, ~2.9 GB external data
    # Deep-narrow stress graphs: 34 nodes per layer + 13 (deep1536: 52,237 nodes; deep2944: 100,109).
    **{f"deep{n}": _deep(n) for n in (24, 96, 384, 768, 1536, 2944)},
    # Same with a blocked Pow(x, 1) after every projection (40 nodes per layer): allowed and
    # blocked ops alternate, so every layer crosses precision boundaries.
    **{f"deep{n}-blocked": _deep(n, interleave_blocked=True) for n in (24, 96, 384, 768, 1536, 2944)},
    # Pow(x, 1) then Max(y, y) after every projection (46 nodes per layer): blocked for mpcompile
    # (Pow) and for onnxconverter-common and ORT's transformers (Max), so every converter alternates.
    **{
        f"deep{n}-blocked-all": _deep(n, interleave_blocked=True, blocked_ops=("Pow", "Max"))
        for n in (24, 96, 384, 768, 1536, 2944)
    },
}


def write_encoder(preset: Preset, path: str | os.PathLike, seed: int = 0) -> ir.Model:
    """Build ``preset`` with lazily generated weights and save it to ``path``."""
    model = bert_encoder.build_ir(
        layers=preset.layers,
        hidden=preset.hidden,
        heads=preset.heads,
        ffn=preset.ffn,
        vocab=preset.vocab,
        max_seq=preset.max_seq,
        interleave_blocked=preset.interleave_blocked,
        blocked_ops=preset.blocked_ops,
        seed=seed,
        lazy_weights=True,
    )
    path = pathlib.Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    if preset.external_data:
        data_name = path.name + ".data"
        ir.save(model, path, external_data=data_name, size_threshold_bytes=EXTERNAL_THRESHOLD_BYTES)
    else:
        ir.save(model, path)
    return model


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a named size (other flags override it)")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--hidden", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--ffn", type=int)
    parser.add_argument("--vocab", type=int)
    parser.add_argument("--max-seq", type=int)
    parser.add_argument(
        "--external-data",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write weights to PATH.data (default: only for xl)",
    )
    parser.add_argument(
        "--interleave-blocked",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="put a blocked Pow(x, 1) after every projection",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", help="output .onnx path")
    parser.add_argument("--list", action="store_true", help="list the presets and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.list:
        for name, preset in PRESETS.items():
            print(f"{name:16s} {preset}")
        return 0
    if not args.output:
        print("error: -o/--output is required", file=sys.stderr)
        return 2
    base = PRESETS[args.preset] if args.preset else PRESETS["tiny"]
    overrides = {
        field: getattr(args, field)
        for field in (
            "layers",
            "hidden",
            "heads",
            "ffn",
            "vocab",
            "max_seq",
            "external_data",
            "interleave_blocked",
        )
        if getattr(args, field) is not None
    }
    preset = dataclasses.replace(base, **overrides)
    if preset.hidden % preset.heads:
        print(f"error: hidden ({preset.hidden}) must be divisible by heads ({preset.heads})", file=sys.stderr)
        return 2
    start = time.perf_counter()
    model = write_encoder(preset, args.output, seed=args.seed)
    params = sum(
        v.const_value.size for v in model.graph.initializers.values() if v.dtype == ir.DataType.FLOAT
    )
    print(
        f"{args.output}: {len(model.graph)} nodes, {params / 1e6:.1f}M parameters, "
        f"{'external data' if preset.external_data else 'embedded weights'}, {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
