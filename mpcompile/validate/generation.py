"""Greedy generation with plain ONNX Runtime on an optimum export folder (no optimum, no torch).

``Generator(folder).generate(prompt, new_tokens)`` runs what ``optimum-cli export onnx`` writes:

- a decoder-only model with a KV cache (``model.onnx``): one run over the prompt with a
  zero-length past, then one token per run, each run's ``present.*`` fed back as the next
  run's ``past_key_values.*``;
- an encoder-decoder: ``encoder_model.onnx`` once, its ``last_hidden_state`` fed to the
  decoder's ``encoder_hidden_states``, then ``decoder_model_merged.onnx`` (``use_cache_branch``
  false on the first step, true after) or ``decoder_model.onnx`` followed by
  ``decoder_with_past_model.onnx``. The cross-attention cache (``*.encoder.*``) is taken from the
  first step and kept, as optimum does.

Each token is the argmax of the last position's logits (no end-of-sequence stop). The inputs the
loop makes (ids, masks, positions, the empty past) get the types their graph declares; values that
cross runs or files (present -> past, encoder output -> decoder input) are fed as they come, and a
dtype that differs from what the receiving graph declares is a ``GenerationError``: ONNX Runtime
would refuse the feed, and a deployment loop would have to insert a cast. FP16 inputs and outputs
(``--no-keep-io-types``) thus run as they would in a user's loop, and the result records the dtype
of every float value fed or read.

``faithful=True`` runs each graph in mpcompile's FP16-faithful CPU evaluation
(``mpcompile.evaluate.faithful``: every FP16/BF16 node output rounded as a GPU stores it) instead
of a plain ONNX Runtime session, the judge for what a GPU would generate; ORT's CPU EP computes
FP16 nodes without an FP16 kernel in FP32 behind its own Casts.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DECODER_ONLY = "decoder-only"
ENCODER_DECODER = "encoder-decoder"

_TYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}
_ELEMENT_TYPES = {1: "tensor(float)", 10: "tensor(float16)", 11: "tensor(double)", 16: "tensor(bfloat16)"}
_ELEMENT_TYPES.update({7: "tensor(int64)", 6: "tensor(int32)", 9: "tensor(bool)"})
_FLOAT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(double)", "tensor(bfloat16)")
PAST = "past_key_values."
PRESENT = "present."


# record(file, step, feeds): called with every run's feeds (``Generator.generate``)
Recorder = Callable[[str, int, Mapping[str, np.ndarray]], None]


class GenerationError(ValueError):
    """The folder cannot be run as a generation loop (layout, inputs or chained dtypes)."""


class NotGenerativeError(GenerationError):
    """The folder has no decoder with ``logits`` (e.g. a feature-extraction encoder)."""


@dataclass(frozen=True)
class ExportLayout:
    """Which files of an export folder a generation loop runs."""

    kind: str  # DECODER_ONLY or ENCODER_DECODER
    first: str  # the decoder run on the prompt (first step)
    later: str  # the decoder run on each further token (== first for a merged decoder)
    encoder: str | None = None

    @property
    def files(self) -> tuple[str, ...]:
        """The distinct .onnx files the loop opens, encoder first."""
        names = [self.encoder, self.first, self.later]
        return tuple(dict.fromkeys(name for name in names if name))


def detect_layout(folder: str | pathlib.Path, merged: bool | None = None) -> ExportLayout:
    """The generation layout of an optimum export ``folder``.

    ``merged``: True runs ``decoder_model_merged.onnx``, False the decoder / decoder-with-past
    pair (or a ``decoder_model.onnx`` without past alone); None takes the merged decoder when the
    folder has one. A folder whose decoder has no ``logits`` output (a feature-extraction encoder)
    raises ``NotGenerativeError``.
    """
    folder = pathlib.Path(folder)
    present = {path.name for path in folder.glob("*.onnx")}
    encoder = "encoder_model.onnx" if "encoder_model.onnx" in present else None
    kind = ENCODER_DECODER if encoder else DECODER_ONLY
    has_merged = "decoder_model_merged.onnx" in present
    use_merged = has_merged if merged is None else merged
    if use_merged and has_merged:
        layout = ExportLayout(kind, "decoder_model_merged.onnx", "decoder_model_merged.onnx", encoder)
    elif not use_merged and {"decoder_model.onnx", "decoder_with_past_model.onnx"} <= present:
        layout = ExportLayout(kind, "decoder_model.onnx", "decoder_with_past_model.onnx", encoder)
    elif not use_merged and "decoder_model.onnx" in present:
        layout = ExportLayout(kind, "decoder_model.onnx", "decoder_model.onnx", encoder)
    elif not encoder and merged is None and "model.onnx" in present:
        layout = ExportLayout(DECODER_ONLY, "model.onnx", "model.onnx")
    elif encoder or merged is not None:
        wanted = "decoder_model_merged.onnx" if use_merged else "decoder_model.onnx"
        raise GenerationError(f"{folder}: an export folder without {wanted}")
    else:
        raise NotGenerativeError(
            f"{folder}: neither model.onnx nor encoder_model.onnx (not an optimum export folder)"
        )
    for file in dict.fromkeys((layout.first, layout.later)):
        if "logits" not in _output_names(folder / file):
            raise NotGenerativeError(f"{folder / file}: no logits output (not a generative model)")
    return layout


def detect_layouts(folder: str | pathlib.Path) -> list[ExportLayout]:
    """Every generation layout of ``folder``: the merged decoder and the decoder / decoder-with-past
    pair when it has both, else the one it has. Raises like ``detect_layout``."""
    folder = pathlib.Path(folder)
    first = detect_layout(folder)
    if first.first != "decoder_model_merged.onnx" or not (folder / "decoder_model.onnx").is_file():
        return [first]
    return [first, detect_layout(folder, merged=False)]


def _output_names(path: pathlib.Path) -> set[str]:
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as error:  # a broken file is the per-file validation's to report
        raise GenerationError(f"{path}: not readable as ONNX ({error})") from None
    return {value.name for value in graph.output}


@dataclass(frozen=True)
class Generation:
    """The result of one greedy generation."""

    tokens: tuple[int, ...]  # the generated token ids (the prompt excluded)
    step_logits: tuple[np.ndarray, ...]  # float32 logits of the last position, one per token
    float_io: Mapping[str, str] = field(default_factory=dict)  # "file:name" -> dtype fed or read


class Generator:
    """ONNX Runtime sessions over an export folder, and the greedy loop that runs them."""

    def __init__(
        self,
        folder: str | pathlib.Path,
        *,
        merged: bool | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int = 1,
        faithful: bool = False,
    ) -> None:
        self.folder = pathlib.Path(folder)
        self.layout = detect_layout(self.folder, merged)
        self.sessions = {
            name: open_session(self.folder / name, faithful=faithful, providers=providers, threads=threads)
            for name in self.layout.files
        }

    @classmethod
    def from_sessions(
        cls, folder: str | pathlib.Path, layout: ExportLayout, sessions: Mapping[str, Any]
    ) -> Generator:
        """A generator over sessions opened elsewhere (``open_session``), one per file of ``layout``;
        ``folder`` still gives the config files (``decoder_start_token_id``)."""
        missing = [name for name in layout.files if name not in sessions]
        if missing:
            raise GenerationError(f"no session for {', '.join(missing)}")
        generator = cls.__new__(cls)
        generator.folder, generator.layout = pathlib.Path(folder), layout
        generator.sessions = {name: sessions[name] for name in layout.files}
        return generator

    def declared_float_io(self) -> dict[str, str]:
        """``{"file:name": ONNX type}`` of every float input and output of the loop's graphs."""
        declared = {}
        for file, session in self.sessions.items():
            for value in (*session.get_inputs(), *session.get_outputs()):
                if value.type in _FLOAT_TYPES:
                    declared[f"{file}:{value.name}"] = value.type
        return declared

    def decoder_start_token_id(self) -> int:
        """``decoder_start_token_id`` from the folder's generation_config.json or config.json."""
        for name in ("generation_config.json", "config.json"):
            path = self.folder / name
            if path.is_file():
                value = json.loads(path.read_text()).get("decoder_start_token_id")
                if value is not None:
                    return int(value)
        raise GenerationError(
            f"{self.folder}: no decoder_start_token_id in generation_config.json or config.json"
        )

    def generate(
        self,
        prompt: Sequence[int],
        new_tokens: int,
        forced: Sequence[int] | None = None,
        *,
        record: Recorder | None = None,
        expected: Sequence[int] | None = None,
    ) -> Generation:
        """``new_tokens`` greedy tokens after ``prompt`` (token ids, one sequence).

        ``forced``: feed these tokens instead of the argmax (teacher forcing, to read the logits
        on another run's context); the result's tokens are still the argmax of each step.
        ``record(file, step, feeds)`` sees every run's feeds. ``expected``: stop after the first
        token that differs from it (the result is then shorter than ``new_tokens``).
        """
        if not len(prompt):
            raise GenerationError("the prompt is empty")
        if forced is not None and len(forced) < new_tokens:
            raise GenerationError(f"{len(forced)} forced tokens for {new_tokens} steps")
        ids = np.asarray(prompt, dtype=np.int64)[None, :]
        loop = _Loop(self.sessions, forced, record, expected)
        if self.layout.kind == DECODER_ONLY:
            return loop.decoder_only(self.layout, ids, new_tokens)
        return loop.encoder_decoder(self.layout, ids, new_tokens, self.decoder_start_token_id())


