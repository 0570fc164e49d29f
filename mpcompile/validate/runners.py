"""Runners: one uniform ``infer(feeds)`` per way of running a model (Polygraphy's backend idea).

``OrtRunner`` runs a model in an ONNX Runtime session on one execution provider; on CUDA and
TensorRT it uses IO binding, so timed runs exclude host/device copies. ``FaithfulRunner``
runs the FP16-faithful CPU evaluation (``mpcompile.evaluate.faithful``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mpcompile import errors
from mpcompile.evaluate.faithful import FaithfulSession
from mpcompile.evaluate.ort_session import (
    ModelLike,
    import_onnxruntime,
    is_onnxruntime_error,
    make_session,
    onnxruntime_log_severity,
)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
EP_ALIASES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT}
SHORT_NAMES = {CPU: "cpu", CUDA: "cuda", TENSORRT: "tensorrt"}
DEFAULT_EPS = (TENSORRT, CUDA, CPU)  # tried in this order when --ep is not given
GPU_EPS = frozenset({CUDA, TENSORRT})

Feeds = Mapping[str, np.ndarray]


class EpLoadError(Exception):
    """An execution provider is listed by onnxruntime but could not run this session."""


@dataclasses.dataclass(frozen=True)
class EpChoice:
    """An execution provider to run, and whether the user asked for it by name."""

    provider: str
    explicit: bool

    @property
    def short_name(self) -> str:
        return SHORT_NAMES.get(self.provider, self.provider)


def parse_ep_option(values: Sequence[str] | None) -> list[str] | None:
    """``cuda,tensorrt,cpu`` (or repeated options) → provider names; None when not given."""
    if not values:
        return None
    providers = []
    for value in values:
        for name in filter(None, (part.strip() for part in value.split(","))):
            provider = EP_ALIASES.get(name.lower(), name)
            if provider not in providers:
                providers.append(provider)
    return providers


def choose_eps(requested: Sequence[str] | None) -> tuple[list[EpChoice], dict[str, str]]:
    """The EPs to run and the skipped ones with the reason.

    Without ``requested``: every EP of ``DEFAULT_EPS`` onnxruntime offers; the others are
    skipped. An explicitly requested EP that onnxruntime does not offer is an error.
    """
    ort = import_onnxruntime()
    available = ort.get_available_providers()
    if requested is None:
        chosen = [EpChoice(p, explicit=False) for p in DEFAULT_EPS if p in available]
        skipped = {p: "not offered by the installed onnxruntime" for p in DEFAULT_EPS if p not in available}
        return chosen, skipped
    missing = [p for p in requested if p not in available]
    if missing:
        raise errors.ExecutionProviderError(
            f"execution provider {', '.join(missing)} is not available in onnxruntime {ort.__version__} "
            f"(available: {', '.join(available)})"
        )
    return [EpChoice(p, explicit=True) for p in requested], {}


class OrtRunner:
    """A model in an ONNX Runtime session on one EP, with ``infer`` and a timing hook."""

    def __init__(
        self,
        name: str,
        model: bytes | str,
        provider: str,
        provider_options: Mapping[str, Any] | None = None,
    ):
        self.name = name
        self.provider = provider
        self.provider_options = dict(provider_options or {})
        self._model = model
        self._session: Any = None
        self._bound: tuple[Any, list[Any]] | None = None

    @property
    def uses_io_binding(self) -> bool:
        return self.provider in GPU_EPS

    def activate(self) -> None:
        """Create the session; ``EpLoadError`` when the EP is listed but cannot run it."""
        providers: list[Any] = (
            [(self.provider, self.provider_options)] if self.provider_options else [self.provider]
        )
        if self.provider != CPU:
            providers.append(CPU)  # ORT wants the fallback listed; we check it was not used alone
        if self.provider == CPU:
            self._session = make_session(self._model, providers)
            return
        try:
            with _quiet_onnxruntime():
                session = make_session(self._model, providers)
        except Exception as exc:  # EP libraries failing to load raise assorted types
            if not (isinstance(exc, errors.InvalidModelError) or is_onnxruntime_error(exc)):
                raise
            raise EpLoadError(f"{self.provider} failed to load ({_first_line(exc)})") from None
        if self.provider not in session.get_providers():
            raise EpLoadError(
                f"{self.provider} is installed but could not be loaded (no GPU, driver or CUDA libraries?)"
            )
        self._session = session

    @property
    def output_names(self) -> list[str]:
        return [output.name for output in self._session.get_outputs()]

    def infer(self, feeds: Feeds) -> dict[str, np.ndarray]:
        """Run once and return every output as a host array."""
        if self.uses_io_binding:
            binding, _ = self._bind(feeds)
            self._session.run_with_iobinding(binding)
            return dict(zip(self.output_names, binding.copy_outputs_to_cpu(), strict=True))
        return dict(zip(self.output_names, self._session.run(None, dict(feeds)), strict=True))

    def timer(self, feeds: Feeds) -> Callable[[], object]:
        """A function running one inference on prepared inputs (device-resident with IO binding)."""
        if self.uses_io_binding:
            binding, _ = self._bind(feeds)
            return lambda: self._session.run_with_iobinding(binding)
        names, prepared = self.output_names, dict(feeds)
        return lambda: self._session.run(names, prepared)

    def _bind(self, feeds: Feeds) -> tuple[Any, list[Any]]:
        ort = import_onnxruntime()
        binding = self._session.io_binding()
        keep_alive = []
        for name, array in feeds.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", 0)
            binding.bind_ortvalue_input(name, value)
            keep_alive.append(value)
        for name in self.output_names:
            binding.bind_output(name, "cuda", 0)
        self._bound = (binding, keep_alive)
        return self._bound


class FaithfulRunner:
    """The FP16-faithful CPU evaluation of a model (accuracy only; it is not timed)."""

    provider = CPU
    uses_io_binding = False

    def __init__(self, name: str, model: ModelLike):
        self.name = name
        self._model = model
        self._session: FaithfulSession | None = None

    def activate(self) -> None:
        self._session = FaithfulSession(self._model)

    def infer(self, feeds: Feeds) -> dict[str, np.ndarray]:
        assert self._session is not None, "activate() first"
        return self._session.run(feeds)


@contextlib.contextmanager
def _quiet_onnxruntime():
    """Silence onnxruntime's own log lines and warnings while a GPU EP tries to load; we report
    a failure in one line ourselves. The logger severity and warning filters are restored after."""
    with onnxruntime_log_severity(4), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def tensorrt_cache_folder():
    """A temporary folder for TensorRT engine caches, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="mpcompile-trt-") as folder:
        yield folder


def provider_options(provider: str, cache_folder: str | None, *, trt_fp16: bool = False) -> dict[str, Any]:
    """EP options: TensorRT gets an engine cache in ``cache_folder`` and, for the baseline, FP16 mode."""
    if provider != TENSORRT:
        return {}
    options: dict[str, Any] = {"trt_fp16_enable": trt_fp16}
    if cache_folder is not None:
        options.update(trt_engine_cache_enable=True, trt_engine_cache_path=cache_folder)
    return options


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
