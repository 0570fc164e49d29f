"""Generate mpcompile's execution-provider kernel tables from ONNX Runtime's OperatorKernels.md.

Usage (from the repository root)::

    python tools/gen_kernel_tables.py [PATH_TO_OperatorKernels.md] [-o mpcompile/data/kernels_ort.json]

The markdown is ONNX Runtime's ``docs/OperatorKernels.md`` (a copy lives in
``../shared/reference/ort-OperatorKernels.md``). Its layout: one table per execution provider,
domains opened by ``|**Operator Domain:** *name*||||`` rows, one row per (op, kernel version range),
continuation rows ``|||<version>|<types>|`` for further ranges of the same op. The output is
compact, deterministic JSON (sorted keys, no whitespace) so that ``tests/test_targets_tables.py``
can prove the shipped file is exactly what this script produces.

Output layout::

    {"format": 1,
     "source": {"file", "sha256", "upstream", "upstream_commit", "ort_version"},
     "providers": {EP: {domain: {op: {
         "signatures": [{"inputs": [[name, type_param_or_literal(, true if variadic)]], "outputs": [...]}],
         "kernels": [[since, until_or_null, {type_param: [types]}], ...]}}}}}

``until`` is null for an open range (``N+``). Kernel ranges are kept newest first, as in the file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import re
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE_IN_SHARED = pathlib.Path("shared") / "reference" / "ort-OperatorKernels.md"
DEFAULT_OUTPUT = REPO_ROOT / "mpcompile" / "data" / "kernels_ort.json"

# Facts about the copy in ../shared/reference (see its README): which upstream file and version it is.
UPSTREAM = "microsoft/onnxruntime docs/OperatorKernels.md"
UPSTREAM_COMMIT = "89b01b406ca7e94078913eea3189e11bef5654c5"
ORT_VERSION = "1.30.0-dev"
FORMAT_VERSION = 1

_SECTION = re.compile(r"^## Operators implemented by (\w+)\s*$")
_DOMAIN = re.compile(r"^\|\*\*Operator Domain:\*\* \*([\w.]+)\*\|")
_PARAM = re.compile(r"^\*(in|out)\* ([^:]+):\*\*([^*]+)\*\*$")
_CONSTRAINT = re.compile(r"^\*\*([^*]+)\*\* = (.*)$")
_EXACT = re.compile(r"^(\d+)$")
_OPEN = re.compile(r"^(\d+)\+$")
_CLOSED = re.compile(r"^\[(\d+), (\d+)\]$")


def find_default_source(start: pathlib.Path = REPO_ROOT) -> pathlib.Path | None:
    """``../shared/reference/ort-OperatorKernels.md`` beside the clone, or beside any folder above it.

    CI checks the repository out next to ``shared/``; a git worktree one level deeper finds it further up.
    """
    for folder in start.parents:
        candidate = folder / SOURCE_IN_SHARED
        if candidate.is_file():
            return candidate
    return None


class KernelDocError(ValueError):
    """The markdown does not have the layout this parser understands."""


def parse_version_range(text: str) -> tuple[int, int | None]:
    """``13`` -> (13, 13); ``[6, 12]`` -> (6, 12); ``14+`` -> (14, None)."""
    text = text.strip()
    if match := _EXACT.match(text):
        return int(match[1]), int(match[1])
    if match := _OPEN.match(text):
        return int(match[1]), None
    if match := _CLOSED.match(text):
        return int(match[1]), int(match[2])
    raise KernelDocError(f"unrecognised version range {text!r}")


def split_top_level(text: str, separator: str = ",") -> list[str]:
    """Split on ``separator`` outside parentheses (``map(int64,tensor(float))`` stays whole)."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == separator and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def parse_type_constraints(text: str) -> dict[str, list[str]]:
    """``**T** = tensor(double), tensor(float)<br/> **U** = ...`` -> {"T": [...], "U": [...]}."""
    constraints: dict[str, list[str]] = {}
    text = text.strip()
    if not text:
        return constraints
    for entry in text.split("<br/>"):
        match = _CONSTRAINT.match(entry.strip())
        if not match:
            raise KernelDocError(f"unrecognised type constraint {entry!r}")
        constraints[match[1]] = sorted(split_top_level(match[2]))
    return constraints


