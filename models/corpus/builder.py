"""Build the corpus: run the stale jobs in worker processes, verify them in onnxruntime, write the manifest.

The parent process never imports torch: each job runs in a spawned worker (``torch`` limited to
one thread) that instantiates the architecture, exports it, makes the input samples, runs both
on the FP32 graph in onnxruntime and writes ``JOB/build.json``. A job is rebuilt only when its
build key changes: the hash of the corpus build sources, the job and its architecture's
configuration, and the installed torch/transformers/optimum/... versions.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import multiprocessing
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from models.corpus.manifest import Entry, corpus_folder, write_manifest
from models.corpus.plan import JOBS, Job, PlannedEntry, select_jobs

BUILD_SOURCES = (
    "architectures.py",
    "builder.py",
    "exporters.py",
    "inputs.py",
    "masks.py",
    "spectrogram.py",
    "vad.py",
    "verify.py",
)  # plan.py only lists the jobs: a job's key takes its own definition and planned entries instead
VERSIONED_PACKAGES = (
    "torch",
    "torchvision",
    "transformers",
    "optimum",
    "optimum-onnx",
    "onnxscript",
    "onnx",
    "onnxruntime",
    "numpy",
    "timm",
    "ultralytics",
)
RECORD_NAME = "build.json"
LOG_NAME = "build.log"  # the exporters' own output for the job
_CAUSE_LIMIT = 300

Log = Callable[[str], None]


def installed_versions() -> dict[str, str]:
    """Versions of the packages a build depends on ("missing" when not installed); imports nothing."""
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "missing"
    return versions


def sources_digest() -> str:
    """sha256 of the corpus build sources."""
    digest = hashlib.sha256()
    folder = Path(__file__).parent
    for name in BUILD_SOURCES:
        digest.update(name.encode() + b"\0" + (folder / name).read_bytes() + b"\0")
    return digest.hexdigest()


def job_key(job: Job, sources: str, versions: dict[str, str]) -> str:
    """The build key of ``job``: build sources, the job and its entries, its architecture, package versions."""
    description = {
        "sources": sources,
        "job": dataclasses.asdict(job),
        "entries": [dataclasses.asdict(entry) for entry in job.entries()],
        "architecture": dataclasses.asdict(job.arch),
        "versions": versions,
    }
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build(
    out: str | os.PathLike | None = None,
    only: list[str] | None = None,
    jobs: int = 1,
    force: bool = False,
    log: Log = print,
) -> list[Entry]:
    """Build the missing or stale entries into ``out`` (default ``corpus_folder()``); returns the manifest.

    ``only`` restricts the build to jobs, entries or architectures by name; the manifest still
    lists every up-to-date job already in ``out``. ``jobs`` is the number of worker processes.
    """
    folder = corpus_folder(out).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    versions = installed_versions()
    sources = sources_digest()
    keys = {job.name: job_key(job, sources, versions) for job in JOBS}
    wanted = select_jobs(only)
    stale = [job for job in wanted if force or _cached_record(folder, job, keys[job.name]) is None]
    log(
        f"corpus in {folder}: {len(wanted) - len(stale)} of {len(wanted)} jobs up to date, building {len(stale)}"
    )
    started = time.perf_counter()
    if stale:
        _require_build_packages(versions)
        _run_jobs(folder, stale, keys, max(1, jobs), log)
    _remove_retired_jobs(folder)
    entries: list[Entry] = []
    missing = []
    for job in JOBS:
        record = _cached_record(folder, job, keys[job.name])
        if record is None:
            missing.append(job.name)
            continue
        entries.extend(Entry.from_dict(row, folder) for row in record["entries"])
    write_manifest(folder, entries, versions)
    failed = [entry for entry in entries if not entry.ok]
    log(
        f"manifest: {len(entries)} entries, {len(entries) - len(failed)} ok, {len(failed)} failed"
        f" ({time.perf_counter() - started:.0f} s)"
    )
    if missing:
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing)} in all)" if len(missing) > 5 else "")
        log(f"not built yet (build without --only to add them): {shown}")
    return entries


def _remove_retired_jobs(folder: Path) -> None:
    """Delete the job folders (those holding a build record) of jobs no longer in the plan."""
    planned = {job.name for job in JOBS}
    for record in folder.glob(f"*/{RECORD_NAME}"):
        if record.parent.name not in planned:
            shutil.rmtree(record.parent, ignore_errors=True)


def _require_build_packages(versions: dict[str, str]) -> None:
    """Fail early, with the fix, when this interpreter lacks what the workers import."""
    absent = [
        name
        for name in (
            "torch",
            "torchvision",
            "transformers",
            "optimum-onnx",
            "onnxscript",
            "timm",
            "ultralytics",
        )
        if versions[name] == "missing"
    ]
    if absent:
        raise RuntimeError(
            f"building the corpus needs {', '.join(absent)} (the [corpus] extra): run "
            "`bash tools/corpus_env.sh` and build with `.venv-corpus/bin/python -m models.corpus build`"
        )


def _cached_record(folder: Path, job: Job, key: str) -> dict[str, Any] | None:
    """The job's build record when it has ``key`` and all its files exist, else None."""
    path = folder / job.name / RECORD_NAME
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("key") != key:
        return None
    for row in record.get("entries", []):
        files = [row["model"], *row.get("inputs", [])] if row.get("status") == "ok" else []
        if not all((folder / name).is_file() for name in files):
            return None
    return record


