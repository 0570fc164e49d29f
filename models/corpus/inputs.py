"""Realistic inputs for the corpus models, at two sizes (numpy; onnxruntime for chained graphs).

``PROFILES`` are the two input sizes. Token ids lie inside the vocabulary, attention masks pad
some rows at the end, images are smooth synthetic pictures normalised like ImageNet, audio is a
few tones in noise (log-mel features for Whisper). Graphs with a KV cache get a real cache: the
past comes from running a graph of the same job on a prefix with an empty (length 0) past, the
way optimum's runtime starts generation; seq2seq decoders get the encoder's real output.
``make_samples`` returns the feeds of every graph of a job, one per profile.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.corpus import architectures as kinds
from models.corpus.architectures import Architecture

Feeds = dict[str, np.ndarray]

_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(1, 3, 1, 1)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(1, 3, 1, 1)
_SAMPLE_RATE = 16000
_FIRST_REGULAR_TOKEN = 3  # ids 0..2 are pad/bos/eos in every corpus config


@dataclass(frozen=True)
class Profile:
    """One input size."""

    batch: int
    sequence: int  # tokens of a text input without a cache (and of an encoder input)
    past: int  # cached positions for graphs with a KV cache
    new_tokens: int  # tokens fed beside a past
    image: tuple[int, int]  # (height, width) for models with dynamic image size
    audio_samples: int  # waveform length for models with dynamic audio length
    seed: int


PROFILES: tuple[Profile, ...] = (
    Profile(batch=2, sequence=8, past=3, new_tokens=1, image=(64, 64), audio_samples=1600, seed=0),
    Profile(batch=3, sequence=13, past=5, new_tokens=3, image=(96, 80), audio_samples=2800, seed=1),
)


# --- building blocks -------------------------------------------------------------------------


def token_lengths(rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    """Valid lengths per row: row 0 is full, row 1 (when there is one) is padded, others random."""
    lengths = rng.integers(max(1, length // 2), length + 1, size=batch)
    lengths[0] = length
    if batch > 1 and length > 1:
        lengths[1] = max(1, length - 1 - length // 3)
    return lengths


def padding_mask(lengths: np.ndarray, length: int) -> np.ndarray:
    """int64 0/1 mask ``(batch, length)`` with each row padded at the end."""
    return (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)


def token_ids(
    rng: np.random.Generator, mask: np.ndarray, vocab: int, pad_id: int, first_id: int | None = None
) -> np.ndarray:
    """Random regular ids inside ``vocab``; ``pad_id`` where ``mask`` is 0; ``first_id`` leads each row."""
    ids = rng.integers(_FIRST_REGULAR_TOKEN, vocab, size=mask.shape).astype(np.int64)
    if first_id is not None:
        ids[:, 0] = first_id
    return np.where(mask.astype(bool), ids, pad_id).astype(np.int64)


def token_types(mask: np.ndarray, segments: int) -> np.ndarray:
    """Segment ids: 0 for the first half of each row's tokens, 1 for the rest (when there are 2 types)."""
    if segments < 2:
        return np.zeros_like(mask)
    lengths = mask.sum(axis=1)
    second = np.arange(mask.shape[1])[None, :] >= (lengths[:, None] + 1) // 2
    return (second & mask.astype(bool)).astype(np.int64)


def positions(mask: np.ndarray) -> np.ndarray:
    """Position ids as transformers' ``generate`` derives them: cumulative sum of the mask, minus 1."""
    return np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int64)