def parse_signatures(text: str) -> list[dict[str, list[list]]]:
    """The Parameters column: one or more signatures joined by ``<br><br>or<br><br>``."""
    signatures = []
    text = text.strip()
    if not text:
        return signatures
    for signature_text in text.split("<br><br>or<br><br>"):
        signature: dict[str, list[list]] = {"inputs": [], "outputs": []}
        for param in signature_text.split("<br>"):
            param = param.strip()
            if not param:
                continue
            match = _PARAM.match(param)
            if not match:
                raise KernelDocError(f"unrecognised parameter {param!r}")
            direction, name, type_name = match.groups()
            entry: list = [name.removesuffix("..."), type_name]
            if name.endswith("..."):
                entry.append(True)
            signature["inputs" if direction == "in" else "outputs"].append(entry)
        signatures.append(signature)
    return signatures


def parse_operator_kernels(markdown: str) -> dict[str, dict[str, dict[str, dict]]]:
    """Parse the whole document into {provider: {domain: {op: {"signatures", "kernels"}}}}."""
    providers: dict[str, dict[str, dict[str, dict]]] = {}
    provider: str | None = None
    domain: str | None = None
    op_entry: dict | None = None
    for line_number, line in enumerate(markdown.splitlines(), start=1):
        if match := _SECTION.match(line):
            provider, domain, op_entry = match[1], None, None
            providers.setdefault(provider, {})
            continue
        if provider is None or not line.startswith("|"):
            continue
        if match := _DOMAIN.match(line):
            domain, op_entry = match[1], None
            providers[provider].setdefault(domain, {})
            continue
        cells = line.split("|")
        if len(cells) != 6:
            continue  # the "| |" lines closing a domain
        if cells[1].strip() == "Op Name" or cells[1].startswith("---"):
            continue  # table header and separator
        if domain is None:
            raise KernelDocError(f"line {line_number}: kernel row outside a domain")
        _, name, params, version, types, _ = cells
        try:
            since, until = parse_version_range(version)
            kernel = [since, until, parse_type_constraints(types)]
            if name:
                if name in providers[provider][domain]:
                    raise KernelDocError(f"op {name} listed twice in {provider}/{domain}")
                op_entry = {"signatures": parse_signatures(params), "kernels": []}
                providers[provider][domain][name] = op_entry
            elif op_entry is None:
                raise KernelDocError("continuation row without an op")
        except KernelDocError as exc:
            raise KernelDocError(f"line {line_number}: {exc}") from None
        op_entry["kernels"].append(kernel)
    if not providers:
        raise KernelDocError("no '## Operators implemented by ...' sections found")
    return providers


def build_tables(source: pathlib.Path, ort_version: str = ORT_VERSION) -> dict:
    """The full package-data document for ``source``."""
    raw = source.read_bytes()
    return {
        "format": FORMAT_VERSION,
        "source": {
            "file": source.name,
            "sha256": hashlib.sha256(raw).hexdigest(),
            "upstream": UPSTREAM,
            "upstream_commit": UPSTREAM_COMMIT,
            "ort_version": ort_version,
        },
        "providers": parse_operator_kernels(raw.decode("utf-8")),
    }


def render(tables: dict) -> str:
    """Deterministic compact JSON, one trailing newline."""
    return json.dumps(tables, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "source", nargs="?", type=pathlib.Path, default=None, help="default: ../shared/reference/..."
    )
    parser.add_argument("-o", "--output", type=pathlib.Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--ort-version", default=ORT_VERSION, help="ORT version the markdown describes")
    args = parser.parse_args(argv)
    if args.source is None:
        args.source = find_default_source()
        if args.source is None:
            print(f"error: {SOURCE_IN_SHARED} not found beside {REPO_ROOT} or above it", file=sys.stderr)
            return 2
    if not args.source.is_file():
        print(f"error: {args.source}: no such file", file=sys.stderr)
        return 2
    try:
        text = render(build_tables(args.source, args.ort_version))
    except KernelDocError as exc:
        print(f"error: {args.source}: {exc}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="ascii", newline="\n")
    print(f"wrote {args.output} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
