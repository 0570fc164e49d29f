"""Tiny torch models for training on what torch exports today, with their tasks and the export
recipe of docs/training.md.

``CASES``: three self-contained models (a BERT-like classifier, a ResNet-like CNN, a GPT-2-like LM
head); tools/fingerprints.py --training fingerprints the artifacts mpcompile makes from them.
``ACCEPTANCE_CASES``: what tests/test_training_exports.py trains: Hugging Face's
``BertForSequenceClassification``, ``ResNetForImageClassification`` with ResNet-18's topology and
``GPT2LMHeadModel``, at tiny configurations (transformers is in the training environment;
torchvision's wheels need a CUDA build of torch, so the CPU training environment cannot import
its ResNet-18). Needs torch; the dynamo exporter also needs onnxscript.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

BATCH = 16
SEQUENCE = 8
VOCAB = 32
DATASET = 256
IMAGE = 32  # the HF ResNet-18's input side


class TinyBertClassifier(nn.Module):
    """Token + position embeddings, LayerNorm, one transformer encoder layer, classifier on token 0."""

    def __init__(self, classes: int = 3, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.position = nn.Parameter(0.02 * torch.randn(SEQUENCE, width))
        self.norm = nn.LayerNorm(width)
        self.encoder = nn.TransformerEncoderLayer(
            width, 2, dim_feedforward=64, dropout=0.0, activation="gelu", batch_first=True
        )
        self.head = nn.Linear(width, classes)

    def forward(self, input_ids):
        hidden = self.encoder(self.norm(self.embed(input_ids) + self.position))
        return self.head(hidden[:, 0])


class TinyResNet(nn.Module):
    """A ResNet-18-like stem (conv, batch norm, ReLU, max pool), one residual block, pooled classifier."""

    def __init__(self, classes: int = 3, channels: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.block = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, pixel_values):
        hidden = self.stem(pixel_values)
        hidden = torch.relu(hidden + self.block(hidden))
        return self.fc(torch.flatten(self.pool(hidden), 1))


class TinyGpt2(nn.Module):
    """One GPT-2 block (pre-LayerNorm causal self-attention and GELU MLP), final LayerNorm, LM head."""

    def __init__(self, width: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, width)
        self.wpe = nn.Parameter(0.02 * torch.randn(SEQUENCE, width))
        self.ln_1, self.ln_2, self.ln_f = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.c_attn, self.c_proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.c_fc, self.mlp_proj = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.lm_head = nn.Linear(width, VOCAB, bias=False)
        self.heads = heads
        self.register_buffer("causal", torch.tril(torch.ones(SEQUENCE, SEQUENCE, dtype=torch.bool)))

    def forward(self, input_ids):
        batch, length = input_ids.shape
        hidden = self.wte(input_ids) + self.wpe
        query, key, value = self.c_attn(self.ln_1(hidden)).split(hidden.shape[-1], dim=-1)

        def split_heads(x):
            return x.view(batch, length, self.heads, -1).transpose(1, 2)

        query, key, value = split_heads(query), split_heads(key), split_heads(value)
        scores = (query @ key.transpose(-1, -2)) * (query.shape[-1] ** -0.5)
        scores = scores.masked_fill(~self.causal, torch.finfo(scores.dtype).min)
        attended = (torch.softmax(scores, -1) @ value).transpose(1, 2).reshape(batch, length, -1)
        hidden = hidden + self.c_proj(attended)
        hidden = hidden + self.mlp_proj(nn.functional.gelu(self.c_fc(self.ln_2(hidden))))
        return self.lm_head(self.ln_f(hidden))


def _randomize_norms(model: nn.Module) -> nn.Module:
    """LayerNorm/BatchNorm parameters away from 1/0: exporters merge identical initializers, which
    would tie the norms of a freshly initialized model together."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
                module.weight.add_(0.1 * torch.randn_like(module.weight))
                module.bias.add_(0.1 * torch.randn_like(module.bias))
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.add_(0.1 * torch.randn_like(module.running_mean))
    return model


