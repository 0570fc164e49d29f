"""Targets by name, the live onnxruntime registry vs the shipped CPU table, TensorRT, and the CLI."""

from __future__ import annotations

import json

import onnx_ir as ir
import pytest
from click.testing import CliRunner

from mpcompile import errors
from mpcompile.commands.targets import targets_command
from mpcompile.targets import (
    AnyTarget,
    KernelTableTarget,
    TensorRTTarget,
    UnknownTargetError,
    compare_with_live,
    get_target,
)
from mpcompile.targets import live as live_registry
from mpcompile.targets.kernel_table import shipped_table
from mpcompile.targets.registry import target_names

FP16, BF16, FP32 = ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.FLOAT
CPU = "CPUExecutionProvider"


def _require_live_cpu():
    if live_registry.live_table(CPU) is None:
        reason = "the installed onnxruntime (if any) exposes no CPU kernel registry (get_all_opkernel_def)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)


def test_get_target_names():
    assert target_names() == ("cuda", "tensorrt", "cpu", "dml", "any")
    assert isinstance(get_target("any"), AnyTarget)
    assert isinstance(get_target("CUDA"), KernelTableTarget)
    assert isinstance(get_target("tensorrt"), TensorRTTarget)
    for name, provider in [("cpu", CPU), ("cuda", "CUDAExecutionProvider"), ("dml", "DmlExecutionProvider")]:
        assert get_target(name, live=False).provider == provider
    assert get_target("tensorrt").provider == "TensorrtExecutionProvider"
    with pytest.raises(UnknownTargetError) as info:
        get_target("tpu")
    assert info.value.exit_code == errors.ExitCode.USAGE


def test_any_target_is_unconstrained():
    assert get_target("any").supports("com.example", "Whatever", 1, BF16)
    assert get_target("any").explain("com.example", "Whatever", 1, BF16).supported


def test_live_cpu_registry_vs_shipped_table():
    _require_live_cpu()
    differences = compare_with_live(CPU)
    print(f"onnxruntime {live_registry.live_runtime_version()} CPU registry vs shipped OperatorKernels.md:")
    for difference in differences:
        print(" ", json.dumps(difference.to_dict(), sort_keys=True))
    live = live_registry.live_table(CPU)
    shipped = shipped_table(CPU)
    live_rows = {(d, op, k.label) for (d, op), entry in live.items() for k in entry.kernels}
    shipped_rows = {(d, op, k.label) for (d, op), entry in shipped.items() for k in entry.kernels}
    for difference in differences:
        row = (difference.domain, difference.op_type, difference.version_range)
        assert difference.provider == CPU
        assert difference.kind in {"only-shipped", "only-live", "types"}
        if difference.kind == "only-shipped":
            assert row in shipped_rows and row not in live_rows
        elif difference.kind == "only-live":
            assert row in live_rows and row not in shipped_rows
        else:
            assert row in live_rows and row in shipped_rows
            assert difference.only_shipped or difference.only_live
    # every row not reported agrees exactly
    reported = {(d.domain, d.op_type, d.version_range) for d in differences}
    assert (live_rows ^ shipped_rows) <= reported


def test_converter_follows_the_live_registry_where_it_differs():
    """For each type difference on float16/bfloat16, the live target answers as the live table does."""
    _require_live_cpu()
    live_target = get_target("cpu", live=True)
    shipped_target = get_target("cpu", live=False)
    assert live_target.is_live and not shipped_target.is_live
    checked = 0
    for difference in compare_with_live(CPU):
        if difference.kind != "types" or difference.domain != "ai.onnx":
            continue
        for dtype, name in ((FP16, "tensor(float16)"), (BF16, "tensor(bfloat16)")):
            opset = int(difference.version_range.strip("[+").split(",")[0])
            live_answer = live_target.explain("", difference.op_type, opset, dtype)
            shipped_answer = shipped_target.explain("", difference.op_type, opset, dtype)
            if live_answer.kernel is None or live_answer.kernel.label != difference.version_range:
                continue  # the opset maps to another schema version; not this row
            parameter = live_target.table.data_type_parameter("", difference.op_type, live_answer.kernel)
            if name in difference.only_live.get(parameter, []):
                assert live_answer.supported and not shipped_answer.supported, live_answer.detail
                checked += 1
            if name in difference.only_shipped.get(parameter, []):
                assert shipped_answer.supported and not live_answer.supported, live_answer.detail
                checked += 1
    print(f"{checked} float16/bfloat16 disagreements checked; the live answer wins in each")
    assert checked > 0


def test_live_registry_for_a_provider_the_build_lacks():
    _require_live_cpu()
    if "CUDAExecutionProvider" in live_registry.live_providers():
        pytest.skip("this onnxruntime build has CUDA kernels")
    with pytest.raises(errors.ExecutionProviderError):
        compare_with_live("CUDAExecutionProvider")
    # without live CUDA kernels the cuda target answers from the shipped table
    assert not get_target("cuda", live=True).is_live


@pytest.mark.parametrize(
    ("domain", "op_type", "opset", "dtype", "expected"),
    [
        ("", "MatMul", 17, FP16, True),  # in the TensorRT matrix with FP16
        ("", "LayerNormalization", 17, BF16, True),
        ("", "STFT", 17, FP16, False),  # TensorRT: FP32 only; CUDA has no STFT kernel
        ("", "Einsum", 17, BF16, True),
        ("", "MatMul", 25, FP16, True),  # opset above TensorRT's 24: CUDA fallback has MatMul fp16
        ("com.microsoft", "SkipLayerNormalization", 1, FP16, True),  # contrib: CUDA fallback
        ("", "Unique", 17, FP16, False),  # neither TensorRT nor CUDA
    ],
)
def test_tensorrt_rule(domain, op_type, opset, dtype, expected):
    target = get_target("tensorrt", live=False)
    print(target.explain(domain, op_type, opset, dtype).detail)
    assert target.supports(domain, op_type, opset, dtype) is expected


def test_tensorrt_without_fallback_is_only_the_parser_matrix():
    target = TensorRTTarget(fallback=None)
    assert target.supports("", "MatMul", 17, FP16)
    assert not target.supports("", "MatMul", 25, FP16)
    assert not target.supports("com.microsoft", "SkipLayerNormalization", 1, FP16)


def test_targets_cli_json():
    result = CliRunner().invoke(targets_command, ["--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert [row["name"] for row in summary["targets"]] == list(target_names())
    assert summary["shipped"]["ort_version"] == "1.30.0-dev"


def test_targets_cli_compare_live():
    _require_live_cpu()
    result = CliRunner().invoke(targets_command, ["--compare-live", "--json"])
    assert result.exit_code == 0, result.output
    differences = json.loads(result.output)["differences"]
    assert list(differences) == live_registry.live_providers()
    assert len(differences[CPU]) == len(compare_with_live(CPU))
    table = CliRunner().invoke(targets_command, ["--compare-live"])
    assert table.exit_code == 0 and "installed onnxruntime" in table.output
