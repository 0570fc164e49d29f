"""``convert --optimize`` fuses only what the target runs in the conversion's precision.

ORT's optimiser runs on the CPU provider here (no GPU build), where ``ConvActivationFusion``
turns Conv + activation into ``com.microsoft::FusedConv``, which CUDA registers for float only:
CNNs optimised for ``cuda`` came out with every Conv FP32 (and, since ORT's symbolic inference
has no rule for FusedConv, every node after it untyped). Each test compares the optimised
conversion with a plain conversion of the same input: heavy FLOPs (MatMul/Gemm/Conv/attention)
in FP16 at least as many, no untyped value, no fused op without an FP16 kernel on the target.
Numbers: every output runs on ORT's CPU EP and matches the FP32 model under the FP16-faithful
judge (each FP16 node output rounded as a GPU stores it) within rtol = atol = 2e-2 on outputs of
magnitude ~1 (measured errors are printed).
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest

import models
import mpcompile
from models import cnn_blocks, resnet, vit
from mpcompile.analysis.flop_share import HeavyFlops, heavy_flops, more_fp32_note
from mpcompile.evaluate import faithful
from mpcompile.targets import get_target
from tests.helpers import assert_close

ort = pytest.importorskip("onnxruntime", reason="--optimize runs onnxruntime")

from mpcompile.targets.optimize import checks  # noqa: E402  (needs onnxruntime)

TOLERANCE = 2e-2
_BUILDERS = {"resnet": resnet.build, "cnn_blocks": cnn_blocks.build, "vit": vit.build}


@pytest.fixture(scope="module")
def built():
    return {name: build() for name, build in _BUILDERS.items()}


def _convert(model: onnx.ModelProto, **options) -> mpcompile.ConvertResult:
    return mpcompile.convert(model, **options)


def _fused_ops(model: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in model.graph.node if node.domain == "com.microsoft"}


def _matches_fp32(original: onnx.ModelProto, converted: onnx.ModelProto) -> None:
    feeds = models.make_inputs(original)
    want = faithful.run_reference(original, feeds)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(converted.SerializeToString(), options, providers=["CPUExecutionProvider"])
    plain_run = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    got = faithful.run(converted, feeds)
    names = [output.name for output in original.graph.output]
    assert_close([want[n] for n in names], [plain_run[n] for n in names], rtol=TOLERANCE, atol=TOLERANCE)
    assert_close([want[n] for n in names], [got[n] for n in names], rtol=TOLERANCE, atol=TOLERANCE)


def _shares(result: mpcompile.ConvertResult) -> HeavyFlops:
    return heavy_flops(ir.from_proto(result.model))


@pytest.mark.parametrize("target", ["cuda", "tensorrt"])
@pytest.mark.parametrize("level", ["extended", "transformer"])
@pytest.mark.parametrize("name", ["resnet", "cnn_blocks", "vit"])
def test_optimised_for_a_gpu_keeps_plain_converts_fp16_flops(built, name, level, target):
    original = built[name]
    plain = _shares(_convert(original, target=target))
    result = _convert(original, target=target, optimize=level)
    optimised = _shares(result)
    print(
        f"{name} {level} {target}: fused {sorted(_fused_ops(result.model))}; heavy FP32 share "
        f"{optimised.fp32_share:.3f} (plain {plain.fp32_share:.3f}); notes {result.notes}"
    )
    assert result.stats.untyped_values == 0
    assert optimised.fp32_unknown == 0
    assert optimised.low > 0
    assert optimised.fp32_share <= plain.fp32_share
    kernels = get_target(target)
    for node in result.model.graph.node:
        if node.domain == "com.microsoft":
            assert kernels.supports(node.domain, node.op_type, 1, ir.DataType.FLOAT16), node.op_type
    assert "FusedConv" not in _fused_ops(result.model)
    assert not any("heavy FLOPs" in note for note in result.notes)
    _matches_fp32(original, result.model)


def test_cnn_for_cuda_says_which_fusion_it_left_out(built):
    result = _convert(built["cnn_blocks"], target="cuda", optimize="extended")
    assert "disabled for CUDAExecutionProvider: ConvActivationFusion" in result.notes[0]
    assert "QuickGelu" in _fused_ops(result.model)  # SiLU: CUDA has an FP16 QuickGelu


@pytest.mark.parametrize("name", ["resnet", "cnn_blocks"])
def test_cpu_keeps_fused_conv_typed(built, name):
    """CPU has no FP16 Conv, so FusedConv costs no FP16 there: it stays, and so do the types after it."""
    original = built[name]
    result = _convert(original, target="cpu", optimize="extended")
    assert "FusedConv" in _fused_ops(result.model)
    assert result.stats.untyped_values == 0
    assert not any("heavy FLOPs" in note for note in result.notes)
    assert "symbolic shape inference incomplete" not in result.notes[0]
    _matches_fp32(original, result.model)


@pytest.mark.parametrize("level", ["extended", "transformer"])
def test_vit_pre_norm_is_typed_after_the_fusions(built, level):
    """ORT's symbolic inference stops at FusedMatMul; the nodes after it are typed node by node."""
    result = _convert(built["vit"], target="cuda", optimize=level)
    assert {"SkipLayerNormalization", "BiasGelu"} <= _fused_ops(result.model)
    assert result.stats.untyped_values == 0
    assert result.stats.nodes_by_precision.get("fp32", 0) == 0
    assert "symbolic shape inference incomplete" not in result.notes[0]


