"""The shipped kernel tables: reproduced by the generator, and spot checks against OperatorKernels.md."""

from __future__ import annotations

import importlib.resources
import pathlib

import onnx_ir as ir
import pytest

from mpcompile.targets import get_target, op_signatures
from mpcompile.targets.kernel_table import shipped_source, shipped_table
from tests.helpers import load_script

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
FP16, BF16, FP32 = ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.FLOAT


gen_kernel_tables = load_script("tools/gen_kernel_tables.py")


def _shipped_source_markdown() -> pathlib.Path:
    # CI checks the repository out beside ../shared; a git worktree finds it one folder further up.
    path = gen_kernel_tables.find_default_source(REPO_ROOT)
    if path is None:
        reason = f"{gen_kernel_tables.SOURCE_IN_SHARED} not found beside {REPO_ROOT} or above it"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    return path


def test_generator_reproduces_shipped_tables_byte_for_byte(tmp_path):
    source = _shipped_source_markdown()
    output = tmp_path / "kernels_ort.json"
    assert gen_kernel_tables.main([str(source), "-o", str(output)]) == 0
    shipped = importlib.resources.files("mpcompile").joinpath("data", "kernels_ort.json").read_bytes()
    assert output.read_bytes() == shipped


def test_shipped_tables_record_their_source():
    source = shipped_source()
    assert source["ort_version"] == "1.30.0-dev"
    assert source["sha256"] == "ea4bae813708ea7801a846f612d77ca9481dbf006fa4a05e4642a0aef4abcca1"
    assert source["upstream"].startswith("microsoft/onnxruntime")


@pytest.mark.parametrize(
    ("provider", "rows", "ops", "ops_with_fp16", "ops_with_bf16"),
    [  # the sizes ../shared/reference/README.md states for the markdown
        ("CPUExecutionProvider", 616, 296, 72, 42),
        ("CUDAExecutionProvider", 509, 236, 213, 114),
        ("DmlExecutionProvider", 423, 205, 179, 5),
    ],
)
def test_table_sizes_match_the_markdown(provider, rows, ops, ops_with_fp16, ops_with_bf16):
    table = shipped_table(provider)
    entries = [entry for _, entry in table.items()]

    def has(entry, type_name):
        return any(type_name in types for kernel in entry.kernels for types in kernel.constraints.values())

    assert sum(len(entry.kernels) for entry in entries) == rows
    assert len(entries) == ops
    assert sum(has(entry, "tensor(float16)") for entry in entries) == ops_with_fp16
    assert sum(has(entry, "tensor(bfloat16)") for entry in entries) == ops_with_bf16


def test_version_notation_is_parsed():
    assert gen_kernel_tables.parse_version_range("13") == (13, 13)
    assert gen_kernel_tables.parse_version_range("[6, 12]") == (6, 12)
    assert gen_kernel_tables.parse_version_range("14+") == (14, None)
    with pytest.raises(gen_kernel_tables.KernelDocError):
        gen_kernel_tables.parse_version_range("14-")
    abs_kernels = shipped_table("CPUExecutionProvider").op("", "Abs").kernels
    assert [kernel.label for kernel in abs_kernels] == ["13+", "[6, 12]"]


def test_generator_rejects_a_malformed_row(tmp_path):
    bad = tmp_path / "bad.md"
    bad.write_text(
        "## Operators implemented by CPUExecutionProvider\n\n"
        "|**Operator Domain:** *ai.onnx*||||\n"
        "|Abs|*in* X:**T**<br> *out* Y:**T**|thirteen|**T** = tensor(float)|\n"
    )
    assert gen_kernel_tables.main([str(bad), "-o", str(tmp_path / "out.json")]) == 1
    assert not (tmp_path / "out.json").exists()