def classification_tokens(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random token sequences; the class is the first token modulo 3."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (DATASET, SEQUENCE)).astype(np.int64)
    return ids, (ids[:, 0] % 3).astype(np.int64)


def bar_images(seed: int = 1, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """``size`` x ``size`` images with a horizontal, vertical or diagonal bar plus noise; the class
    is the direction."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, DATASET).astype(np.int64)
    images = (0.3 * rng.standard_normal((DATASET, 1, size, size))).astype(np.float32)
    for i, (label, position) in enumerate(zip(labels, rng.integers(1, size - 1, DATASET), strict=True)):
        if label == 0:
            images[i, 0, position, :] += 1.0
        elif label == 1:
            images[i, 0, :, position] += 1.0
        else:
            images[i, 0][np.eye(size, dtype=bool)] += 1.0
    return images, labels


def large_bar_images() -> tuple[np.ndarray, np.ndarray]:
    """``bar_images`` at ``IMAGE`` x ``IMAGE``, which ResNet-18's 32x downsampling takes to 1x1."""
    return bar_images(size=IMAGE)


def counting_sequences(seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Sequences counting up modulo VOCAB from a random start (step 1 or 2, the step drawn per
    sequence); the labels are the next tokens, [batch, sequence] as the LM head's scores minus the last dim."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, VOCAB, (DATASET, 1))
    step = rng.integers(1, 3, (DATASET, 1))
    positions = np.arange(SEQUENCE + 1)[None, :]
    tokens = ((start + step * positions) % VOCAB).astype(np.int64)
    return tokens[:, :-1], tokens[:, 1:]


def hf_bert_classifier(classes: int = 3) -> nn.Module:
    """transformers' ``BertForSequenceClassification``: one layer, width 32, dropout off."""
    import transformers

    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=SEQUENCE,
        type_vocab_size=1,
        num_labels=classes,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        return_dict=False,  # the logits are the first output
    )
    return transformers.BertForSequenceClassification(config)


class LMLogits(nn.Module):
    """A causal LM's logits from ``(input_ids, attention_mask)``, the mask passed by keyword."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def hf_gpt2_lm_head() -> nn.Module:
    """transformers' ``GPT2LMHeadModel``: one block, width 32, dropout and the KV cache off."""
    import transformers

    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=SEQUENCE,
        n_embd=32,
        n_layer=1,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=False,
    )
    return LMLogits(transformers.GPT2LMHeadModel(config))


class ImageLogits(nn.Module):
    """An image classifier's logits from ``pixel_values``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).logits


def hf_resnet18(classes: int = 3) -> nn.Module:
    """transformers' ``ResNetForImageClassification`` with ResNet-18's topology (basic blocks,
    depths 2-2-2-2, batch norm, stride-2 1x1-conv shortcuts) at widths 8-16-32-64, one input channel."""
    import transformers

    config = transformers.ResNetConfig(
        num_channels=1,
        embedding_size=8,
        hidden_sizes=[8, 16, 32, 64],
        depths=[2, 2, 2, 2],
        layer_type="basic",
        hidden_act="relu",
        num_labels=classes,
    )
    return ImageLogits(transformers.ResNetForImageClassification(config))


def masked_counting_sequences() -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """``counting_sequences`` with an all-ones attention mask: ((input_ids, attention_mask), labels)."""
    tokens, labels = counting_sequences()
    return (tokens, np.ones_like(tokens)), labels


@dataclasses.dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    input_name: str
    example_shape: tuple[int, ...]
    task: Callable[[], tuple[np.ndarray | tuple[np.ndarray, ...], np.ndarray]]
    attention_mask: bool = False  # a second input, ``attention_mask`` (int64 ones, example_shape)
    learning_rate: float = 1e-3  # Adam's, in tests/test_training_exports.py


CASES = {
    "bert": Case(TinyBertClassifier, "input_ids", (BATCH, SEQUENCE), classification_tokens),
    "resnet": Case(TinyResNet, "pixel_values", (BATCH, 1, 8, 8), bar_images),
    "gpt2": Case(TinyGpt2, "input_ids", (BATCH, SEQUENCE), counting_sequences),
}
ACCEPTANCE_CASES = {
    "hf-bert": Case(hf_bert_classifier, "input_ids", (BATCH, SEQUENCE), classification_tokens),
    # At lr 1e-3 the ResNet-18's trajectory is chaotic (FP32 against FP32 with FP16-rounded weights
    # differ by >5 % at step 100) and its FP16 gradients overflow mid-training: docs/training.md.
    "hf-resnet18": Case(
        hf_resnet18, "pixel_values", (BATCH, 1, IMAGE, IMAGE), large_bar_images, learning_rate=1e-4
    ),
    "hf-gpt2": Case(
        hf_gpt2_lm_head, "input_ids", (BATCH, SEQUENCE), masked_counting_sequences, attention_mask=True
    ),
}
EXPORTERS = ("dynamo", "torchscript")


def export(case: Case, exporter: str, path: pathlib.Path) -> None:
    """The export recipe of docs/training.md: the model in eval mode, example inputs of the
    training batch's shape, plain ``torch.onnx.export`` (dynamo by default) or ``dynamo=False``."""
    torch.manual_seed(0)
    model = _randomize_norms(case.build()).eval()
    if case.input_name == "input_ids":
        example = torch.randint(0, VOCAB, case.example_shape)
    else:
        example = torch.randn(case.example_shape)
    examples, names = (example,), [case.input_name]
    if case.attention_mask:
        examples, names = (example, torch.ones_like(example)), [case.input_name, "attention_mask"]
    options = {"dynamo": False} if exporter == "torchscript" else {}
    with _traceable_masks(exporter, model):
        torch.onnx.export(model, examples, path, input_names=names, output_names=["logits"], **options)


def _traceable_masks(exporter: str, model: nn.Module) -> contextlib.AbstractContextManager:
    """transformers builds attention masks with ``torch.vmap``, which the TorchScript tracer
    cannot trace: vmap-free masks for that exporter (docs/training.md)."""
    from_transformers = any(type(module).__module__.startswith("transformers") for module in model.modules())
    if exporter != "torchscript" or not from_transformers:
        return contextlib.nullcontext()
    from models.corpus.masks import vmap_free_masks

    return vmap_free_masks()
