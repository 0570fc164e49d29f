"""Generate ``mpcompile/data/ort_schemas.json``: ONNX Runtime's schemas for the ops onnx does not define.

Usage (from the repository root, with onnxruntime installed)::

    python tools/gen_ort_schemas.py [-o mpcompile/data/ort_schemas.json]

The schemas come from the installed onnxruntime's registry
(``onnxruntime.capi.onnxruntime_pybind11_state.get_all_operator_schema()``); every schema onnx
itself defines (same domain, op and since_version) is left out. mpcompile reads the registry live
where onnxruntime is installed and falls back to this table otherwise
(``mpcompile/targets/ort_schemas.py``). The output is compact, deterministic JSON (sorted keys, no
whitespace); ``tests/test_ort_schemas.py`` proves the shipped file is what this script writes for
the onnxruntime and onnx versions it records.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "mpcompile" / "data" / "ort_schemas.json"


def render() -> str:
    """The table's text for the installed onnxruntime."""
    sys.path.insert(0, str(REPO_ROOT))
    from mpcompile.targets import ort_schemas

    schemas = ort_schemas.live_schemas()
    if schemas is None:
        raise SystemExit("error: needs onnxruntime with get_all_operator_schema() installed")
    document = ort_schemas.to_document(schemas, ort_schemas.live_runtime_version() or "")
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=pathlib.Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    args.output.write_text(render(), encoding="ascii")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
