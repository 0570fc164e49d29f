"""Build one export folder (in a build worker; imports torch): export, torch reference, check in ORT.

The seeded model is saved with ``save_pretrained`` and exported by optimum's ``main_export``
into ``folders/NAME/export`` (offline, ``do_validation=False``, optimum's default opset). The
reference is the seeded torch model's own greedy loop (argmax of the last logits, no cache, no
end-of-sequence stop); the folder is ``ok`` when the plain-ONNX-Runtime loop on the FP32 graphs
generates the same tokens for every prompt (an encoder: when ``last_hidden_state`` matches torch's
within 1e-4).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from models.corpus.builder import _output_to, one_line
from models.corpus.folders import (
    EXPORT_DIR,
    FOLDER_JOBS,
    FOLDERS_DIR,
    RECORD_NAME,
    FolderJob,
    encoder_feeds,
)
from models.corpus.manifest import FolderEntry

ENCODER_ATOL = 1e-4


def run_folder_job(out: str, name: str, key: str) -> dict[str, Any]:
    """Build the folder job ``name`` into ``out/folders/NAME`` and return its build record."""
    job = next(job for job in FOLDER_JOBS if job.name == name)
    root = Path(out)
    job_dir = root / FOLDERS_DIR / job.name
    shutil.rmtree(job_dir, ignore_errors=True)
    job_dir.mkdir(parents=True)
    started = time.perf_counter()
    with _output_to(job_dir / "build.log"):
        entry = _entry(job, key, status="ok")
        try:
            entry = _export_and_verify(job, root, key)
        except Exception as error:  # the exporter's failure is the entry's recorded cause
            traceback.print_exc()
            entry = _entry(job, key, status="export-failed", cause=one_line(error))
    record = {
        "job": job.name,
        "key": key,
        "seconds": round(time.perf_counter() - started, 1),
        "entry": entry.to_dict(),
    }
    (job_dir / RECORD_NAME).write_text(json.dumps(record, indent=1) + "\n")
    return record


def _entry(job: FolderJob, key: str, status: str, **fields: Any) -> FolderEntry:
    return FolderEntry(
        name=job.name,
        architecture=job.architecture,
        task=job.task,
        variant=job.variant,
        folder=f"{FOLDERS_DIR}/{job.name}/{EXPORT_DIR}",
        files=fields.pop("files", ()),
        status=status,
        key=key,
        prompts=job.prompts(),
        new_tokens=job.new_tokens if job.generates else 0,
        notes=job.notes,
        plain_fp16_generates=job.plain_fp16_generates,
        **fields,
    )


def _export_and_verify(job: FolderJob, root: Path, key: str) -> FolderEntry:
    from models.corpus.architectures import instantiate

    model = instantiate(job.arch)
    export = root / FOLDERS_DIR / job.name / EXPORT_DIR
    _export(job, model, export)
    files = tuple(sorted(path.name for path in export.glob("*.onnx")))
    opset = _opset(export / files[0]) if files else None
    prompts = job.prompts()
    if not job.generates:
        cause = _check_encoder(model, export, prompts)
        status = "run-failed" if cause else "ok"
        return _entry(job, key, status, files=files, opset=opset, cause=cause)
    reference = tuple(_torch_greedy(model, prompt, job.new_tokens) for prompt in prompts)
    cause = _check_generation(export, prompts, reference, job.new_tokens)
    status = "run-failed" if cause else "ok"
    return _entry(job, key, status, files=files, opset=opset, reference=reference, cause=cause)


def _export(job: FolderJob, model: Any, export: Path) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from optimum.exporters.onnx import main_export

    pretrained = export.parent / "_pretrained"
    model.save_pretrained(pretrained)
    try:
        main_export(
            str(pretrained),
            output=str(export),
            task=job.task,
            device="cpu",
            do_validation=False,
            no_post_process=job.no_post_process,
            library_name="transformers",
        )
    finally:
        shutil.rmtree(pretrained, ignore_errors=True)


def _torch_greedy(model: Any, prompt: tuple[int, ...], new_tokens: int) -> tuple[int, ...]:
    """The seeded model's greedy tokens: argmax of the last position, recomputed from scratch each step."""
    ids = torch.tensor([prompt], dtype=torch.long)
    generated: list[int] = []
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            decoder = [int(model.config.decoder_start_token_id)]
            for _ in range(new_tokens):
                logits = model(
                    input_ids=ids, decoder_input_ids=torch.tensor([decoder]), use_cache=False
                ).logits
                decoder.append(int(logits[0, -1].argmax()))
            generated = decoder[1:]
        else:
            tokens = list(prompt)
            for _ in range(new_tokens):
                logits = model(input_ids=torch.tensor([tokens]), use_cache=False).logits
                tokens.append(int(logits[0, -1].argmax()))
            generated = tokens[len(prompt) :]
    return tuple(generated)


def _check_generation(
    export: Path,
    prompts: tuple[tuple[int, ...], ...],
    reference: tuple[tuple[int, ...], ...],
    new_tokens: int,
) -> str:
    """ "" when the plain-ORT loop reproduces ``reference`` on every layout of the folder, else the cause."""
    from mpcompile.validate.generation import ENCODER_DECODER, Generator, detect_layout

    layouts = [None]
    if detect_layout(export).kind == ENCODER_DECODER and (export / "decoder_with_past_model.onnx").is_file():
        layouts = [True, False] if (export / "decoder_model_merged.onnx").is_file() else [False]
    for merged in layouts:
        generator = Generator(export, merged=merged)
        for index, (prompt, expected) in enumerate(zip(prompts, reference, strict=True)):
            tokens = generator.generate(prompt, new_tokens).tokens
            if tokens != expected:
                step = next(i for i, (a, b) in enumerate(zip(tokens, expected, strict=True)) if a != b)
                return (
                    f"plain-ORT greedy tokens differ from torch's ({', '.join(generator.layout.files)}): "
                    f"prompt {index}, step {step}"
                )
    return ""


def _check_encoder(model: Any, export: Path, prompts: tuple[tuple[int, ...], ...]) -> str:
    """ "" when ``model.onnx`` gives torch's ``last_hidden_state`` within ``ENCODER_ATOL`` on every prompt."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {value.name for value in session.get_inputs()}
    for index, prompt in enumerate(prompts):
        feeds = encoder_feeds(prompt, names)
        with torch.no_grad():
            expected = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()
        (actual,) = session.run(["last_hidden_state"], feeds)
        error = float(np.abs(actual - expected).max())
        if error > ENCODER_ATOL:
            return f"last_hidden_state differs from torch's by {error:.2e} on prompt {index}"
    return ""


def _opset(path: Path) -> int | None:
    model = onnx.load(str(path), load_external_data=False)
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)