def test_fused_op_refusal_follows_the_kernel_tables():
    key = ("com.microsoft", "FusedConv")
    fp16, bf16 = ir.DataType.FLOAT16, ir.DataType.BFLOAT16
    assert "float16 kernel" in checks.fused_op_refusal(get_target("cuda"), key, 1, 17, fp16)
    assert "float16 kernel" in checks.fused_op_refusal(get_target("tensorrt"), key, 1, 17, fp16)
    assert checks.fused_op_refusal(get_target("cpu"), key, 1, 17, fp16) == ""
    assert checks.fused_op_refusal(get_target("any"), key, 1, 17, fp16) == ""
    cuda = get_target("cuda")
    expected = "" if not cuda.supports("", "Conv", 17, bf16) else "bfloat16 kernel"
    assert expected in checks.fused_op_refusal(cuda, key, 1, 17, bf16)
    assert "no CUDAExecutionProvider kernel" in checks.fused_op_refusal(
        cuda, ("com.microsoft", "FusedGemm"), 1, 17, fp16
    )
    assert checks.fused_op_refusal(cuda, ("com.microsoft", "FusedMatMul"), 1, 17, fp16) == ""


def test_a_mode_that_loses_fp16_flops_says_so(built, monkeypatch):
    """With the refusal switched off (the old behaviour) FusedConv stays FP32 for cuda: noted."""
    monkeypatch.setattr(checks, "fused_op_refusal", lambda *args: "")
    result = _convert(built["resnet"], target="cuda", optimize="extended")
    assert "FusedConv" in _fused_ops(result.model)
    notes = [note for note in result.notes if "heavy FLOPs" in note]
    assert len(notes) == 1, result.notes
    assert "FP32 heavy node(s) whose FLOPs are unknown" in notes[0]


def test_more_fp32_note_compares_shares():
    plain = HeavyFlops(low=990, fp32=10, fp32_unknown=0)
    assert more_fp32_note("--optimize extended", HeavyFlops(990, 10, 0), plain) is None
    assert more_fp32_note("--optimize extended", HeavyFlops(993, 12, 0), plain) is None  # within 0.5 %
    note = more_fp32_note("--optimize extended", HeavyFlops(500, 500, 0), plain)
    assert note is not None and "50.0% of them vs 1.0%" in note
    assert more_fp32_note("--optimize extended", HeavyFlops(0, 1000, 3), HeavyFlops(0, 1000, 0)) is None