def images(rng: np.random.Generator, batch: int, height: int, width: int) -> np.ndarray:
    """Smooth synthetic RGB pictures (gradients, boxes, noise), ImageNet-normalised, ``(b, 3, h, w)``."""
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    cols = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    pictures = np.empty((batch, 3, height, width), dtype=np.float32)
    for index in range(batch):
        angle = rng.uniform(0, np.pi)
        base = np.cos(angle) * rows + np.sin(angle) * cols
        for channel in range(3):
            pictures[index, channel] = rng.uniform(0.2, 0.8) * base + rng.uniform(0.0, 0.3)
        for _ in range(3):
            top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
            tall, wide = rng.integers(height // 8, height // 2), rng.integers(width // 8, width // 2)
            pictures[index, :, top : top + tall, left : left + wide] = rng.uniform(0, 1, size=(3, 1, 1))
    pictures += rng.normal(0.0, 0.03, size=pictures.shape).astype(np.float32)
    pictures = np.clip(pictures, 0.0, 1.0)
    return ((pictures - _IMAGENET_MEAN) / _IMAGENET_STD).astype(np.float32)


def pixel_mask(batch: int, height: int, width: int) -> np.ndarray:
    """DETR's pixel mask: row 0 the whole picture, other rows a smaller picture padded bottom-right."""
    mask = np.zeros((batch, height, width), dtype=np.int64)
    mask[0] = 1
    mask[1:, : max(1, height * 3 // 4), : max(1, width * 4 // 5)] = 1
    return mask


def waveforms(rng: np.random.Generator, batch: int, samples: int) -> np.ndarray:
    """A few tones with a fading envelope in light noise, 16 kHz, each row zero-mean unit-variance."""
    time = np.arange(samples, dtype=np.float64) / _SAMPLE_RATE
    waves = np.zeros((batch, samples), dtype=np.float64)
    for index in range(batch):
        for _ in range(3):
            frequency = rng.uniform(100.0, 2000.0)
            waves[index] += rng.uniform(0.2, 1.0) * np.sin(2 * np.pi * frequency * time + rng.uniform(0, 6.3))
        waves[index] *= np.exp(-time * rng.uniform(0.5, 3.0))
    waves += rng.normal(0.0, 0.05, size=waves.shape)
    waves = (waves - waves.mean(axis=1, keepdims=True)) / (waves.std(axis=1, keepdims=True) + 1e-7)
    return waves.astype(np.float32)


# Quiet speech, about -36 dBFS at its peak: a 400-sample STFT of these tones stays below half of
# FP16's 65504 (~2.4e4: --auto's range headroom), while its power spectrum (~6e8) does not.
# Louder audio overflows the STFT Conv itself, which no rule without the input's scale foresees.
INT16_PEAK = 500.0


def int16_scale(waves: np.ndarray) -> np.ndarray:
    """Waveforms as an int16 recording holds them (integers, peak ``INT16_PEAK``), as float32."""
    peak = np.abs(waves).max(axis=1, keepdims=True) + 1e-7
    return np.round(waves / peak * INT16_PEAK).astype(np.float32)


def log_mel(waves: np.ndarray, bins: int, frames: int) -> np.ndarray:
    """Whisper-style log-mel features ``(b, bins, frames)``: 25 ms Hann windows, 10 ms hop, (log10 + 4) / 4."""
    n_fft, hop = 400, 160
    needed = (frames - 1) * hop + n_fft
    padded = np.pad(waves, ((0, 0), (0, max(0, needed - waves.shape[1]))))
    starts = np.arange(frames) * hop
    window = np.hanning(n_fft + 1)[:-1]
    frames_ = padded[:, starts[:, None] + np.arange(n_fft)[None, :]] * window
    power = np.abs(np.fft.rfft(frames_, axis=-1)) ** 2  # (b, frames, n_fft // 2 + 1)
    mel = np.einsum("btf,mf->bmt", power, _mel_filters(bins, n_fft))
    logs = np.log10(np.maximum(mel, 1e-10))
    logs = np.maximum(logs, logs.max(axis=(1, 2), keepdims=True) - 8.0)
    return ((logs + 4.0) / 4.0).astype(np.float32)


def _mel_filters(bins: int, n_fft: int) -> np.ndarray:
    """Triangular mel filters ``(bins, n_fft // 2 + 1)`` between 0 Hz and 8 kHz."""

    def to_mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    edges_mel = np.linspace(to_mel(np.array(0.0)), to_mel(np.array(_SAMPLE_RATE / 2)), bins + 2)
    edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)
    freqs = np.linspace(0, _SAMPLE_RATE / 2, n_fft // 2 + 1)
    lower = (freqs[None, :] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    upper = (edges[2:, None] - freqs[None, :]) / (edges[2:, None] - edges[1:-1, None])
    return np.maximum(0.0, np.minimum(lower, upper))


# --- text, image and audio batches of one profile ----------------------------------------------


def _config(arch: Architecture) -> Mapping[str, Any]:
    return arch.config.get("text_config", arch.config)


def pad_id(arch: Architecture) -> int:
    """The padding token id of ``arch`` (0 when the config has none)."""
    return int(_config(arch).get("pad_token_id") or 0)


def text_batch(arch: Architecture, rng: np.random.Generator, batch: int, length: int) -> Feeds:
    """``input_ids`` and ``attention_mask`` ``(batch, length)``, rows padded at the end."""
    mask = padding_mask(token_lengths(rng, batch, length), length)
    first = _config(arch).get("bos_token_id") if arch.kind == kinds.CAUSAL_LM else None
    return {"input_ids": token_ids(rng, mask, arch.vocab_size, pad_id(arch), first), "attention_mask": mask}


def decoder_ids(arch: Architecture, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    """Decoder token ids ``(batch, length)`` starting with the decoder start token."""
    start = int(arch.config.get("decoder_start_token_id") or 0)
    return token_ids(rng, np.ones((batch, length), dtype=np.int64), arch.vocab_size, 0, start)


def image_size(arch: Architecture, profile: Profile) -> tuple[int, int]:
    """The profile's (height, width) for a dynamic-size model, else the configured square."""
    if not arch.dynamic_image:
        return (arch.image_size, arch.image_size)
    if arch.image_sizes:  # sizes of its own, one per profile (the export example: the configured square)
        if profile not in PROFILES:
            return (arch.image_size, arch.image_size)
        return arch.image_sizes[PROFILES.index(profile) % len(arch.image_sizes)]
    return profile.image


def _rng(profile: Profile, stream: int) -> np.random.Generator:
    """One generator per (profile, stream): every graph of a profile sees the same text and pictures."""
    return np.random.default_rng([profile.seed, stream])


# --- feeds for the torch exporters (examples) -----------------------------------------------


def torch_example_feeds(
    arch: Architecture, profile: Profile, length: int | None = None, past: int = 0
) -> Feeds:
    """Inputs in the order the torch wrappers take them (past tensors are added by the wrapper).

    For a causal LM, ``length`` overrides the sequence and ``past`` > 0 makes the feeds of a step
    after ``past`` cached positions (new tokens only, the mask covering past and current).
    """
    batch = profile.batch
    if arch.kind == kinds.CAUSAL_LM:
        if past:
            prefix = text_batch(arch, _rng(profile, 0), batch, past)
            # The new tokens continue every row: regular ids, no padding among them.
            current = np.ones((batch, profile.new_tokens), dtype=np.int64)
            new_ids = token_ids(_rng(profile, 1), current, arch.vocab_size, pad_id(arch))
            mask = np.concatenate([prefix["attention_mask"], current], axis=1)
            position = positions(mask)[:, past:]
            return {"input_ids": new_ids, "attention_mask": mask, "position_ids": position}
        text = text_batch(arch, _rng(profile, 0), batch, length or profile.sequence)
        return {**text, "position_ids": positions(text["attention_mask"])}
    if arch.kind == kinds.TEXT_ENCODER:
        text = text_batch(arch, _rng(profile, 0), batch, profile.sequence)
        segments = int(arch.config.get("type_vocab_size", 0))
        if segments >= 2:
            text["token_type_ids"] = token_types(text["attention_mask"], segments)
        return text
    if arch.kind == kinds.SEQ2SEQ:
        text = text_batch(arch, _rng(profile, 0), batch, profile.sequence)
        return {
            **text,
            "decoder_input_ids": decoder_ids(arch, _rng(profile, 2), batch, profile.new_tokens + 2),
        }
    if arch.kind == kinds.SPEECH_SEQ2SEQ:
        # A decoder mask (rows padded at the end) keeps transformers from probing position_ids
        # for packed sequences (torch.diff, which the TorchScript exporter cannot export).
        length = profile.new_tokens + 2
        mask = padding_mask(token_lengths(_rng(profile, 5), batch, length), length)
        ids = np.where(mask.astype(bool), decoder_ids(arch, _rng(profile, 2), batch, length), pad_id(arch))
        return {
            "input_features": speech_features(arch, profile),
            "decoder_input_ids": ids,
            "decoder_attention_mask": mask,
        }
    if arch.kind == kinds.AUDIO and arch.extra.get("feeds") == "vad":
        return vad_feeds(arch, profile)
    if arch.kind == kinds.AUDIO:
        waves = waveforms(_rng(profile, 3), batch, profile.audio_samples)
        if arch.extra.get("audio") == "int16":
            waves = int16_scale(waves)
        return {"input_values": waves}
    height, width = image_size(arch, profile)
    pictures = images(_rng(profile, 4), batch, height, width)
    if arch.extra.get("pixels") == "unit":
        pictures = pictures * _IMAGENET_STD + _IMAGENET_MEAN
    if "input_name" in arch.extra:
        return {arch.extra["input_name"]: pictures.astype(np.float32)}
    if arch.kind == kinds.DETECTION:
        mask = pixel_mask(batch, height, width)
        return {"pixel_values": pictures * mask[:, None].astype(np.float32), "pixel_mask": mask}
    if arch.kind == kinds.TEXT_VISION:
        return {**text_batch(arch, _rng(profile, 0), batch, profile.sequence), "pixel_values": pictures}
    return {"pixel_values": pictures}


def vad_feeds(arch: Architecture, profile: Profile) -> Feeds:
    """A silero-like detector's feeds: waveforms in [-1, 1], a small LSTM state, ``sr`` = 16000
    (shape ``(1,)``: the TorchScript exporter declares a scripted module's 0-d input as ``[1]``)."""
    rng = _rng(profile, 5)
    state = 0.1 * rng.standard_normal((2, profile.batch, arch.config["hidden"]))
    return {
        "input": waveforms(_rng(profile, 3), profile.batch, profile.audio_samples),
        "state": state.astype(np.float32),
        "sr": np.array([16000], np.int64),
    }


def speech_features(arch: Architecture, profile: Profile) -> np.ndarray:
    """Log-mel features of the profile's waveforms, at the model's fixed frame count."""
    samples = arch.audio_frames * 160
    return log_mel(
        waveforms(_rng(profile, 3), profile.batch, samples), arch.config["num_mel_bins"], arch.audio_frames
    )


def symbolic_axes(arch: Architecture, name: str, ndim: int) -> dict[int, str]:
    """The dynamic axes a torch export gives input ``name`` (named like optimum's)."""
    if name in arch.extra.get("input_axes", {}):
        return dict(arch.extra["input_axes"][name])
    if name in ("pixel_values", "pixel_mask") or name == arch.extra.get("input_name"):
        axes = {0: "batch"}
        if arch.dynamic_image:
            first = ndim - 2
            axes.update({first: "height", first + 1: "width"})
        return axes
    if name == "input_values":
        return {0: "batch", 1: "samples"}
    if name == "input_features":
        return {0: "batch"}
    if name.startswith("decoder_"):
        return {0: "batch", 1: "decoder_sequence"}
    return {0: "batch", 1: "sequence"}


# --- feeds for the exported graphs (what the corpus stores) ---------------------------------


Runner = Callable[[Path, Feeds], dict[str, np.ndarray]]


@dataclass(frozen=True)
class GraphInput:
    """One graph input as onnxruntime reports it: name, numpy dtype, shape (str or None: symbolic)."""

    name: str
    dtype: Any
    shape: tuple[int | str | None, ...]


def _past_names(graph: list[GraphInput]) -> list[GraphInput]:
    return [value for value in graph if value.name.startswith("past_key_values")]


def empty_past(graph: list[GraphInput], batch: int) -> Feeds:
    """Length-0 past tensors for every past input, as optimum's runtime feeds on the first step."""
    feeds = {}
    for value in _past_names(graph):
        shape = [batch if axis == 0 else (0 if axis == 2 else dim) for axis, dim in enumerate(value.shape)]
        if any(not isinstance(dim, int) for dim in shape):
            raise ValueError(f"{value.name}: past shape {value.shape} has symbolic head dims")
        feeds[value.name] = np.zeros(shape, dtype=value.dtype)
    return feeds


def presents_as_past(outputs: Mapping[str, np.ndarray]) -> Feeds:
    """The ``present.*`` outputs renamed to the ``past_key_values.*`` inputs they feed next step."""
    return {
        name.replace("present", "past_key_values", 1): array
        for name, array in outputs.items()
        if name.startswith("present")
    }


def make_samples(
    arch: Architecture,
    file: str,
    variants: Mapping[str, str],
    graphs: Mapping[str, list[GraphInput]],
    run: Runner,
) -> list[Feeds]:
    """The feeds of graph ``file`` of a job, one per profile.

    ``variants`` maps each file of the job to its variant (``encoder``, ``decoder``,
    ``decoder-with-past``, ``decoder-merged``, ``decoder-only-with-past``, ...); ``graphs`` gives
    their inputs; ``run`` runs a file on feeds (to chain: the encoder's output, real caches).
    """
    by_variant = {variant: name for name, variant in variants.items()}
    return [
        _graph_feeds(arch, variants[file], file, graphs, by_variant, run, profile, index)
        for index, profile in enumerate(PROFILES)
    ]


def sample_notes(variant: str) -> str:
    """How the samples of a variant were made (recorded in the manifest)."""
    if variant == "decoder-merged":
        return (
            "sample 0: use_cache_branch=False with empty (length 0) past, as optimum's runtime feeds the "
            "first step; sample 1: use_cache_branch=True with the cache of a no-cache run on a prefix"
        )
    if variant.endswith("with-past"):
        return "past_key_values: the real cache of a run on a prefix (empty past), attention_mask covers past+new"
    return ""


def _graph_feeds(
    arch: Architecture,
    variant: str,
    file: str,
    graphs: Mapping[str, list[GraphInput]],
    by_variant: Mapping[str, str],
    run: Runner,
    profile: Profile,
    index: int,
) -> Feeds:
    graph = graphs[file]
    names = [value.name for value in graph]
    if variant == "decoder-only-with-past":
        return _causal_step(arch, file, graph, run, profile)
    if variant in ("decoder", "decoder-with-past", "decoder-merged"):
        return _seq2seq_decoder(arch, variant, file, graphs, by_variant, run, profile, use_cache=index == 1)
    feeds = torch_example_feeds(arch, profile)
    if variant == "encoder" and arch.kind in (kinds.SEQ2SEQ, kinds.SPEECH_SEQ2SEQ):
        feeds = _encoder_feeds(arch, profile)
    if "token_type_ids" in names and "token_type_ids" not in feeds:
        feeds["token_type_ids"] = np.zeros_like(feeds["attention_mask"])
    return _select(feeds, names, file)


def _encoder_feeds(arch: Architecture, profile: Profile) -> Feeds:
    if arch.kind == kinds.SPEECH_SEQ2SEQ:
        return {"input_features": speech_features(arch, profile)}
    return text_batch(arch, _rng(profile, 0), profile.batch, profile.sequence)


def _select(feeds: Feeds, names: list[str], file: str) -> Feeds:
    missing = [name for name in names if name not in feeds]
    if missing:
        raise ValueError(f"{file}: no input rule for {', '.join(missing)}")
    return {name: feeds[name] for name in names}


def _causal_step(
    arch: Architecture, file: str, graph: list[GraphInput], run: Runner, profile: Profile
) -> Feeds:
    """A decode step after ``profile.past`` real cached positions (the cache from a prefix run)."""
    names = [value.name for value in graph]
    prefix = torch_example_feeds(arch, profile, length=profile.past)
    prefix_feeds = {**prefix, **empty_past(graph, profile.batch)}
    past = presents_as_past(run(Path(file), _select(prefix_feeds, names, file)))
    step = torch_example_feeds(arch, profile, past=profile.past)
    return _select({**step, **past}, names, file)


def _seq2seq_decoder(
    arch: Architecture,
    variant: str,
    file: str,
    graphs: Mapping[str, list[GraphInput]],
    by_variant: Mapping[str, str],
    run: Runner,
    profile: Profile,
    use_cache: bool,
) -> Feeds:
    """Decoder feeds with the encoder's real output; with-past and cache-branch steps get a real cache.

    The merged decoder runs its no-cache branch on the first profile (empty past, as optimum's
    runtime feeds it) and its cache branch on the second.
    """
    batch = profile.batch
    encoder = _encoder_feeds(arch, profile)
    hidden = run(
        Path(by_variant["encoder"]), _select(encoder, _names(graphs, by_variant["encoder"]), "encoder")
    )
    context = {
        "encoder_hidden_states": hidden["last_hidden_state"],
        "encoder_attention_mask": encoder.get("attention_mask", np.ones((batch, 1), dtype=np.int64)),
    }
    names = _names(graphs, file)
    full = decoder_ids(arch, _rng(profile, 2), batch, profile.past + profile.new_tokens)
    if variant == "decoder" or (variant == "decoder-merged" and not use_cache):
        feeds = {**context, "input_ids": full[:, : profile.past + profile.new_tokens]}
        if variant == "decoder-merged":
            feeds.update(empty_past(graphs[file], batch), use_cache_branch=np.array([False]))
        return _select(feeds, names, file)
    # A step after profile.past decoder positions: the cache from the plain decoder (or the
    # merged one's no-cache branch) run on the prefix.
    source = by_variant.get("decoder", file)
    prefix = {**context, "input_ids": full[:, : profile.past]}
    if source == file:
        prefix.update(empty_past(graphs[file], batch), use_cache_branch=np.array([False]))
    past = presents_as_past(run(Path(source), _select(prefix, _names(graphs, source), source)))
    feeds = {**context, **past, "input_ids": full[:, profile.past :], "use_cache_branch": np.array([True])}
    return _select(feeds, names, file)


def _names(graphs: Mapping[str, list[GraphInput]], file: str) -> list[str]:
    return [value.name for value in graphs[file]]
