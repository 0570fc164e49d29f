"""What the corpus holds: the build jobs (architecture x exporter) and the entries each one yields.

Pure data, no torch. A job is one export of one architecture into its own folder; it yields one
entry per ONNX graph (optimum's seq2seq export yields four: encoder, decoder, decoder with past
and the merged decoder).
"""

from __future__ import annotations

from dataclasses import dataclass

from models.corpus import architectures as kinds
from models.corpus.architectures import ARCHITECTURES, Architecture

EXPORTER_NAMES = ("torchscript", "dynamo", "optimum", "ultralytics")

# optimum's seq2seq "-with-past" export: file -> variant.
SEQ2SEQ_FILES = {
    "encoder_model.onnx": "encoder",
    "decoder_model.onnx": "decoder",
    "decoder_with_past_model.onnx": "decoder-with-past",
    "decoder_model_merged.onnx": "decoder-merged",
}

_VARIANT_BY_KIND = {
    kinds.TEXT_ENCODER: "encoder",
    kinds.CAUSAL_LM: "decoder-only",
    kinds.SEQ2SEQ: "encoder-decoder",
    kinds.SPEECH_SEQ2SEQ: "encoder-decoder",
    kinds.VISION: "vision",
    kinds.DETECTION: "vision",
    kinds.TEXT_VISION: "text-vision",
    kinds.AUDIO: "audio",
}


@dataclass(frozen=True)
class PlannedEntry:
    """One graph a job is expected to write."""

    name: str
    file: str
    variant: str
    families: tuple[str, ...]


@dataclass(frozen=True)
class Job:
    """One export: architecture, exporter and whether the graph takes a KV cache."""

    architecture: str
    exporter: str
    with_past: bool = False

    @property
    def name(self) -> str:
        """The job's folder name, e.g. ``llama-dynamo-with-past``."""
        return f"{self.architecture}-{self.exporter}" + ("-with-past" if self.with_past else "")

    @property
    def arch(self) -> Architecture:
        """The architecture this job exports."""
        return ARCHITECTURES[self.architecture]

    def identity(self, planned: PlannedEntry) -> dict[str, object]:
        """The manifest fields naming one of this job's graphs: ``Entry(**job.identity(planned), ...)``."""
        return {
            "name": planned.name,
            "architecture": self.architecture,
            "exporter": self.exporter,
            "variant": planned.variant,
            "family": planned.families,
            "model": f"{self.name}/{planned.file}",
            "job": self.name,
        }

    def entries(self) -> list[PlannedEntry]:
        """The graphs this job writes, with their entry names, variants and family tags."""
        arch = self.arch
        base = arch.families + (("dynamic-image",) if arch.dynamic_image else ())
        if (
            self.exporter == "optimum"
            and self.with_past
            and arch.kind in (kinds.SEQ2SEQ, kinds.SPEECH_SEQ2SEQ)
        ):
            return [
                PlannedEntry(
                    f"{arch.name}-optimum-{variant}", file, variant, base + _variant_families(variant)
                )
                for file, variant in SEQ2SEQ_FILES.items()
            ]
        variant = _VARIANT_BY_KIND[arch.kind] + ("-with-past" if self.with_past else "")
        return [PlannedEntry(self.name, "model.onnx", variant, base + _variant_families(variant))]


def _variant_families(variant: str) -> tuple[str, ...]:
    if variant == "decoder-merged":
        return ("kv-cache", "merged-decoder", "control-flow")
    if variant.endswith("with-past"):
        return ("kv-cache",)
    return ()


def _jobs(architecture: str, *exports: str) -> list[Job]:
    """Jobs from short codes: ``ts``/``dyn``/``opt``/``ul``, with ``+past`` for a KV-cache graph."""
    exporters = {"ts": "torchscript", "dyn": "dynamo", "opt": "optimum", "ul": "ultralytics"}
    jobs = []
    for code in exports:
        short, _, past = code.partition("+")
        jobs.append(Job(architecture, exporters[short], with_past=past == "past"))
    return jobs


JOBS: tuple[Job, ...] = (
    *_jobs("bert", "ts", "dyn", "opt"),
    *_jobs("distilbert", "ts", "opt"),
    *_jobs("roberta", "ts", "opt"),
    *_jobs("deberta-v2", "ts", "opt"),
    *_jobs("gpt2", "ts", "ts+past", "dyn+past", "opt", "opt+past"),
    *_jobs("llama", "ts", "ts+past", "dyn+past", "opt", "opt+past"),
    *_jobs("llama-8layer", "opt+past"),
    *_jobs("qwen2", "ts+past", "dyn+past", "opt+past"),
    *_jobs("mistral", "ts+past", "opt+past"),
    *_jobs("phi3", "ts+past", "dyn+past", "opt+past"),
    *_jobs("gemma", "ts+past", "opt+past"),
    *_jobs("gemma2", "ts+past", "opt+past"),
    *_jobs("gemma3", "ts+past", "opt+past"),
    *_jobs("t5", "ts", "opt+past"),
    *_jobs("bart", "ts", "opt+past"),
    *_jobs("whisper", "ts", "opt+past"),
    *_jobs("vit", "ts", "dyn", "opt"),
    *_jobs("clip", "ts", "opt"),
    *_jobs("convnext", "ts", "dyn", "opt"),
    *_jobs("swin", "ts", "opt"),
    *_jobs("segformer", "ts", "opt"),
    *_jobs("detr", "ts", "opt"),
    *_jobs("wav2vec2", "ts", "opt"),
    *_jobs("resnet18", "ts"),
    *_jobs("mobilenet_v2", "ts", "dyn"),
    *_jobs("efficientnet_b0", "ts"),
    *_jobs("efficientvit_b0", "ts"),
    *_jobs("melspectrogram", "ts"),
    *_jobs("silero_like_vad", "ts"),
    *_jobs("yolov8n", "ul"),
)


def select_jobs(names: list[str] | None) -> list[Job]:
    """The jobs matching any of ``names`` (a job, entry or architecture name); all when None."""
    if not names:
        return list(JOBS)
    wanted = set(names)
    chosen = [
        job
        for job in JOBS
        if job.name in wanted
        or job.architecture in wanted
        or any(entry.name in wanted for entry in job.entries())
    ]
    known = {job.name for job in JOBS} | set(ARCHITECTURES) | {e.name for j in JOBS for e in j.entries()}
    unknown = sorted(wanted - known)
    if unknown:
        raise KeyError(f"unknown corpus name(s): {', '.join(unknown)}")
    return chosen
