"""The corpus manifest (``manifest.json``) and its reader; numpy only, no torch.

The manifest lists every entry of a built corpus: its name, architecture, exporter, variant,
family tags, the model and input files (relative to the manifest's folder), the opset, the
status (``ok``, ``export-failed`` or ``run-failed`` with a one-line ``cause``) and the build key.
Its ``folders`` section lists the whole optimum export folders (``FolderEntry``, built by
``models/corpus/folders.py``): each section has its own writer, which keeps the other one.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
STATUSES = ("ok", "export-failed", "run-failed")
DEFAULT_OUT = Path(__file__).resolve().parents[2] / ".cache" / "corpus"
FOLDER_VARIABLE = "MPCOMPILE_CORPUS"  # overrides DEFAULT_OUT for readers and builds


@dataclass(frozen=True)
class Entry:
    """One ONNX graph of the corpus and its input samples."""

    name: str
    architecture: str
    exporter: str
    variant: str
    family: tuple[str, ...]
    model: str  # path relative to the manifest's folder
    inputs: tuple[str, ...]  # .npz paths relative to the manifest's folder, one per input size
    opset: int | None
    status: str
    key: str
    cause: str = ""
    job: str = ""
    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    input_shapes: tuple[Mapping[str, list[int]], ...] = ()
    notes: str = ""
    root: Path = field(default=Path("."), compare=False, repr=False)

    @property
    def ok(self) -> bool:
        """True when the entry exported and both samples ran on the FP32 model."""
        return self.status == "ok"

    @property
    def model_path(self) -> Path:
        """Absolute path of the ONNX model."""
        return self.root / self.model

    @property
    def input_paths(self) -> list[Path]:
        """Absolute paths of the input samples (.npz, one per size)."""
        return [self.root / path for path in self.inputs]

    def load_inputs(self) -> list[dict[str, np.ndarray]]:
        """The input samples as feeds ``{input name: array}``, one per size."""
        return [load_feeds(path) for path in self.input_paths]

    def has_family(self, *tags: str) -> bool:
        """True when the entry carries every one of ``tags``."""
        return all(tag in self.family for tag in tags)

    def to_dict(self) -> dict[str, Any]:
        """The manifest row (without the root folder)."""
        row = asdict(self)
        row.pop("root")
        row["family"] = list(self.family)
        row["inputs"] = list(self.inputs)
        row["input_names"] = list(self.input_names)
        row["output_names"] = list(self.output_names)
        row["input_shapes"] = [dict(shapes) for shapes in self.input_shapes]
        return row

    @classmethod
    def from_dict(cls, row: Mapping[str, Any], root: Path) -> Entry:
        """An entry from a manifest row; ``root`` is the manifest's folder."""
        status = row["status"]
        if status not in STATUSES:
            raise ValueError(f"{row.get('name')}: unknown status {status!r}")
        return cls(
            name=row["name"],
            architecture=row["architecture"],
            exporter=row["exporter"],
            variant=row["variant"],
            family=tuple(row.get("family", ())),
            model=row["model"],
            inputs=tuple(row.get("inputs", ())),
            opset=row.get("opset"),
            status=status,
            key=row.get("key", ""),
            cause=row.get("cause", ""),
            job=row.get("job", ""),
            input_names=tuple(row.get("input_names", ())),
            output_names=tuple(row.get("output_names", ())),
            input_shapes=tuple(dict(shapes) for shapes in row.get("input_shapes", ())),
            notes=row.get("notes", ""),
            root=root,
        )


@dataclass(frozen=True)
class FolderEntry:
    """One optimum export folder as optimum writes it (graphs, config.json, generation_config.json).

    ``prompts`` are token-id prompts; ``reference`` the greedy tokens (``new_tokens`` each, no
    end-of-sequence stop) that the seeded torch model generates for them: empty for an encoder.
    """

    name: str
    architecture: str
    task: str  # the optimum task it was exported for
    variant: str  # decoder-only-with-past | encoder-decoder-merged | encoder-decoder | encoder
    folder: str  # the export folder, relative to the manifest's folder
    files: tuple[str, ...]  # its .onnx files
    status: str
    key: str
    prompts: tuple[tuple[int, ...], ...] = ()
    reference: tuple[tuple[int, ...], ...] = ()
    new_tokens: int = 0
    opset: int | None = None
    cause: str = ""
    notes: str = ""
    plain_fp16_generates: bool = True  # False: static FP16 convert (--static) breaks its generation
    root: Path = field(default=Path("."), compare=False, repr=False)

    @property
    def ok(self) -> bool:
        """True when the folder exported and the FP32 graphs reproduced torch's outputs."""
        return self.status == "ok"

    @property
    def path(self) -> Path:
        """Absolute path of the export folder."""
        return self.root / self.folder

    @property
    def generates(self) -> bool:
        """True for a folder that generates tokens (a decoder), False for an encoder."""
        return self.variant != "encoder"

    def to_dict(self) -> dict[str, Any]:
        """The manifest row (without the root folder)."""
        row = asdict(self)
        row.pop("root")
        row["files"] = list(self.files)
        row["prompts"] = [list(prompt) for prompt in self.prompts]
        row["reference"] = [list(tokens) for tokens in self.reference]
        return row

    @classmethod
    def from_dict(cls, row: Mapping[str, Any], root: Path) -> FolderEntry:
        """A folder entry from a manifest row; ``root`` is the manifest's folder."""
        if row["status"] not in STATUSES:
            raise ValueError(f"{row.get('name')}: unknown status {row['status']!r}")
        values = {name: row[name] for name in row if name in cls.__dataclass_fields__ and name != "root"}
        values["files"] = tuple(row.get("files", ()))
        values["prompts"] = tuple(tuple(prompt) for prompt in row.get("prompts", ()))
        values["reference"] = tuple(tuple(tokens) for tokens in row.get("reference", ()))
        return cls(**values, root=root)


