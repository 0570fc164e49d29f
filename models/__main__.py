"""``python -m models NAME -o PATH`` writes a zoo model; ``python -m models --list`` lists them."""

from __future__ import annotations

import argparse
import sys

import models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models", description="Write a deterministic FP32 ONNX model."
    )
    parser.add_argument("name", nargs="?", help="zoo model name (see --list)")
    parser.add_argument("-o", "--output", help="output .onnx path (default: NAME.onnx)")
    parser.add_argument("--list", action="store_true", help="list the zoo models and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name in sorted(models.ZOO):
            print(name)
        return 0
    if not args.name:
        parser.error("give a model NAME or --list")
    if args.name not in models.ZOO:
        print(f"error: unknown model {args.name!r}; run `python -m models --list`", file=sys.stderr)
        return 2
    path = args.output or f"{args.name}.onnx"
    models.save(args.name, path)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
