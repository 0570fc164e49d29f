"""Make a job's input samples and check them in onnxruntime (CPU) on the FP32 graphs.

An entry is ``ok`` when its graph loads, both samples run with finite outputs and the two
samples differ in at least one input shape; otherwise ``run-failed`` with the cause.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from models.corpus import inputs
from models.corpus.manifest import Entry, save_feeds
from models.corpus.plan import Job, PlannedEntry

_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(float16)": np.float16,
}


class _Sessions:
    """One onnxruntime CPU session per graph file of a job, single-threaded."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._sessions: dict[str, ort.InferenceSession] = {}

    def session(self, file: str) -> ort.InferenceSession:
        if file not in self._sessions:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            self._sessions[file] = ort.InferenceSession(
                str(self.folder / file), options, providers=["CPUExecutionProvider"]
            )
        return self._sessions[file]

    def graph_inputs(self, file: str) -> list[inputs.GraphInput]:
        return [
            inputs.GraphInput(value.name, _NUMPY_TYPES.get(value.type, np.float32), tuple(value.shape))
            for value in self.session(file).get_inputs()
        ]

    def run(self, file: Path | str, feeds: inputs.Feeds) -> dict[str, np.ndarray]:
        session = self.session(str(file))
        names = [value.name for value in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds), strict=True))


def verify_job(job: Job, folder: Path, key: str) -> list[dict[str, Any]]:
    """Entries (as manifest rows) for every graph ``job`` planned, with samples saved beside them."""
    from models.corpus.builder import failed_entry, one_line

    planned = job.entries()
    sessions = _Sessions(folder)
    written = [entry for entry in planned if (folder / entry.file).is_file()]
    variants = {entry.file: entry.variant for entry in written}
    graphs: dict[str, list[inputs.GraphInput]] = {}
    load_errors: dict[str, str] = {}
    for entry in written:
        try:
            graphs[entry.file] = sessions.graph_inputs(entry.file)
        except Exception as error:
            load_errors[entry.file] = f"onnxruntime cannot load it: {one_line(error)}"
    rows = []
    for entry in planned:
        if entry not in written:
            cause = f"the exporter wrote no {entry.file}"
            rows.append(failed_entry(job, entry, key, "export-failed", cause).to_dict())
        elif entry.file in load_errors:
            rows.append(failed_entry(job, entry, key, "run-failed", load_errors[entry.file]).to_dict())
        else:
            try:
                rows.append(_verified_entry(job, entry, folder, key, variants, graphs, sessions).to_dict())
            except Exception as error:
                rows.append(failed_entry(job, entry, key, "run-failed", one_line(error)).to_dict())
    return rows


def _verified_entry(
    job: Job,
    planned: PlannedEntry,
    folder: Path,
    key: str,
    variants: dict[str, str],
    graphs: dict[str, list[inputs.GraphInput]],
    sessions: _Sessions,
) -> Entry:
    samples = inputs.make_samples(job.arch, planned.file, variants, graphs, sessions.run)
    shapes = [{name: list(array.shape) for name, array in feeds.items()} for feeds in samples]
    if len(samples) < 2 or all(shape == shapes[0] for shape in shapes[1:]):
        raise ValueError("the input samples do not differ in shape")
    for index, feeds in enumerate(samples):
        outputs = sessions.run(planned.file, feeds)
        for name, array in outputs.items():
            if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
                raise ValueError(f"output {name} is not finite on sample {index}")
    stem = Path(planned.file).stem
    input_files = []
    for index, feeds in enumerate(samples):
        relative = f"{job.name}/{stem}.inputs-{index}.npz"
        save_feeds(folder.parent / relative, feeds)
        input_files.append(relative)
    session = sessions.session(planned.file)
    return Entry(
        **job.identity(planned),
        inputs=tuple(input_files),
        opset=_opset(folder / planned.file),
        status="ok",
        key=key,
        input_names=tuple(value.name for value in session.get_inputs()),
        output_names=tuple(value.name for value in session.get_outputs()),
        input_shapes=tuple(shapes),
        notes="; ".join(note for note in (job.arch.notes, inputs.sample_notes(planned.variant)) if note),
    )


def _opset(path: Path) -> int | None:
    model = onnx.load(str(path), load_external_data=False)
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)
