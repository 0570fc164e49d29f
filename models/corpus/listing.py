"""Text views of a built corpus: one line per entry, or a Markdown table (docs/corpus.md)."""

from __future__ import annotations

from collections.abc import Iterable

from models.corpus.manifest import Entry, FolderEntry


def describe(entries: Iterable[Entry]) -> list[str]:
    """One line per entry: name, exporter, variant, status (and cause)."""
    return [
        f"{entry.name:42} {entry.exporter:11} {entry.variant:24} {entry.status}"
        + (f": {entry.cause}" if entry.cause else "")
        for entry in entries
    ]


def markdown_table(entries: Iterable[Entry]) -> list[str]:
    """A Markdown table: entry, exporter, variant, opset, size, the two samples' shapes, status."""
    lines = [
        "| entry | exporter | variant | opset | KiB | sample 0 | sample 1 | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in entries:
        size = f"{entry.model_path.stat().st_size // 1024}" if entry.model_path.is_file() else ""
        samples = [_shapes(shapes) for shapes in entry.input_shapes] or ["", ""]
        status = entry.status + (f": {entry.cause}" if entry.cause else "")
        lines.append(
            f"| `{entry.name}` | {entry.exporter} | {entry.variant} | {entry.opset or ''} | {size} "
            f"| {samples[0]} | {samples[-1]} | {status} |"
        )
    return lines


def _shapes(shapes: dict[str, list[int]]) -> str:
    """The leading inputs' shapes, e.g. ``input_ids 2x8, attention_mask 2x8`` (past tensors counted)."""
    past = [name for name in shapes if name.startswith("past_key_values")]
    shown = [f"{name} {'x'.join(map(str, shape))}" for name, shape in shapes.items() if name not in past]
    if past:
        shown.append(f"{len(past)} past {'x'.join(map(str, shapes[past[0]]))}")
    return ", ".join(shown)


def describe_folders(folders: Iterable[FolderEntry]) -> list[str]:
    """One line per export folder: name, task, variant, files, status (and cause)."""
    return [
        f"{entry.name:42} {'optimum':11} {entry.variant:24} {entry.status}"
        + (f": {entry.cause}" if entry.cause else "")
        + f" [{', '.join(entry.files)}]"
        for entry in folders
    ]


def folders_markdown_table(folders: Iterable[FolderEntry]) -> list[str]:
    """A Markdown table of the export folders: task, variant, opset, files, size, prompts, status."""
    lines = [
        "| folder | optimum task | variant | opset | .onnx files | KiB | prompts | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for entry in folders:
        size = (
            sum(path.stat().st_size for path in entry.path.glob("*")) // 1024 if entry.path.is_dir() else ""
        )
        prompts = ", ".join(str(len(prompt)) for prompt in entry.prompts)
        generated = f" ids, {entry.new_tokens} new tokens" if entry.generates else " ids"
        status = entry.status + (f": {entry.cause}" if entry.cause else "")
        lines.append(
            f"| `{entry.name}` | {entry.task} | {entry.variant} | {entry.opset or ''} "
            f"| {', '.join(f'`{name}`' for name in entry.files)} | {size} | {prompts}{generated} | {status} |"
        )
    return lines
