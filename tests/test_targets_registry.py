"""Adding a target is one module and one registry line (docs/architecture.md, "Adding a target").

``ToyTarget`` below is such a module; registering its factory in ``targets/registry.TARGETS``
is all it takes for ``convert``, a policy file and ``mpcompile targets`` to use it.
"""

from __future__ import annotations

import json

import onnx_ir as ir
import pytest
from click.testing import CliRunner
from onnx import helper

import mpcompile
from models.builder import make_model, value_info, weight
from mpcompile.commands.targets import targets_command
from mpcompile.core.plan import Reason
from mpcompile.policy import read_policy_file
from mpcompile.targets import UnknownTargetError, get_target, registry
from mpcompile.targets.kernel_table import KernelAnswer


class ToyTarget:
    """A target whose only low-precision kernel is MatMul."""

    name = "toy"
    provider = "ToyExecutionProvider"
    source = "tests/test_targets_registry.py"

    def explain(self, domain: str, op_type: str, opset: int, dtype: ir.DataType) -> KernelAnswer:
        if op_type == "MatMul":
            return KernelAnswer(True, f"toy {op_type}: has a {dtype.name} kernel")
        return KernelAnswer(False, f"toy {op_type}: only MatMul has a {dtype.name} kernel")

    def supports(self, domain: str, op_type: str, opset: int, dtype: ir.DataType) -> bool:
        return self.explain(domain, op_type, opset, dtype).supported

    def describe(self) -> dict[str, object]:
        return {"ops": 1, "ops_with_float16": 1, "ops_with_bfloat16": 1}


def toy_target(live: bool = True) -> ToyTarget:
    return ToyTarget()


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(registry.TARGETS, "toy", f"{__name__}:toy_target")  # the one registry line


def _model():
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["a"], name="mm1"),
        helper.make_node("Add", ["a", "B"], ["b"], name="add"),
        helper.make_node("MatMul", ["b", "W2"], ["y"], name="mm2"),
    ]
    initializers = [weight("W1", [8, 8], 1, 0.3), weight("B", [8], 2, 0.3), weight("W2", [8, 4], 3, 0.3)]
    return make_model(nodes, [value_info("x", [2, 8])], [value_info("y", [2, 4])], initializers, opset=18)


def test_an_unregistered_target_is_refused():
    with pytest.raises(UnknownTargetError, match="expected one of cuda, tensorrt, cpu, dml, any"):
        get_target("toy")


def test_a_registered_target_decides_the_conversion(toy):
    result = mpcompile.convert(_model(), target="toy")
    rows = {row.name: row for row in result.decisions()}
    assert (rows["mm1"].precision, rows["mm1"].reason) == ("fp16", Reason.ALLOW)
    assert (rows["mm2"].precision, rows["mm2"].reason) == ("fp16", Reason.ALLOW)
    assert (rows["add"].precision, rows["add"].reason) == ("fp32", "no-kernel:ToyExecutionProvider")
    assert rows["add"].rule == "toy Add: only MatMul has a FLOAT16 kernel"  # the target's explain()


def test_a_registered_target_is_listed_and_accepted_by_policy_files(toy, tmp_path):
    result = CliRunner().invoke(targets_command, ["--json", "--no-live"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)["targets"]}
    assert list(rows) == ["cuda", "tensorrt", "cpu", "dml", "any", "toy"]
    assert rows["toy"] == {
        "name": "toy",
        "provider": "ToyExecutionProvider",
        "source": "tests/test_targets_registry.py",
        "live": False,
        "ops": 1,
        "ops_with_float16": 1,
        "ops_with_bfloat16": 1,
    }
    policy = tmp_path / "policy.toml"
    policy.write_text('target = "toy"\n')
    assert read_policy_file(policy).target == "toy"
