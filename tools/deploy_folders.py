"""Convert the corpus's optimum export folders in every deploy mode and measure them (docs/real-models.md).

For each export folder of the corpus (``models.corpus.load_folders``) and each mode of
``models.corpus.deploy.MODES``: whether ``mpcompile.convert_folder`` converts it (and how long
it takes), the share of nodes it stamped FP16/BF16 over all the folder's graphs, the share of float
graph inputs/outputs that are FP16, and whether the converted folder generates the FP32 folder's 20
greedy tokens for the three fixed prompts, in the plain-ONNX-Runtime loop
(``mpcompile.validate.generation``, every decoder layout), in the same loop on the FP16-faithful
evaluation and, where optimum is installed, with optimum's ORTModel classes. Encoders report ``last_hidden_state``'s relative max error and cosine.
Everything runs on the CPU (ONNX Runtime's CPU EP).

    .venv-corpus/bin/python tools/deploy_folders.py                                # print the table
    .venv-corpus/bin/python tools/deploy_folders.py --markdown docs/real-models.md # its "Folders" section

Run it in the corpus environment to get the optimum column (elsewhere it reads "optimum not installed").
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.corpus import load_folders  # noqa: E402
from models.corpus.deploy import (  # noqa: E402
    MODES,
    compare_generations,
    convert_export_folder,
    encoder_error,
    low_precision_share,
    optimum_generate,
    optimum_hidden_state,
    optimum_models,
)
from models.corpus.folders import encoder_feeds  # noqa: E402
from models.corpus.manifest import FolderEntry  # noqa: E402

# Measured here only: BF16 for the default target (cuda), which the CPU EP cannot run but the
# faithful evaluation can; the acceptance's modes are ``MODES``.
EXTRA_MODES = {"bf16-cuda": ({"precision": "bf16"}, ("--precision", "bf16"))}
ALL_MODES = {**MODES, **EXTRA_MODES}
BEGIN = "<!-- folders:begin (tools/deploy_folders.py) -->"
END = "<!-- folders:end -->"
_NOTE_LIMIT = 220


@dataclass
class Row:
    """One folder in one mode."""

    folder: str
    mode: str
    converts: str
    low_nodes: str = ""
    fp16_io: str = ""
    plain_ort: str = ""
    faithful: str = ""
    optimum: str = ""


def measure(entry: FolderEntry, mode: str, scratch: pathlib.Path, with_optimum: bool) -> Row:
    """Convert ``entry`` in ``mode`` into ``scratch`` and measure the result."""
    output = scratch / f"{entry.name}-{mode}"
    started = time.perf_counter()
    try:
        convert_export_folder(entry.path, output, **ALL_MODES[mode][0])
    except Exception as error:
        return Row(entry.name, mode, f"no: {_short(error)}")
    row = Row(entry.name, mode, f"yes ({time.perf_counter() - started:.1f} s)")
    low, total = low_precision_share(output)
    row.low_nodes = f"{100 * low / total:.0f} % of {total}" if total else "-"
    row.fp16_io = _fp16_io(entry, output)
    row.plain_ort = _guarded(lambda: _plain_ort(entry, output, faithful=False))
    row.faithful = _guarded(lambda: _plain_ort(entry, output, faithful=True))
    if not with_optimum:
        row.optimum = "optimum not installed"
    else:
        row.optimum = _guarded(lambda: _optimum(entry, output))
    return row


def _fp16_io(entry: FolderEntry, output: pathlib.Path) -> str:
    """FP16 float graph inputs and outputs over all of them, as the graphs declare them."""
    import onnx

    float_types = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    kinds = []
    for name in entry.files:
        graph = onnx.load(str(output / name), load_external_data=False).graph
        kinds += [
            value.type.tensor_type.elem_type
            for value in (*graph.input, *graph.output)
            if value.type.tensor_type.elem_type in float_types
        ]
    fp16 = sum(kind == onnx.TensorProto.FLOAT16 for kind in kinds)
    return f"{fp16}/{len(kinds)}"


def _plain_ort(entry: FolderEntry, output: pathlib.Path, faithful: bool) -> str:
    from mpcompile.validate.generation import ENCODER_DECODER, Generator, detect_layout

    if not entry.generates:
        return _encoder_plain(entry, output, faithful)
    layouts: list[bool | None] = [None]
    if detect_layout(entry.path).kind == ENCODER_DECODER:
        layouts = [
            flag
            for flag, name in ((True, "decoder_model_merged.onnx"), (False, "decoder_with_past_model.onnx"))
            if (entry.path / name).is_file()
        ]
    parts = []
    for merged in layouts:
        reference_generator = Generator(entry.path, merged=merged)
        reference = [reference_generator.generate(prompt, entry.new_tokens) for prompt in entry.prompts]
        generator = Generator(output, merged=merged, faithful=faithful)
        label = _layout_label(generator.layout.files)
        try:
            runs = [generator.generate(prompt, entry.new_tokens) for prompt in entry.prompts]
        except Exception as error:
            parts.append(f"{label}: {_short(error)}")
            continue
        parts.append(f"{label}: {_agreement(len(entry.prompts), compare_generations(reference, runs))}")
    return "; ".join(parts)


def _optimum(entry: FolderEntry, output: pathlib.Path) -> str:
    if not entry.generates:
        (model,) = optimum_models(entry, output).values()
        (reference,) = optimum_models(entry, entry.path).values()
        names = set(model.input_names)
        errors = [
            encoder_error(optimum_hidden_state(reference, feeds), optimum_hidden_state(model, feeds))
            for feeds in (encoder_feeds(prompt, names) for prompt in entry.prompts)
        ]
        return _encoder_text(errors)
    parts = []
    for name, model in optimum_models(entry, output).items():
        tokens = [optimum_generate(model, prompt, entry.new_tokens) for prompt in entry.prompts]
        same = sum(got == expected for got, expected in zip(tokens, entry.reference, strict=True))
        parts.append(f"{name}: {same}/{len(entry.prompts)} prompts identical")
    return "; ".join(parts)


def _encoder_plain(entry: FolderEntry, output: pathlib.Path, faithful: bool) -> str:
    import onnxruntime as ort

    from mpcompile.evaluate.faithful import FaithfulSession

    reference = ort.InferenceSession(str(entry.path / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {value.name for value in reference.get_inputs()}
    if faithful:
        evaluation = FaithfulSession(str(output / "model.onnx"))
        run = lambda feeds: evaluation.run(feeds)["last_hidden_state"]  # noqa: E731
    else:
        session = ort.InferenceSession(str(output / "model.onnx"), providers=["CPUExecutionProvider"])
        run = lambda feeds: session.run(["last_hidden_state"], feeds)[0]  # noqa: E731
    errors = []
    for prompt in entry.prompts:
        feeds = encoder_feeds(prompt, names)
        errors.append(encoder_error(reference.run(["last_hidden_state"], feeds)[0], run(feeds)))
    return _encoder_text(errors)


def _encoder_text(errors: Sequence[tuple[float, float]]) -> str:
    worst = max(relative for relative, _ in errors)
    cosine = min(cosine for _, cosine in errors)
    return f"last_hidden_state: rel. max error {worst:.1e}, cosine {cosine:.6f}"


def _agreement(prompts: int, divergences: Sequence[object]) -> str:
    text = f"{prompts - len(divergences)}/{prompts} prompts identical"
    return text + (f" ({'; '.join(map(str, divergences))})" if divergences else "")


def _layout_label(files: Sequence[str]) -> str:
    if "decoder_model_merged.onnx" in files:
        return "merged"
    if "decoder_with_past_model.onnx" in files:
        return "with-past"
    return "with past"


def _guarded(run) -> str:
    try:
        return run()
    except Exception as error:
        return _short(error)


def _short(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= _NOTE_LIMIT else text[: _NOTE_LIMIT - 3] + "..."


def markdown(rows: Sequence[Row], command: str, seconds: float) -> str:
    """The "Folders" section of docs/real-models.md, between its markers."""
    import onnxruntime

    import mpcompile

    optimum = _version("optimum-onnx")
    lines = [
        BEGIN,
        "## Folders",
        "",
        f"Generated by `tools/deploy_folders.py`. Command: `{command}`; {seconds / 60:.1f} min; "
        f"mpcompile {mpcompile.__version__}, onnxruntime {onnxruntime.__version__}, optimum-onnx {optimum}, "
        f"Python {platform.python_version()}. **Measured on the CPU** (ONNX Runtime's CPU EP, which runs "
        "FP16 nodes without an FP16 kernel in FP32 behind its own Casts).",
        "",
        "The corpus's whole optimum export folders (docs/corpus.md), each converted as a folder "
        "(`mpcompile convert DIR -o OUT` / `mpcompile.convert_folder`) in each mode. `low-precision nodes`: "
        "nodes stamped FP16/BF16 over all the folder's graphs (subgraphs included); `FP16 float IO`: FP16 "
        "float graph inputs and outputs over all of them; the token columns: prompts (of 3) whose 20 greedy "
        "tokens equal the FP32 folder's, in the plain-ONNX-Runtime loop (`mpcompile.validate.generation`; "
        "every decoder layout: merged, and the decoder / decoder-with-past pair) and with optimum's "
        "ORTModel classes (`generate`, `min_new_tokens=20`); `faithful`: the same loop on mpcompile's "
        "FP16-faithful CPU evaluation (every FP16/BF16 node output rounded as a GPU stores it), the "
        "judge of what a GPU would generate. A divergence gives the step, the logits' cosine and "
        "FP32's top-2 margin there. The FP32 folders reproduce the seeded torch model's tokens "
        "(checked when the corpus is built). `--precision bf16` (target cuda) is measured here only: "
        "the CPU EP has no BF16 kernels for it, the faithful evaluation runs it.",
        "",
        "A 0 % low-precision share means the mode left every node FP32 (for `--target cpu`, the "
        "reason is `no-kernel:CPUExecutionProvider`): agreement with FP32 then says nothing about "
        "FP16/BF16 numerics.",
        "",
        "| folder | mode | converts | low-precision nodes | FP16 float IO | plain ORT vs FP32 "
        "| faithful vs FP32 | optimum vs FP32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [f"`{row.folder}`", f"`{' '.join(ALL_MODES[row.mode][1]) or 'convert'}`", row.converts]
        cells += [row.low_nodes, row.fp16_io, row.plain_ort, row.faithful, row.optimum]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    lines.append(END)
    return "\n".join(lines) + "\n"


def replace_section(document: str, section: str) -> str:
    """``document`` with its Folders section (between the markers) replaced, or appended."""
    if BEGIN in document and END in document:
        head, rest = document.split(BEGIN, 1)
        return head + section + rest.split(END, 1)[1].lstrip("\n")
    return document.rstrip("\n") + "\n\n" + section


def _version(package: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", help="replace (or add) the Folders section of this document")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these folders")
    parser.add_argument("--modes", nargs="+", choices=sorted(ALL_MODES), help="only these modes")
    args = parser.parse_args(argv)
    try:
        entries = load_folders(status="ok")
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    entries = [entry for entry in entries if not args.only or entry.name in args.only]
    entries = [entry for entry in entries if entry.plain_fp16_generates or args.only]
    if not entries:
        print("error: the corpus has no export folders (python -m models.corpus build)", file=sys.stderr)
        return 2
    with_optimum = importlib.util.find_spec("optimum.onnxruntime") is not None
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="deploy-folders-") as scratch:
        for entry in entries:
            for mode in args.modes or ALL_MODES:
                row = measure(entry, mode, pathlib.Path(scratch), with_optimum)
                print(" | ".join(vars(row).values()), flush=True)
                rows.append(row)
    command = "python tools/deploy_folders.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:]))
    section = markdown(rows, command.strip(), time.perf_counter() - started)
    if args.markdown:
        path = pathlib.Path(args.markdown)
        path.write_text(replace_section(path.read_text() if path.is_file() else "", section))
    else:
        print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
