"""Whole optimum export folders in the corpus: the plan, the build keys and the build (no torch here).

The graph entries (``plan.JOBS``) keep one ``.onnx`` file each; a folder entry is the whole folder
``optimum.exporters.onnx.main_export`` writes (its graphs, ``config.json``,
``generation_config.json``), which is what users convert and deploy. Each is built in
``FOLDER/folders/NAME/``: the export itself in ``export/`` (nothing else written there), the
build record ``build.json`` and the exporters' output ``build.log`` beside it. The worker
(``folder_export.run_folder_job``) also records fixed token-id prompts and the seeded torch
model's greedy tokens for them, and checks that the plain-ONNX-Runtime loop
(``mpcompile.validate.generation``) on the FP32 folder generates the same.

Folder keys hash their own sources (this module, ``folder_export.py``, the generation loop) on
top of the graph builder's, so adding folders leaves every graph entry's key as it was.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.corpus.architectures import ARCHITECTURES, Architecture
from models.corpus.manifest import FolderEntry, corpus_folder, write_folder_section

FOLDERS_DIR = "folders"
EXPORT_DIR = "export"
RECORD_NAME = "build.json"
_OWN_SOURCES = (
    Path(__file__).with_name("folders.py"),
    Path(__file__).with_name("folder_export.py"),
    Path(__file__).resolve().parents[2] / "mpcompile" / "validate" / "generation.py",
)

Log = Callable[[str], None]


@dataclass(frozen=True)
class FolderJob:
    """One optimum export of one architecture, kept as a whole folder."""

    name: str
    architecture: str
    task: str  # optimum's task, e.g. text-generation-with-past
    variant: str  # decoder-only-with-past | encoder-decoder-merged | encoder-decoder | encoder
    no_post_process: bool = False  # optimum's --no-post-process: no merged decoder
    prompt_lengths: tuple[int, ...] = (4, 7, 11)
    new_tokens: int = 20
    seed: int = 7
    config_overrides: tuple[tuple[str, Any], ...] = ()  # on top of the architecture's configuration
    notes: str = ""
    # False for a folder built so that a static FP16 conversion (``convert --static``: no range run)
    # breaks its greedy generation: a case for generation-aware ``validate`` to catch, left out of
    # the deploy checks that expect it to work. (The default range run rescues the Llama one.)
    plain_fp16_generates: bool = True

    @property
    def arch(self) -> Architecture:
        """The architecture this job exports, with ``config_overrides`` applied."""
        arch = ARCHITECTURES[self.architecture]
        if not self.config_overrides:
            return arch
        return dataclasses.replace(arch, config={**arch.config, **dict(self.config_overrides)})

    @property
    def generates(self) -> bool:
        """True when the folder generates tokens (a decoder), False for an encoder."""
        return self.variant != "encoder"

    def prompts(self) -> tuple[tuple[int, ...], ...]:
        """Fixed token-id prompts, one per length, drawn clear of the special ids (0, 1, 2)."""
        generator = np.random.default_rng(self.seed)
        vocab = self.arch.vocab_size
        return tuple(
            tuple(int(token) for token in generator.integers(3, vocab, size=length))
            for length in self.prompt_lengths
        )


# The tiny T5 with tied embeddings repeats one token for every prompt, which would not show a
# broken cache; untied (as T5 v1.1 and FLAN-T5 are), its greedy tokens vary.
_T5_UNTIED = (("tie_word_embeddings", False),)
_T5_NOTES = "untied word embeddings (as T5 v1.1 / FLAN-T5): the tied tiny T5 repeats one token"

# T5 initialises its weights with a std proportional to ``initializer_factor``. At 16 the FP32
# folder still generates torch's tokens, but a plain FP16 conversion overflows: the FP16-faithful
# judge (GPU rounding) gets NaN logits from the first step on every prompt, while ORT's CPU EP, which
# computes those nodes in FP32, hides it. At 8 (the value) only one of the three prompts
# diverges (step 3), too weak a case for generated prompts to be sure to catch.
_LARGE_ACTIVATION_FACTOR = 16.0
_LARGE_ACTIVATION_NOTES = f"; initializer_factor={_LARGE_ACTIVATION_FACTOR:g}: large activations, plain FP16 breaks greedy generation"

# Llama initialises its weights with std ``initializer_range`` (0.02 by default). At 4 the residual
# stream reaches ~1.3e5 in both layers: past FP16's 65504, so a plain FP16 conversion's greedy
# generation breaks, while the FP32 folder still generates torch's tokens.
_LLAMA_LARGE_ACTIVATION_RANGE = 4.0

FOLDER_JOBS: tuple[FolderJob, ...] = (
    FolderJob("llama-optimum-folder", "llama", "text-generation-with-past", "decoder-only-with-past"),
    FolderJob(
        "t5-optimum-folder",
        "t5",
        "text2text-generation-with-past",
        "encoder-decoder-merged",
        config_overrides=_T5_UNTIED,
        notes=_T5_NOTES,
    ),
    FolderJob(
        "t5-optimum-folder-unmerged",
        "t5",
        "text2text-generation-with-past",
        "encoder-decoder",
        no_post_process=True,
        config_overrides=_T5_UNTIED,
        notes=_T5_NOTES + "; optimum's --no-post-process: no merged decoder",
    ),
    FolderJob("bert-optimum-folder", "bert", "feature-extraction", "encoder"),
    FolderJob(
        "t5-large-activation-folder",
        "t5",
        "text2text-generation-with-past",
        "encoder-decoder-merged",
        config_overrides=(*_T5_UNTIED, ("initializer_factor", _LARGE_ACTIVATION_FACTOR)),
        notes=_T5_NOTES + _LARGE_ACTIVATION_NOTES,
        plain_fp16_generates=False,
    ),
    FolderJob(
        "llama-large-activation-folder",
        "llama",
        "text-generation-with-past",
        "decoder-only-with-past",
        config_overrides=(("initializer_range", _LLAMA_LARGE_ACTIVATION_RANGE),),
        # Prompts with no near-tie in the FP32 greedy steps (top-2 gap >= 2.5 % of the logits' std
        # over all 60; seed 7 gives 0.04 %, which any FP16 rounding flips at step 17): so a
        # conversion that keeps the overflow FP32 can generate FP32's tokens exactly.
        seed=25,
        notes=f"initializer_range={_LLAMA_LARGE_ACTIVATION_RANGE:g}: residual stream ~1.3e5, static FP16 "
        "(--static) breaks greedy generation",
        plain_fp16_generates=False,
    ),
)


def select_folder_jobs(names: list[str] | None) -> list[FolderJob]:
    """The folder jobs named by ``names`` (a folder or architecture name); all when None."""
    if names is None:
        return list(FOLDER_JOBS)
    wanted = set(names)
    return [job for job in FOLDER_JOBS if job.name in wanted or job.architecture in wanted]


def split_only(names: list[str] | None) -> tuple[list[str] | None, list[str] | None]:
    """``--only`` split into graph-job names and folder names (an architecture name goes to both;
    None: build everything). Raises ``KeyError`` for a name neither knows."""
    if names is None:
        return None, None
    from models.corpus.plan import select_jobs

    folders = [name for name in names if select_folder_jobs([name])]
    graphs = [name for name in names if name not in folder_names()]
    if graphs:
        select_jobs(graphs)  # raises for a name neither knows
    return graphs, folders


def folder_names() -> set[str]:
    """The names ``--only`` accepts for folders."""
    return {job.name for job in FOLDER_JOBS}


def encoder_feeds(prompt: tuple[int, ...], names: set[str]) -> dict[str, np.ndarray]:
    """Batch-1 feeds of an encoder for ``prompt``: the ids, an all-ones mask, zero token types."""
    ids = np.asarray([prompt], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {name: array for name, array in feeds.items() if name in names}


def folder_key(job: FolderJob, graph_sources: str, versions: dict[str, str]) -> str:
    """The build key of ``job``: the graph builder's sources digest, this build's own sources, the
    job with its prompts, its architecture and the package versions."""
    digest = hashlib.sha256(graph_sources.encode())
    for path in _OWN_SOURCES:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    description = {
        "sources": digest.hexdigest(),
        "job": dataclasses.asdict(job),
        "prompts": job.prompts(),
        "architecture": dataclasses.asdict(job.arch),
        "versions": versions,
    }
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_folders(
    out: str | os.PathLike | None = None,
    only: list[str] | None = None,
    jobs: int = 1,
    force: bool = False,
    log: Log = print,
) -> list[FolderEntry]:
    """Build the missing or stale export folders into ``out/folders`` and write the manifest's
    ``folders`` section (every up-to-date folder, built now or before)."""
    from models.corpus import builder

    root = corpus_folder(out).resolve()
    (root / FOLDERS_DIR).mkdir(parents=True, exist_ok=True)
    versions = builder.installed_versions()
    sources = builder.sources_digest()
    keys = {job.name: folder_key(job, sources, versions) for job in FOLDER_JOBS}
    wanted = select_folder_jobs(only)
    stale = [job for job in wanted if force or _cached_record(root, job, keys[job.name]) is None]
    log(f"export folders in {root / FOLDERS_DIR}: {len(wanted) - len(stale)} of {len(wanted)} up to date")
    if stale:
        builder._require_build_packages(versions)
        _run(root, stale, keys, max(1, jobs), log)
    _remove_retired(root)
    entries = []
    for job in FOLDER_JOBS:
        record = _cached_record(root, job, keys[job.name])
        if record is not None:
            entries.append(FolderEntry.from_dict(record["entry"], root))
    write_folder_section(root, entries, versions)
    failed = [entry.name for entry in entries if not entry.ok]
    log(f"manifest: {len(entries)} export folders, {len(entries) - len(failed)} ok, {len(failed)} failed")
    return entries


def _cached_record(root: Path, job: FolderJob, key: str) -> dict[str, Any] | None:
    """The job's build record when it has ``key`` and its files exist, else None."""
    job_dir = root / FOLDERS_DIR / job.name
    try:
        record = json.loads((job_dir / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    if record.get("key") != key:
        return None
    entry = record.get("entry", {})
    if entry.get("status") == "ok" and not all(
        (root / entry["folder"] / name).is_file() for name in entry.get("files", ())
    ):
        return None
    return record


def _remove_retired(root: Path) -> None:
    planned = folder_names()
    for record in (root / FOLDERS_DIR).glob(f"*/{RECORD_NAME}"):
        if record.parent.name not in planned:
            shutil.rmtree(record.parent, ignore_errors=True)


def _run(root: Path, jobs: list[FolderJob], keys: dict[str, str], workers: int, log: Log) -> None:
    """Each job in a spawned worker (torch imported there only), hash seed fixed as for the graphs."""
    from models.corpus import builder, folder_export

    context = multiprocessing.get_context("spawn")
    saved_seed = os.environ.get("PYTHONHASHSEED")
    os.environ["PYTHONHASHSEED"] = "0"
    try:
        with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=builder._init_worker
        ) as pool:
            futures = {
                pool.submit(folder_export.run_folder_job, str(root), job.name, keys[job.name]): job
                for job in jobs
            }
            for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
                job = futures[future]
                try:
                    record = future.result()
                except concurrent.futures.process.BrokenProcessPool:
                    log(f"{job.name}: the build worker died")
                    continue
                entry = record["entry"]
                status = entry["status"] + (f" ({entry['cause']})" if entry["cause"] else "")
                log(f"[{done}/{len(jobs)}] {job.name} ({record['seconds']:.1f} s) {status}")
    finally:
        if saved_seed is None:
            os.environ.pop("PYTHONHASHSEED", None)
        else:
            os.environ["PYTHONHASHSEED"] = saved_seed