class _Loop:
    """One generation: runs the sessions, checks the dtypes of chained values, records float IO."""

    def __init__(
        self,
        sessions: Mapping[str, Any],
        forced: Sequence[int] | None = None,
        record: Recorder | None = None,
        expected: Sequence[int] | None = None,
    ) -> None:
        self.sessions = sessions
        self.forced = forced
        self.record = record
        self.expected = expected
        self.step = 0
        self.float_io: dict[str, str] = {}
        self.origins: dict[str, str] = {}  # chained input -> "file:output" it comes from

    def decoder_only(self, layout: ExportLayout, ids: np.ndarray, new_tokens: int) -> Generation:
        sequence = ids
        cache: dict[str, np.ndarray] = {}
        tokens: list[int] = []
        logits: list[np.ndarray] = []
        for step in range(new_tokens):
            self.step = step
            file = layout.first if step == 0 else layout.later
            total = sequence.shape[1]
            current = sequence[:, -1:] if step > 0 and self._has_past(file) else sequence
            past_length = total - current.shape[1]
            made = {
                "input_ids": current,
                "attention_mask": np.ones((1, total), np.int64),
                "position_ids": np.arange(past_length, total, dtype=np.int64)[None, :],
                "use_cache_branch": np.array([step > 0]),
            }
            outputs = self.run(file, made, cache)
            token = self._next_token(outputs, logits, tokens, step)
            if self._diverged(tokens):
                break
            self._update_cache(cache, outputs, keep_encoder=False)
            sequence = np.concatenate([sequence, np.array([[token]], np.int64)], axis=1)
        return Generation(tuple(tokens), tuple(logits), dict(self.float_io))

    def encoder_decoder(
        self, layout: ExportLayout, ids: np.ndarray, new_tokens: int, start: int
    ) -> Generation:
        assert layout.encoder is not None
        mask = np.ones(ids.shape, np.int64)
        encoded = self.run(layout.encoder, {"input_ids": ids, "attention_mask": mask}, {})
        if "last_hidden_state" not in encoded:
            raise GenerationError(f"{layout.encoder} has no last_hidden_state output")
        chained = {"encoder_hidden_states": encoded["last_hidden_state"]}
        self.origins["encoder_hidden_states"] = f"{layout.encoder}:last_hidden_state"
        cache: dict[str, np.ndarray] = {}
        sequence = np.array([[start]], dtype=np.int64)
        tokens: list[int] = []
        logits: list[np.ndarray] = []
        for step in range(new_tokens):
            self.step = step
            file = layout.first if step == 0 else layout.later
            current = sequence[:, -1:] if step > 0 and self._has_past(file) else sequence
            made = {
                "input_ids": current,
                "encoder_attention_mask": mask,
                "use_cache_branch": np.array([step > 0]),
            }
            outputs = self.run(file, made, {**cache, **chained})
            token = self._next_token(outputs, logits, tokens, step)
            if self._diverged(tokens):
                break
            self._update_cache(cache, outputs, keep_encoder=True)
            sequence = np.concatenate([sequence, np.array([[token]], np.int64)], axis=1)
        return Generation(tuple(tokens), tuple(logits), dict(self.float_io))

    def _diverged(self, tokens: Sequence[int]) -> bool:
        """True when the last token differs from ``expected`` (then the loop stops)."""
        return self.expected is not None and tokens[-1] != self.expected[len(tokens) - 1]

    def _has_past(self, file: str) -> bool:
        """True when ``file`` takes a KV cache (then it is fed only the newest token)."""
        return any(value.name.startswith(PAST) for value in self.sessions[file].get_inputs())

    def run(
        self,
        file: str,
        made: Mapping[str, np.ndarray],
        chained: Mapping[str, np.ndarray],
    ) -> dict[str, np.ndarray]:
        """Run ``file``: inputs the loop makes are cast to the declared type; chained values
        (``past_key_values.*`` under their input name, encoder outputs) must already have it."""
        session = self.sessions[file]
        feeds: dict[str, np.ndarray] = {}
        for value in session.get_inputs():
            dtype = _numpy_type(file, value.name, value.type)
            if value.name in chained:
                array = chained[value.name]
                if array.dtype != dtype and not getattr(session, "casts_feeds", False):
                    origin = self.origins.get(value.name, value.name.replace(PAST, PRESENT, 1))
                    raise GenerationError(
                        f"{file}: input {value.name} is declared {value.type} but {origin} comes out "
                        f"{array.dtype}; the loop cannot chain them without a cast"
                    )
            elif value.name in made:
                array = made[value.name].astype(dtype, copy=False)
            elif value.name.startswith(PAST):
                array = _empty_past(file, value, dtype)
            else:
                raise GenerationError(f"{file}: the generation loop has nothing to feed input {value.name}")
            feeds[value.name] = array
            self._record(file, value.name, array)
        if self.record is not None:
            self.record(file, self.step, feeds)
        names = [value.name for value in session.get_outputs()]
        outputs = dict(zip(names, session.run(names, feeds), strict=True))
        for name, array in outputs.items():
            self._record(file, name, array)
        return outputs

    def _record(self, file: str, name: str, array: np.ndarray) -> None:
        if np.issubdtype(array.dtype, np.floating):
            self.float_io[f"{file}:{name}"] = str(array.dtype)

    def _next_token(
        self, outputs: Mapping[str, np.ndarray], logits: list[np.ndarray], tokens: list[int], step: int
    ) -> int:
        """Record the step's logits and argmax; the token to feed next (the forced one if any)."""
        if "logits" not in outputs:
            raise GenerationError("the decoder has no logits output")
        last = outputs["logits"][0, -1].astype(np.float32)
        logits.append(last)
        tokens.append(int(np.argmax(last)))
        return tokens[-1] if self.forced is None else int(self.forced[step])

    @staticmethod
    def _update_cache(
        cache: dict[str, np.ndarray], outputs: Mapping[str, np.ndarray], keep_encoder: bool
    ) -> None:
        """present.X becomes past_key_values.X; the cross-attention cache only from the first step."""
        for name, array in outputs.items():
            if not name.startswith(PRESENT):
                continue
            past = PAST + name[len(PRESENT) :]
            if keep_encoder and ".encoder." in name and past in cache:
                continue
            cache[past] = array


