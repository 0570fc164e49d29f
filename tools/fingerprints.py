"""Fingerprints of mpcompile's conversions: the SHA-256 of every file it writes, per model and mode.

A refactoring that keeps behaviour keeps every fingerprint. The models are the zoo
(``models.ZOO``), the planted sensitive models (``models.sensitive.SENSITIVE``) and, when it is
built, the exporter corpus (``models.corpus``); the modes are those of ``MODES`` (``--auto``
on the zoo and planted models, and on the corpus with ``--corpus-auto``, which is slower).

    python tools/fingerprints.py --write /tmp/before.json     # before the change
    python tools/fingerprints.py --check /tmp/before.json     # after: exit 1 on any difference

``--training`` fingerprints the training outputs instead (run it in the training environment,
which has onnxruntime-training and torch): the tiny models of ``models.training_exports``, each
exported with torch's default (dynamo) and the TorchScript exporter, through ``train-artifacts``
(``TRAINING_MODES``) and ``convert --training`` of the FP32 artifacts (``CONVERT_TRAINING_MODES``).

    .venv-training/bin/python tools/fingerprints.py --training --write /tmp/training-before.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import io
import json
import os
import pathlib
import sys
import tempfile
from collections.abc import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODES: dict[str, tuple[str, ...]] = {
    "convert": (),
    "no-keep-io": ("--no-keep-io-types",),
    "cpu": ("--target", "cpu"),
    "tensorrt": ("--target", "tensorrt"),
    "bf16": ("--precision", "bf16"),
    "optimize": ("--optimize", "transformer"),
    "auto": ("--auto",),
}
CORPUS_MODES = ("convert", "cpu", "bf16", "optimize")
TRAINING_MODES: dict[str, tuple[str, ...]] = {
    "train-artifacts-fp32": ("--precision", "fp32"),
    "train-artifacts": (),
    "train-artifacts-bf16": ("--precision", "bf16"),
    "train-artifacts-no-scaling": ("--no-loss-scaling",),
}
TRAINING_EXPORTS = REPO / ".cache" / "fingerprints" / "training-exports"
CONVERT_TRAINING_MODES: dict[str, tuple[str, ...]] = {
    "convert-training": (),
    "convert-training-bf16": ("--precision", "bf16"),
}


def sources(with_corpus: bool) -> list[tuple[str, str | None]]:
    """(name, path) of every model: zoo and planted models are built on demand (path None)."""
    import models
    from models.sensitive import SENSITIVE

    found: list[tuple[str, str | None]] = [(f"zoo/{name}", None) for name in sorted(models.ZOO)]
    found += [(f"sensitive/{name}", None) for name in sorted(SENSITIVE)]
    if with_corpus:
        from models import corpus

        try:
            entries = corpus.load_manifest(status="ok")
        except FileNotFoundError:
            entries = []
        found += [(f"corpus/{entry.name}", str(entry.model_path)) for entry in entries]
    return found


def _materialize(name: str, path: str | None, folder: pathlib.Path) -> str:
    if path is not None:
        return path
    import onnx

    import models
    from models.sensitive import SENSITIVE

    kind, short = name.split("/", 1)
    proto = models.ZOO[short]() if kind == "zoo" else SENSITIVE[short]()
    target = folder / f"{short}.onnx"
    onnx.save(proto, str(target))
    return str(target)


def fingerprint(name: str, path: str | None, modes: Sequence[str]) -> dict[str, str]:
    """mode -> SHA-256 of the output files (or ``exit N``) for one model."""
    from mpcompile.cli import main

    results = {}
    with tempfile.TemporaryDirectory(prefix="fingerprints-") as folder:
        work = pathlib.Path(folder)
        model = _materialize(name, path, work)
        for mode in modes:
            out = work / f"out-{mode}"
            out.mkdir()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                code = main(["convert", model, "-o", str(out / "model.onnx"), *MODES[mode]])
            results[mode] = _digest(out) if code == 0 else f"exit {code}"
    return results


def training_fingerprint(name: str, model: str) -> dict[str, str]:
    """mode -> SHA-256 of the artifact folder (or ``exit N``) for one exported forward model."""
    from mpcompile.cli import main

    # The export's own digest first: a check against a baseline written from other exports
    # (another cache, another torch) then says so instead of reporting every output as changed.
    results = {"export": _digest(pathlib.Path(model).parent)}
    with tempfile.TemporaryDirectory(prefix="fingerprints-training-") as folder:
        work = pathlib.Path(folder)
        commands = {
            mode: ["train-artifacts", model, "-o", str(work / mode), *options]
            for mode, options in TRAINING_MODES.items()
        }
        source = str(work / "train-artifacts-fp32")
        commands.update(
            {
                mode: ["convert", "--training", source, "-o", str(work / mode), *options]
                for mode, options in CONVERT_TRAINING_MODES.items()
            }
        )
        for mode, command in commands.items():
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                code = main(command)
            results[mode] = _digest(work / mode) if code == 0 else f"exit {code}"
    return results


def training_exports() -> dict[str, str]:
    """``<case>/<exporter>`` -> path of its export, made once into ``TRAINING_EXPORTS``: torch's
    exports are not byte-stable across processes (the TorchScript exporter numbers its names per
    process), so the fingerprints start from the cached files. Delete the folder after a torch upgrade."""
    from models import training_exports as cases

    exports = {}
    for case in cases.CASES:
        for exporter in cases.EXPORTERS:
            path = TRAINING_EXPORTS / f"{case}-{exporter}" / "model.onnx"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    cases.export(cases.CASES[case], exporter, path)
            exports[f"{case}/{exporter}"] = str(path)
    return exports


def _digest(folder: pathlib.Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(path for path in folder.rglob("*") if path.is_file()):
        digest.update(str(file.relative_to(folder)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def run_training(jobs: int) -> dict[str, dict[str, str]]:
    """The training fingerprints of every ``models.training_exports`` case and exporter."""
    exports = training_exports()
    # One fresh process per export: onnxruntime's training blocks number the nodes they add with a
    # per-process counter, so artifacts made after others in the same process get other names.
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, max_tasks_per_child=1) as pool:
        digests = pool.map(training_fingerprint, exports, exports.values())
        results = dict(zip(exports, digests, strict=True))
    return dict(sorted(results.items()))


def run(with_corpus: bool, corpus_auto: bool, jobs: int) -> dict[str, dict[str, str]]:
    jobs_list = []
    for name, path in sources(with_corpus):
        modes = (
            list(MODES)
            if not name.startswith("corpus/")
            else [*CORPUS_MODES, *(["auto"] if corpus_auto else [])]
        )
        jobs_list.append((name, path, modes))
    results: dict[str, dict[str, str]] = {}
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(fingerprint, *job): job[0] for job in jobs_list}
        for future in concurrent.futures.as_completed(futures):
            results[futures[future]] = future.result()
    return dict(sorted(results.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", help="write the fingerprints to this JSON file")
    action.add_argument("--check", help="compare with the fingerprints in this JSON file")
    parser.add_argument("--no-corpus", action="store_true", help="leave the exporter corpus out")
    parser.add_argument("--corpus-auto", action="store_true", help="also --auto on the corpus")
    parser.add_argument(
        "--training", action="store_true", help="the training outputs instead (training environment)"
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if args.training:
        try:
            import onnxruntime.training.artifacts  # noqa: F401
        except ImportError:
            print("error: --training needs onnxruntime-training: run it with .venv-training/bin/python")
            return 2
        results = run_training(args.jobs)
    else:
        results = run(not args.no_corpus, args.corpus_auto, args.jobs)
    conversions = sum(len(modes) for modes in results.values())
    if args.write:
        pathlib.Path(args.write).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        print(f"{len(results)} models, {conversions} conversions -> {args.write}")
        return 0
    expected = json.loads(pathlib.Path(args.check).read_text())
    differences = [
        f"{name} [{mode}]: {expected.get(name, {}).get(mode)} -> {digest}"
        for name, modes in results.items()
        for mode, digest in modes.items()
        if expected.get(name, {}).get(mode) != digest
    ]
    missing = sorted(set(expected) - set(results))
    for line in differences + [f"{name}: not converted this time" for name in missing]:
        print(line)
    print(f"{len(results)} models, {conversions} conversions: {len(differences) + len(missing)} differences")
    return 1 if differences or missing else 0


if __name__ == "__main__":
    sys.exit(main())