def _run_jobs(folder: Path, jobs: list[Job], keys: dict[str, str], workers: int, log: Log) -> None:
    """Run ``jobs`` in ``workers`` spawned processes; a job whose worker dies is retried alone once."""
    pending = list(jobs)
    for attempt in (1, 2):
        if not pending:
            return
        crashed = _run_pool(folder, pending, keys, workers if attempt == 1 else 1, log)
        if attempt == 2:
            for job in crashed:
                _write_record(
                    folder,
                    job,
                    keys[job.name],
                    _failed_rows(
                        job,
                        keys[job.name],
                        "export-failed",
                        "the build worker process died (crash or out of memory)",
                    ),
                    0.0,
                )
                log(f"{job.name}: the build worker died")
        pending = crashed


def _run_pool(folder: Path, jobs: list[Job], keys: dict[str, str], workers: int, log: Log) -> list[Job]:
    """One pool over ``jobs``; returns the jobs whose worker died before reporting."""
    context = multiprocessing.get_context("spawn")
    # Spawned workers read the hash seed at start: a fixed one keeps set orders (optimum's
    # merged-decoder initializer names among them) and so the exported bytes reproducible.
    saved_seed = os.environ.get("PYTHONHASHSEED")
    os.environ["PYTHONHASHSEED"] = "0"
    try:
        return _collect(folder, jobs, keys, workers, context, log)
    finally:
        if saved_seed is None:
            os.environ.pop("PYTHONHASHSEED", None)
        else:
            os.environ["PYTHONHASHSEED"] = saved_seed


def _collect(
    folder: Path, jobs: list[Job], keys: dict[str, str], workers: int, context: Any, log: Log
) -> list[Job]:
    crashed: list[Job] = []
    total = len(jobs)
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker
    ) as pool:
        futures = {pool.submit(run_job, str(folder), job.name, keys[job.name]): job for job in jobs}
        for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            job = futures[future]
            try:
                record = future.result()
            except concurrent.futures.process.BrokenProcessPool:
                crashed.append(job)
                continue
            statuses = ", ".join(f"{row['name']}: {_status_text(row)}" for row in record["entries"])
            log(f"[{done}/{total}] {job.name} ({record['seconds']:.1f} s) {statuses}")
    return crashed


def _status_text(row: dict[str, Any]) -> str:
    return row["status"] if row["status"] == "ok" else f"{row['status']} ({row['cause']})"


def _init_worker() -> None:
    """Worker start: one torch thread, offline hub, quiet libraries."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)


def run_job(out: str, job_name: str, key: str) -> dict[str, Any]:
    """Build one job into ``out/JOB`` (in a worker process) and return its build record."""
    job = next(job for job in JOBS if job.name == job_name)
    folder = Path(out) / job.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    started = time.perf_counter()
    with _output_to(folder / LOG_NAME):
        try:
            rows = _export_and_verify(job, folder, key)
        except Exception as error:  # the exporter's failure is the entry's recorded cause
            traceback.print_exc()
            rows = _failed_rows(job, key, "export-failed", one_line(error))
    return _write_record(Path(out), job, key, rows, time.perf_counter() - started)


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors too: exporters print from C++) to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for descriptor in saved:
                os.close(descriptor)


def _write_record(
    out: Path, job: Job, key: str, rows: list[dict[str, Any]], seconds: float
) -> dict[str, Any]:
    record = {"job": job.name, "key": key, "seconds": round(seconds, 1), "entries": rows}
    folder = out / job.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RECORD_NAME).write_text(json.dumps(record, indent=1) + "\n")
    return record


def _export_and_verify(job: Job, folder: Path, key: str) -> list[dict[str, Any]]:
    from models.corpus import verify
    from models.corpus.architectures import instantiate
    from models.corpus.exporters import EXPORTERS

    model = instantiate(job.arch)
    EXPORTERS[job.exporter](job.arch, model, folder, job.with_past)
    return verify.verify_job(job, folder, key)


def _failed_rows(job: Job, key: str, status: str, cause: str) -> list[dict[str, Any]]:
    return [failed_entry(job, planned, key, status, cause).to_dict() for planned in job.entries()]


def failed_entry(job: Job, planned: PlannedEntry, key: str, status: str, cause: str) -> Entry:
    """The manifest entry of a graph that did not export or run."""
    return Entry(**job.identity(planned), inputs=(), opset=None, status=status, key=key, cause=cause)


def one_line(error: BaseException) -> str:
    """``Type: first line of the message``, shortened: the cause recorded in the manifest."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = f"{type(error).__name__}: {lines[0] if lines else ''}".strip()
    return text if len(text) <= _CAUSE_LIMIT else text[: _CAUSE_LIMIT - 3] + "..."
