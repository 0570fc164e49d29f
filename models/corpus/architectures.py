"""The corpus architectures: small seeded configurations of real model families.

Pure data (no torch): ``ARCHITECTURES`` maps a short name to an :class:`Architecture` that says
which ``transformers`` (or ``torchvision``) class to build, with which tiny configuration, what
kind of inputs it takes and which optimum task exports it. ``instantiate`` (in the build process
only) imports the library and builds the model with seeded weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Input kinds, which decide how inputs.py makes feeds and exporters.py wraps the model.
TEXT_ENCODER = "text-encoder"
CAUSAL_LM = "causal-lm"
SEQ2SEQ = "seq2seq"
SPEECH_SEQ2SEQ = "speech-seq2seq"
VISION = "vision"
TEXT_VISION = "text-vision"
AUDIO = "audio"
DETECTION = "detection"

_TEXT = {"vocab_size": 512, "max_position_embeddings": 128}
_LLM = {
    **_TEXT,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
}
_BERT = {
    **_TEXT,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}
_FIXED_IMAGE = (
    "fixed 32x32 images (learned position embeddings; optimum's graph still declares height and width "
    "dynamic): the samples vary the batch"
)


@dataclass(frozen=True)
class Architecture:
    """One model family at a tiny size."""

    name: str
    library: str  # "transformers" | "torchvision" | "timm" | "torch" (models/corpus/spectrogram.py) | "ultralytics"
    model_class: (
        str  # "LlamaForCausalLM", a torchvision/timm builder, "module.builder" in models/corpus, a .yaml
    )
    config_class: str  # e.g. "LlamaConfig"; "" for torchvision
    config: Mapping[str, Any]
    kind: str
    optimum_task: str | None = None  # None: optimum does not export it
    families: tuple[str, ...] = ()
    image_size: int = 0  # the configured image size (0: no images)
    dynamic_image: bool = False  # height and width may vary at run time
    image_sizes: tuple[tuple[int, int], ...] = ()  # (height, width) per input profile, when not the default
    audio_frames: int = 0  # fixed mel frames (Whisper), 0 when the length may vary
    attn_implementation: str | None = None  # forced attention implementation, if any
    seed: int = 0
    notes: str = ""
    # input_name / output_name(s): a positional (non-transformers) model's graph input and output names;
    # input_axes / output_axes: their dynamic axes where not the usual ones; feeds="vad": silero-like feeds;
    # pixels="unit": images in [0, 1], not ImageNet-normalised; audio="int16": waveforms at int16 scale;
    # attention_scale: timm LiteMLA qkv weights multiplied by it (trained-like linear-attention range).
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        """Token vocabulary (the text tower's for CLIP)."""
        if "text_config" in self.config:
            return int(self.config["text_config"]["vocab_size"])
        return int(self.config.get("vocab_size", 0))


def _llm(name: str, model_class: str, config_class: str, **config: Any) -> Architecture:
    families = ("llm", "decoder-only")
    merged = {**_LLM, **config}
    if name != "gpt2":
        families += ("rmsnorm", "rope")
        if merged["num_key_value_heads"] < merged["num_attention_heads"]:
            families += ("gqa",)  # grouped-query attention: fewer key/value heads than query heads
    return Architecture(
        name=name,
        library="transformers",
        model_class=model_class,
        config_class=config_class,
        config=merged,
        kind=CAUSAL_LM,
        optimum_task="text-generation",
        families=families,
    )


_ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        "bert",
        "transformers",
        "BertModel",
        "BertConfig",
        {**_BERT, "type_vocab_size": 2},
        TEXT_ENCODER,
        "feature-extraction",
        ("encoder", "layernorm"),
    ),
    Architecture(
        "distilbert",
        "transformers",
        "DistilBertModel",
        "DistilBertConfig",
        {**_TEXT, "dim": 64, "hidden_dim": 128, "n_layers": 2, "n_heads": 4},
        TEXT_ENCODER,
        "feature-extraction",
        ("encoder", "layernorm"),
    ),
    Architecture(
        "roberta",
        "transformers",
        "RobertaModel",
        "RobertaConfig",
        {**_BERT, "max_position_embeddings": 130, "type_vocab_size": 1, "pad_token_id": 1},
        TEXT_ENCODER,
        "feature-extraction",
        ("encoder", "layernorm"),
    ),
    Architecture(
        "deberta-v2",
        "transformers",
        "DebertaV2Model",
        "DebertaV2Config",
        {
            **_BERT,
            "type_vocab_size": 2,
            "relative_attention": True,
            "position_buckets": 32,
            "max_relative_positions": 64,
            "pos_att_type": ["p2c", "c2p"],
            "position_biased_input": False,
        },
        TEXT_ENCODER,
        "feature-extraction",
        ("encoder", "layernorm", "relative-position"),
    ),
    _llm(
        "gpt2",
        "GPT2LMHeadModel",
        "GPT2Config",
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=128,
        n_inner=128,
        bos_token_id=1,
        eos_token_id=2,
    ),
    _llm("llama", "LlamaForCausalLM", "LlamaConfig"),
    _llm("llama-8layer", "LlamaForCausalLM", "LlamaConfig", num_hidden_layers=8),
    _llm("qwen2", "Qwen2ForCausalLM", "Qwen2Config"),
    _llm("mistral", "MistralForCausalLM", "MistralConfig", sliding_window=None),
    _llm("phi3", "Phi3ForCausalLM", "Phi3Config", num_key_value_heads=4),
    _llm("gemma", "GemmaForCausalLM", "GemmaConfig", head_dim=16, num_key_value_heads=1),
    _llm(
        "gemma2",
        "Gemma2ForCausalLM",
        "Gemma2Config",
        head_dim=16,
        sliding_window=16,
        query_pre_attn_scalar=16,
    ),
    _llm(
        "gemma3",
        "Gemma3ForCausalLM",
        "Gemma3TextConfig",
        head_dim=16,
        sliding_window=16,
        query_pre_attn_scalar=16,
        rope_scaling=None,
    ),
    Architecture(
        "t5",
        "transformers",
        "T5ForConditionalGeneration",
        "T5Config",
        {
            "vocab_size": 512,
            "d_model": 64,
            "d_kv": 16,
            "d_ff": 128,
            "num_layers": 2,
            "num_decoder_layers": 2,
            "num_heads": 4,
            "relative_attention_num_buckets": 16,
            "decoder_start_token_id": 0,
            "pad_token_id": 0,
            "eos_token_id": 1,
        },
        SEQ2SEQ,
        "text2text-generation",
        ("seq2seq", "rmsnorm", "relative-position"),
    ),
    Architecture(
        "bart",
        "transformers",
        "BartForConditionalGeneration",
        "BartConfig",
        {
            **_TEXT,
            "d_model": 64,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 128,
            "decoder_ffn_dim": 128,
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "decoder_start_token_id": 2,
            "forced_eos_token_id": 2,
        },
        SEQ2SEQ,
        "text2text-generation",
        ("seq2seq", "layernorm"),
    ),
    Architecture(
        "whisper",
        "transformers",
        "WhisperForConditionalGeneration",
        "WhisperConfig",
        {
            "vocab_size": 512,
            "num_mel_bins": 80,
            "d_model": 64,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 128,
            "decoder_ffn_dim": 128,
            "max_source_positions": 50,
            "max_target_positions": 64,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "decoder_start_token_id": 1,
            "suppress_tokens": [],
            "begin_suppress_tokens": [],
        },
        SPEECH_SEQ2SEQ,
        "automatic-speech-recognition",
        ("seq2seq", "audio", "layernorm"),
        audio_frames=100,
        notes="the encoder takes exactly 2 x max_source_positions = 100 mel frames: the samples vary the batch",
    ),
    Architecture(
        "vit",
        "transformers",
        "ViTForImageClassification",
        "ViTConfig",
        {
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "num_labels": 10,
        },
        VISION,
        "image-classification",
        ("vision", "transformer", "layernorm"),
        image_size=32,
        notes=_FIXED_IMAGE,
    ),
    Architecture(
        "clip",
        "transformers",
        "CLIPModel",
        "CLIPConfig",
        {
            "text_config": {
                "vocab_size": 512,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "max_position_embeddings": 32,
                "pad_token_id": 1,
                "bos_token_id": 0,
                "eos_token_id": 2,
            },
            "vision_config": {
                "image_size": 32,
                "patch_size": 8,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
            },
            "projection_dim": 32,
        },
        TEXT_VISION,
        "zero-shot-image-classification",
        ("vision", "text", "transformer", "layernorm"),
        image_size=32,
        notes=_FIXED_IMAGE,
    ),
    Architecture(
        "convnext",
        "transformers",
        "ConvNextForImageClassification",
        "ConvNextConfig",
        {"hidden_sizes": [16, 32, 48, 64], "depths": [1, 1, 1, 1], "num_labels": 10, "image_size": 64},
        VISION,
        "image-classification",
        ("vision", "cnn", "layernorm"),
        image_size=64,
        dynamic_image=True,
    ),
    Architecture(
        "swin",
        "transformers",
        "SwinForImageClassification",
        "SwinConfig",
        {
            "image_size": 64,
            "patch_size": 4,
            "embed_dim": 16,
            "depths": [1, 1],
            "num_heads": [2, 4],
            "window_size": 4,
            "num_labels": 10,
        },
        VISION,
        "image-classification",
        ("vision", "transformer", "layernorm"),
        image_size=64,
        dynamic_image=True,
        image_sizes=((64, 64), (96, 64)),
        notes="height and width must be multiples of 32 (patch 4 x window 4 x 2 stages)",
    ),
    Architecture(
        "segformer",
        "transformers",
        "SegformerForSemanticSegmentation",
        "SegformerConfig",
        {
            "num_encoder_blocks": 4,
            "depths": [1, 1, 1, 1],
            "sr_ratios": [8, 4, 2, 1],
            "hidden_sizes": [16, 32, 48, 64],
            "num_attention_heads": [1, 2, 2, 4],
            "decoder_hidden_size": 32,
            "num_labels": 5,
            "image_size": 64,
        },
        VISION,
        "semantic-segmentation",
        ("vision", "transformer", "layernorm", "segmentation"),
        image_size=64,
        dynamic_image=True,
    ),
    Architecture(
        "wav2vec2",
        "transformers",
        "Wav2Vec2ForCTC",
        "Wav2Vec2Config",
        {
            "vocab_size": 32,
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 128,
            "conv_dim": [32, 32, 32],
            "conv_stride": [5, 2, 2],
            "conv_kernel": [10, 3, 3],
            "num_conv_pos_embeddings": 16,
            "num_conv_pos_embedding_groups": 4,
            "pad_token_id": 0,
        },
        AUDIO,
        "automatic-speech-recognition",
        ("audio", "transformer", "layernorm", "groupnorm"),
    ),
    Architecture(
        "detr",
        "transformers",
        "DetrForObjectDetection",
        "DetrConfig",
        {
            "use_timm_backbone": False,
            "use_pretrained_backbone": False,
            "backbone": None,
            "backbone_config": {
                "model_type": "resnet",
                "embedding_size": 16,
                "hidden_sizes": [16, 32, 48, 64],
                "depths": [1, 1, 1, 1],
                "layer_type": "basic",
                "out_features": ["stage4"],
            },
            "d_model": 64,
            "encoder_layers": 1,
            "decoder_layers": 1,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 128,
            "decoder_ffn_dim": 128,
            "num_queries": 10,
            "num_labels": 5,
        },
        DETECTION,
        "object-detection",
        ("vision", "detection", "transformer", "cnn", "layernorm"),
        image_size=64,
        dynamic_image=True,
    ),
    Architecture(
        "resnet18",
        "torchvision",
        "resnet18",
        "",
        {"num_classes": 10},
        VISION,
        families=("vision", "cnn", "torchvision", "batchnorm"),
        image_size=64,
        dynamic_image=True,
    ),
    Architecture(
        "mobilenet_v2",
        "torchvision",
        "mobilenet_v2",
        "",
        {"num_classes": 10, "width_mult": 0.5},
        VISION,
        families=("vision", "cnn", "torchvision", "batchnorm"),
        image_size=64,
        dynamic_image=True,
    ),
    Architecture(
        "efficientnet_b0",
        "torchvision",
        "efficientnet_b0",
        "",
        {"num_classes": 10},
        VISION,
        families=("vision", "cnn", "torchvision", "batchnorm"),
        image_size=64,
        dynamic_image=True,
    ),
    Architecture(
        "efficientvit_b0",
        "timm",
        "efficientvit_b0",
        "",
        {"num_classes": 10},
        VISION,
        families=("vision", "cnn", "timm", "batchnorm", "linear-attention"),
        image_size=224,
        dynamic_image=True,
        image_sizes=((224, 224), (160, 192)),
        notes="timm's MIT EfficientViT-B0 from its config (pretrained=False), seeded, its LiteMLA qkv weights "
        "x24: k^T v stays in FP16 range (~4e4) while q @ (k^T v) overflows it (~3e5), as with trained weights",
        extra={"attention_scale": 24.0},
    ),
    Architecture(
        "melspectrogram",
        "torch",
        "spectrogram.MelSpectrogram",
        "",
        {"sample_rate": 16000, "n_fft": 512, "win_length": 400, "hop_length": 160, "n_mels": 32},
        AUDIO,
        families=("audio", "spectrogram", "conv", "pow", "log"),
        notes="openwakeword-like mel spectrogram (Conv1d STFT, Pow, mel MatMul, clamp, log) fed int16-scale "
        "audio: the power spectrum reaches ~1e13",
        extra={"output_name": "mel", "audio": "int16"},
    ),
    Architecture(
        "silero_like_vad",
        "torch",
        "vad.scripted",
        "",
        {"hidden": 32},
        AUDIO,
        families=("audio", "vad", "control-flow", "lstm", "scalar-input"),
        notes="silero-vad-like: waveform, LSTM state and a one-element int64 sr whose If(Equal(sr, 16000)) / "
        "If(Equal(sr, 8000)) picks the path; no path for other rates",
        extra={
            "feeds": "vad",
            "output_names": ("output", "stateN"),
            "input_axes": {"input": {0: "batch", 1: "samples"}, "state": {1: "batch"}, "sr": {}},
            "output_axes": {"output": {0: "batch"}, "stateN": {1: "batch"}},
        },
    ),
    Architecture(
        "yolov8n",
        "ultralytics",
        "yolov8n.yaml",
        "",
        {},
        VISION,
        families=("vision", "detection", "cnn", "ultralytics", "batchnorm"),
        image_size=256,
        dynamic_image=True,
        image_sizes=((256, 256), (192, 256)),
        notes="ultralytics YOLOv8n from its yaml (no weights), exported by ultralytics' own exporter "
        "(dynamic=True, simplify=False)",
        extra={"input_name": "images", "output_name": "output0", "pixels": "unit"},
    ),
)