@dataclass(frozen=True)
class _ValueInfo:
    name: str
    type: str
    shape: list[Any]


def open_session(
    model: pathlib.Path | Any,
    *,
    faithful: bool = False,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int = 1,
) -> Any:
    """A session the loop runs: ``model`` (a path, or an ``ir.Model`` when ``faithful``) in plain
    ONNX Runtime, or its FP16-faithful evaluation."""
    if faithful:
        return _FaithfulSession(model)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(model), options, providers=list(providers))


class _FaithfulSession:
    """An ``InferenceSession``-like view of the FP16-faithful evaluation of one graph: the graph's
    declared inputs and outputs, and outputs with their declared dtypes, GPU-rounded."""

    def __init__(self, model: pathlib.Path | Any) -> None:
        import onnx

        from mpcompile.evaluate.faithful import FaithfulSession

        if isinstance(model, pathlib.Path):
            graph = onnx.load(str(model), load_external_data=False).graph
            self._inputs = [_value_info(value) for value in graph.input]
            self._outputs = [_value_info(value) for value in graph.output]
            self._session = FaithfulSession(str(model))
            return
        self._inputs = [_ir_value_info(value) for value in model.graph.inputs]
        self._outputs = [_ir_value_info(value) for value in model.graph.outputs]
        self._session = FaithfulSession(model)

    def get_inputs(self) -> list[_ValueInfo]:
        return self._inputs

    def get_outputs(self) -> list[_ValueInfo]:
        return self._outputs

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        results = self._session.run(feeds)
        return [results[name] for name in names]