def load_feeds(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """One input sample: the arrays of an .npz file by input name."""
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def save_feeds(path: str | os.PathLike, feeds: Mapping[str, np.ndarray]) -> None:
    """Write one input sample as an uncompressed .npz, arrays in input order, byte-reproducible.

    ``np.savez`` stamps each member with the current time; here every member gets a fixed one.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in feeds.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)


def corpus_folder(folder: str | os.PathLike | None = None) -> Path:
    """``folder``, else ``$MPCOMPILE_CORPUS``, else the repository's ``.cache/corpus``."""
    if folder is not None:
        return Path(folder)
    return Path(os.environ.get(FOLDER_VARIABLE) or DEFAULT_OUT)


def manifest_path(folder: str | os.PathLike | None = None) -> Path:
    """Where the manifest of ``folder`` (default: ``corpus_folder()``) lies."""
    return corpus_folder(folder) / MANIFEST_NAME


def load_manifest(folder: str | os.PathLike | None = None, status: str | None = None) -> list[Entry]:
    """The entries of the corpus in ``folder`` (default ``corpus_folder()``), optionally of one status.

    Raises ``FileNotFoundError`` (saying how to build it) when the corpus is not built.
    """
    path = manifest_path(folder)
    if not path.is_file():
        raise FileNotFoundError(
            f"no corpus manifest at {path}; build it with "
            "`bash tools/corpus_env.sh && .venv-corpus/bin/python -m models.corpus build --jobs 2`"
        )
    document = json.loads(path.read_text())
    if document.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{path}: manifest version {document.get('version')!r}, expected {MANIFEST_VERSION}")
    entries = [Entry.from_dict(row, path.parent) for row in document["entries"]]
    return [entry for entry in entries if status is None or entry.status == status]


def write_manifest(folder: Path, entries: Iterable[Entry], built_with: Mapping[str, str]) -> Path:
    """Write ``manifest.json`` into ``folder`` atomically; entries sorted by name."""
    rows = [entry.to_dict() for entry in sorted(entries, key=lambda entry: entry.name)]
    names = [row["name"] for row in rows]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"duplicate corpus entry names: {', '.join(duplicates)}")
    document = {"version": MANIFEST_VERSION, "built_with": dict(built_with), "entries": rows}
    previous = _read_document(folder / MANIFEST_NAME)
    if previous.get("folders"):
        document["folders"] = previous["folders"]
    return _write_document(folder, document)


def write_folder_section(folder: Path, entries: Iterable[FolderEntry], built_with: Mapping[str, str]) -> Path:
    """Write the manifest's ``folders`` section (sorted by name), keeping its graph entries."""
    rows = [entry.to_dict() for entry in sorted(entries, key=lambda entry: entry.name)]
    document = _read_document(folder / MANIFEST_NAME) or {
        "version": MANIFEST_VERSION,
        "built_with": dict(built_with),
        "entries": [],
    }
    document["folders"] = rows
    return _write_document(folder, document)


def load_folders(folder: str | os.PathLike | None = None, status: str | None = None) -> list[FolderEntry]:
    """The export folders of the corpus in ``folder`` (default ``corpus_folder()``), optionally of one
    status; empty when the corpus was built without them. Raises like ``load_manifest``."""
    path = manifest_path(folder)
    load_manifest(folder)  # the same checks and messages
    rows = json.loads(path.read_text()).get("folders", [])
    entries = [FolderEntry.from_dict(row, path.parent) for row in rows]
    return [entry for entry in entries if status is None or entry.status == status]


def generative_corpus_folders(folder: str | os.PathLike | None = None) -> list[FolderEntry]:
    """The built folders a greedy loop runs (``FolderEntry.generates``); empty when the corpus is
    not built, so that test modules can parametrise over them at import."""
    try:
        return [entry for entry in load_folders(folder, status="ok") if entry.generates]
    except FileNotFoundError:
        return []


def _read_document(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return document if document.get("version") == MANIFEST_VERSION else {}


def _write_document(folder: Path, document: dict[str, Any]) -> Path:
    path = folder / MANIFEST_NAME
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(document, indent=1, sort_keys=False) + "\n")
    os.replace(temporary, path)
    return path