# Spot checks against the shipped (markdown) tables, i.e. live=False.
@pytest.mark.parametrize(
    ("target", "domain", "op_type", "opset", "dtype", "expected"),
    [
        ("cpu", "", "Add", 14, FP16, False),  # CPU Add 14+ has no float16
        ("cpu", "", "Add", 14, FP32, True),
        ("cpu", "", "Conv", 17, FP16, False),  # CPU Conv is float-only
        ("cpu", "", "Conv", 17, FP32, True),
        ("cpu", "", "LayerNormalization", 17, FP16, True),  # 17+: T includes float16
        ("cpu", "", "LayerNormalization", 17, BF16, False),  # the markdown lacks bf16 (the 1.30 wheel has it)
        ("cuda", "", "MatMul", 13, FP16, True),
        ("cuda", "", "MatMul", 17, BF16, True),
        ("cuda", "", "Add", 14, FP16, True),
        ("cuda", "com.microsoft", "SkipLayerNormalization", 1, FP16, True),
        ("cuda", "com.microsoft", "Attention", 1, FP16, True),
        ("cpu", "com.microsoft", "Attention", 1, FP16, False),  # CPU contrib Attention is float-only
        ("dml", "", "MatMul", 13, FP16, True),
        ("dml", "", "MatMul", 13, BF16, False),
        ("cuda", "", "Resize", 19, FP16, True),  # T1 (X) decides, not scales/roi
        ("cuda", "", "NoSuchOp", 17, FP32, False),
    ],
)
def test_shipped_kernel_spot_checks(target, domain, op_type, opset, dtype, expected):
    assert get_target(target, live=False).supports(domain, op_type, opset, dtype) is expected


def test_model_opset_maps_to_the_schema_version():
    cuda = get_target("cuda", live=False)
    # Softmax schemas: 1, 11, 13. At opset 17 the op's schema is 13, whose kernel range is 13+.
    assert cuda.explain("", "Softmax", 17, FP16).kernel.label == "13+"
    # Relu: CPU registers [6, 12], 13 and 14+. Opset 13 -> schema 13 -> the exact "13" kernel.
    cpu = get_target("cpu", live=False)
    assert cpu.explain("", "Relu", 13, FP32).kernel.label == "13"
    # Add at opset 12: schema 7 -> [7, 12].
    assert cpu.explain("", "Add", 12, FP32).kernel.label == "[7, 12]"


def test_no_kernel_below_the_first_registered_version():
    # CUDA registers Sign from schema 13 only; at opset 12 the node's schema is Sign-9.
    cuda = get_target("cuda", live=False)
    answer = cuda.explain("", "Sign", 12, FP16)
    print(answer.detail)
    assert not answer.supported
    assert "no kernel for opset 12" in answer.detail
    assert cuda.supports("", "Sign", 13, FP16)


def test_dtype_rule_uses_first_float_input():
    cpu = shipped_table("CPUExecutionProvider")
    where = cpu.op("", "Where")
    kernel = cpu.kernel_for("", "Where", 17)
    assert where.signatures[0].inputs[0].type == "B"  # condition: bool, skipped
    assert cpu.data_type_parameter("", "Where", kernel) == "T"
    layer_norm = cpu.kernel_for("", "LayerNormalization", 17)
    assert cpu.data_type_parameter("", "LayerNormalization", layer_norm) == "T"  # X, not Mean/InvStdDev (U)


def test_contrib_op_signatures_for_the_core():
    signature = op_signatures("com.microsoft", "SkipLayerNormalization")[0]
    assert [(p.name, p.type) for p in signature.inputs][:3] == [("input", "T"), ("skip", "T"), ("gamma", "T")]
    attention = op_signatures("com.microsoft", "Attention")[0]
    assert ("mask_index", "M") in [(p.name, p.type) for p in attention.inputs]
    # ops no table lists fall back to the onnx schema
    assert op_signatures("", "Relu")[0].inputs[0].type == "T"
    assert op_signatures("com.example", "Nothing") == ()