def _value_info(value: Any) -> _ValueInfo:
    tensor = value.type.tensor_type
    shape = [dim.dim_value if dim.HasField("dim_value") else dim.dim_param for dim in tensor.shape.dim]
    return _ValueInfo(
        value.name, _ELEMENT_TYPES.get(tensor.elem_type, f"element type {tensor.elem_type}"), shape
    )


def _ir_value_info(value: Any) -> _ValueInfo:
    """``_value_info`` of an onnx-ir value (its dtype and shape as ONNX Runtime would report them)."""
    dtype = value.dtype
    name = _ELEMENT_TYPES.get(int(dtype), f"element type {int(dtype)}") if dtype is not None else "unknown"
    shape = [] if value.shape is None else [dim if isinstance(dim, int) else str(dim) for dim in value.shape]
    return _ValueInfo(value.name, name, shape)


def _numpy_type(file: str, name: str, onnx_type: str) -> Any:
    dtype = _TYPES.get(onnx_type)
    if dtype is None:
        raise GenerationError(f"{file}: input {name} has type {onnx_type}, which this loop does not feed")
    return dtype


def _empty_past(file: str, value: Any, dtype: Any) -> np.ndarray:
    """A zero-length past (batch 1) for the first step: ``[1, heads, 0, head_dim]``."""
    shape = list(value.shape)
    if len(shape) != 4 or not all(isinstance(dim, int) for dim in shape[1:2] + shape[3:]):
        raise GenerationError(
            f"{file}: past input {value.name} has shape {shape}, not [batch, heads, past, head_dim]"
        )
    return np.zeros((1, shape[1], 0, shape[3]), dtype)