ARCHITECTURES: dict[str, Architecture] = {arch.name: arch for arch in _ARCHITECTURES}


def instantiate(arch: Architecture) -> Any:
    """Build ``arch`` with seeded weights, in eval mode (imports torch and the model library)."""
    import torch

    torch.manual_seed(arch.seed)
    if arch.library == "torchvision":
        import torchvision

        model = getattr(torchvision.models, arch.model_class)(weights=None, **arch.config)
        _randomise_batchnorm_statistics(model, arch.seed)
        return model.eval()
    if arch.library == "timm":
        import timm

        model = timm.create_model(arch.model_class, pretrained=False, **arch.config)
        _randomise_batchnorm_statistics(model, arch.seed)
        _scale_linear_attention(model, arch.extra.get("attention_scale", 1.0))
        return model.eval()
    if arch.library == "torch":
        import importlib

        module, _, builder = arch.model_class.rpartition(".")
        return getattr(importlib.import_module(f"models.corpus.{module}"), builder)(**arch.config).eval()
    if arch.library == "ultralytics":
        return _ultralytics_model(arch)
    return instantiate_from_config(arch, make_config(arch)).eval()


def _scale_linear_attention(model: Any, scale: float) -> None:
    """Multiply the qkv projection of every timm ``LiteMLA`` block by ``scale``: seeded weights give
    activations far smaller than trained ones, and the linear attention's range grows ~ scale**2."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if type(module).__name__ == "LiteMLA":
                module.qkv.conv.weight.mul_(scale)


def _ultralytics_model(arch: Architecture) -> Any:
    """An ultralytics ``YOLO`` built from its yaml (no weight download), BatchNorm statistics seeded."""
    import os
    import tempfile

    # ultralytics reads these at import: no network checks, settings outside the user's home.
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault(
        "YOLO_CONFIG_DIR", os.path.join(tempfile.gettempdir(), "mpcompile-corpus-ultralytics")
    )
    from ultralytics import YOLO

    model = YOLO(arch.model_class)
    _randomise_batchnorm_statistics(model.model, arch.seed)
    return model


def make_config(arch: Architecture) -> Any:
    """The ``transformers`` configuration object of ``arch``."""
    import transformers

    config_class = getattr(transformers, arch.config_class)
    options = dict(arch.config)
    if arch.config_class == "DetrConfig":
        backbone = dict(options.pop("backbone_config"))
        backbone_class = transformers.CONFIG_MAPPING[backbone.pop("model_type")]
        options["backbone_config"] = backbone_class(**backbone)
    config = config_class(**options)
    if arch.attn_implementation:
        config._attn_implementation = arch.attn_implementation
    return config


def instantiate_from_config(arch: Architecture, config: Any) -> Any:
    """The ``transformers`` model of ``arch`` built from ``config``, seeded."""
    import torch
    import transformers

    torch.manual_seed(arch.seed)
    return getattr(transformers, arch.model_class)(config)


def _randomise_batchnorm_statistics(model: Any, seed: int) -> None:
    """Give BatchNorm layers trained-looking running statistics (fresh ones are 0 and 1)."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
