"""``mpcompile validate`` end to end: exit codes, JSON, overrides, skipped EPs, missing runtime."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from test_validate_models import mlp_fp32, overflow_model, overflow_model_fp32, save, to_fp16

import mpcompile
from mpcompile import errors
from mpcompile.cli import main
from mpcompile.validate import SCHEMA, ValidationResult
from mpcompile.validate import api as validate_api

ort = pytest.importorskip("onnxruntime", reason="validate runs models in onnxruntime")
FAST = ["--runs", "2", "--warmup", "1"]


@pytest.fixture(scope="module")
def mlp_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlp")
    original = mlp_fp32()
    converted = mpcompile.convert(original).model
    return save(original, folder / "mlp.onnx"), save(converted, folder / "mlp.fp16.onnx")


@pytest.fixture(scope="module")
def overflow_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("overflow")
    return save(overflow_model_fp32(), folder / "fp32.onnx"), save(overflow_model(), folder / "fp16.onnx")


def test_passing_model_exits_0_and_prints_tables(mlp_paths, capsys):
    assert main(["validate", *mlp_paths, *FAST]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "logits" in out and "latency" in out and "FP16-faithful" in out


def test_json_and_save_share_the_documented_schema(mlp_paths, tmp_path, capsys):
    saved = tmp_path / "results.json"
    assert main(["validate", *mlp_paths, *FAST, "--json", "--save", str(saved)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(saved.read_text()) == {**printed, "eps": printed["eps"]}
    assert printed["schema"] == SCHEMA and printed["passed"] is True
    cpu = next(row for row in printed["eps"] if row["ep"] == "cpu")
    assert cpu["status"] == "passed" and cpu["accuracy_mode"] == "fp16-faithful"
    logits = next(o for o in cpu["outputs"] if o["name"] == "logits")
    assert logits["top1_agreement"] is not None and 0 < logits["cosine_similarity"] <= 1.0 + 1e-12
    assert cpu["latency"]["original"]["runs"] == 2 and cpu["latency"]["converted"]["warmup"] == 1
    assert set(printed["inputs"]["shapes"]) == {"x"}


def test_tight_tolerance_fails_with_exit_1_and_override_rescues_it(mlp_paths, capsys):
    code = main(["validate", *mlp_paths, "--runs", "0", "--rtol", "0", "--atol", "0"])
    assert code == int(errors.ExitCode.VALIDATION_FAILED) == 1
    assert "FAILED" in capsys.readouterr().out
    rescued = main(
        [
            "validate",
            *mlp_paths,
            "--runs",
            "0",
            "--rtol",
            "0",
            "--atol",
            "0",
            "--atol",
            "logits:1,probs:1",
            "--json",
        ]
    )
    assert rescued == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tolerances"]["atol"] == {"default": 0.0, "per_output": {"logits": 1.0, "probs": 1.0}}


def test_override_for_one_output_only(mlp_paths, capsys):
    assert (
        main(
            [
                "validate",
                *mlp_paths,
                "--runs",
                "0",
                "--rtol",
                "0",
                "--atol",
                "0",
                "--atol",
                "logits:1",
                "--json",
            ]
        )
        == 1
    )
    result = json.loads(capsys.readouterr().out)
    outputs = {o["name"]: o for o in result["eps"][0]["outputs"]}
    assert outputs["logits"]["passed"] is True and outputs["logits"]["atol"] == 1.0
    assert outputs["probs"]["passed"] is False and outputs["probs"]["atol"] == 0.0


def test_bad_options_are_usage_errors(mlp_paths, capsys):
    assert main(["validate", *mlp_paths, "--atol", "nothere:1"]) == int(errors.ExitCode.USAGE)
    assert main(["validate", *mlp_paths, "--atol", "abc"]) == int(errors.ExitCode.USAGE)
    assert main(["validate", *mlp_paths, "--shape", "x:1x2x3"]) == int(errors.ExitCode.USAGE)
    err = capsys.readouterr().err
    assert "names no output" in err and err.count("\n") == 3  # one line each


def test_missing_model_file(tmp_path, mlp_paths):
    assert main(["validate", str(tmp_path / "nope.onnx"), mlp_paths[1]]) == int(
        errors.ExitCode.INPUT_NOT_FOUND
    )


def test_overflow_fails_faithful_cpu_but_native_cpu_hides_it(overflow_paths, tmp_path, capsys):
    data = tmp_path / "x.npz"
    np.savez(data, x=np.array([65504.0], np.float32))
    assert main(["validate", *overflow_paths, "--inputs", str(data), "--runs", "0", "--json"]) == 1
    row = json.loads(capsys.readouterr().out)["eps"][0]
    assert row["accuracy_mode"] == "fp16-faithful" and row["outputs"][0]["new_nonfinite"] == 1
    assert (
        main(["validate", *overflow_paths, "--inputs", str(data), "--runs", "0", "--native-cpu", "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["eps"][0]["accuracy_mode"] == "native"


def test_unavailable_eps_are_skipped_unless_requested(mlp_paths, capsys):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime offers CUDA; the skip path needs a CPU-only build")
    assert main(["validate", *mlp_paths, *FAST, "--json"]) == 0
    rows = {row["provider"]: row for row in json.loads(capsys.readouterr().out)["eps"]}
    assert rows["CUDAExecutionProvider"]["status"] == "skipped"
    assert rows["TensorrtExecutionProvider"]["status"] == "skipped"
    assert rows["CPUExecutionProvider"]["status"] == "passed"
    assert main(["validate", *mlp_paths, *FAST, "--ep", "cuda"]) == int(errors.ExitCode.EP_UNAVAILABLE)
    assert "CUDAExecutionProvider is not available" in capsys.readouterr().err


def test_gpu_wheel_without_gpu_skips_cuda_with_one_line(mlp_paths, monkeypatch, capsys):
    """onnxruntime-gpu on a machine without GPU lists CUDA but cannot load it: CPU runs instead."""
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: available)
    assert main(["validate", *mlp_paths, *FAST, "--json"]) == 0
    captured = capsys.readouterr()
    rows = {row["provider"]: row for row in json.loads(captured.out)["eps"]}
    assert rows["CUDAExecutionProvider"]["status"] == "skipped"
    assert "could not be loaded" in rows["CUDAExecutionProvider"]["reason"]
    assert rows["CPUExecutionProvider"]["status"] == "passed"
    assert rows["CPUExecutionProvider"]["accuracy_mode"] == "fp16-faithful"
    lines = [line for line in captured.err.splitlines() if "CUDAExecutionProvider" in line]
    assert len(lines) == 1 and "CPU runs instead" in lines[0]
    assert main(["validate", *mlp_paths, *FAST, "--ep", "cuda,cpu"]) == int(errors.ExitCode.EP_UNAVAILABLE)


def test_missing_onnxruntime_is_a_clear_error(mlp_paths, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    assert main(["validate", *mlp_paths]) == int(errors.ExitCode.RUNTIME_MISSING)
    assert "onnxruntime is not installed" in capsys.readouterr().err


def test_python_api_result_is_truthy_and_serializes(mlp_paths):
    original, converted = mlp_paths
    result = mpcompile.validate(original, converted, runs=0, batches=2)
    assert isinstance(result, ValidationResult) and result and result.passed
    assert json.loads(result.to_json())["inputs"]["batches"] == 2
    failing = validate_api.validate(original, converted, runs=0, atol=0.0, rtol=0.0)
    assert not failing and json.loads(failing.to_json())["passed"] is False


def test_python_api_takes_models_and_feed_dicts():
    original = mlp_fp32(with_probs=False)
    converted = to_fp16(original)  # an independent FP16 converter
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)}
    result = validate_api.validate(
        original, converted, inputs=feeds, runs=0, atol={"": 0.001, "logits": 0.05}
    )
    assert result, result.to_json()
    assert result.inputs["source"] == "given" and result.inputs["shapes"] == {"x": [3, 16]}
    assert result.original.startswith("<in-memory")


def test_model_onnxruntime_refuses_is_one_line_error(tmp_path, capsys):
    original = mlp_fp32()
    broken = to_fp16(original)  # onnxconverter-common mistypes `probs` (its producer reads an FP32 output)
    paths = save(original, tmp_path / "a.onnx"), save(broken, tmp_path / "b.onnx")
    assert main(["validate", *paths, "--runs", "0"]) == int(errors.ExitCode.INVALID_MODEL)
    err = capsys.readouterr().err
    assert err.startswith("error: onnxruntime cannot load") and err.count("\n") == 1


def test_bf16_model_without_cpu_kernels_gets_faithful_accuracy_only():
    original = mlp_fp32()
    converted = mpcompile.convert(original, precision="bf16").model
    lines: list[str] = []
    result = validate_api.validate(original, converted, runs=2, warmup=0, log=lines.append)
    (cpu,) = [row for row in result.eps if row.provider == "CPUExecutionProvider"]
    assert result.low_precision == "bf16" and result.rtol["default"] == 0.05
    assert cpu.accuracy_mode == "fp16-faithful" and cpu.status == "passed", result.to_json()
    assert cpu.latency.original is not None and cpu.latency.converted is None and cpu.latency.speedup is None
    assert "does not run natively" in cpu.reason and lines == [cpu.reason]


def test_validate_or_raise_for_convert(mlp_paths, capsys):
    from mpcompile.commands.validate import ValidationFailedError, validate_or_raise

    validate_or_raise(*mlp_paths, runs=0)
    assert "PASSED" in capsys.readouterr().out
    with pytest.raises(ValidationFailedError) as failure:
        validate_or_raise(*mlp_paths, runs=0, atol=["0"], rtol=["0"])
    assert failure.value.exit_code == errors.ExitCode.VALIDATION_FAILED


def test_converted_model_with_fp16_inputs_and_outputs():
    original = mlp_fp32()
    converted = mpcompile.convert(original, keep_io_types=False).model
    result = validate_api.validate(original, converted, runs=1, warmup=0)
    (cpu,) = [row for row in result.eps if row.provider == "CPUExecutionProvider"]
    assert result, result.to_json()
    declared = {value.name: value.type.tensor_type.elem_type for value in converted.graph.output}
    for output in cpu.outputs:  # each output keeps the dtype the converted model declares
        assert output.dtype == ("float16" if declared[output.name] == onnx.TensorProto.FLOAT16 else "float32")
        assert output.reference_dtype == "float32"
    assert "float16" in {o.dtype for o in cpu.outputs}
    assert cpu.latency.converted is not None


def test_user_inputs_are_cast_and_bad_shapes_are_usage_errors(mlp_paths, tmp_path, capsys):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.ones((2, 16), np.float64))  # float64 data for a float input: cast
    assert main(["validate", *mlp_paths, "--inputs", str(good), "--runs", "0"]) == 0
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.ones((2, 7), np.float32))
    assert main(["validate", *mlp_paths, "--inputs", str(bad), "--runs", "0"]) == int(errors.ExitCode.USAGE)
    err = capsys.readouterr().err
    assert "axis 1 is fixed at 16" in err and err.count("\n") == 1


def test_tensorrt_rows_orchestration_with_a_stand_in_runner(mlp_paths, monkeypatch):
    """No TensorRT here: a runner that records its options and runs on CPU stands in for it, to
    check the rows: converted + FP16-mode baseline, engine cache folder, baseline not in the verdict."""
    from mpcompile.validate import api as api_module
    from mpcompile.validate import runners

    created = []

    class StandIn(runners.OrtRunner):
        uses_io_binding = False

        def activate(self):
            created.append((self.name, self.provider, dict(self.provider_options)))
            provider, self.provider = self.provider, runners.CPU
            super().activate()
            self.provider = provider

    monkeypatch.setattr(ort, "get_available_providers", lambda: [runners.TENSORRT, runners.CPU])
    monkeypatch.setattr(api_module, "OrtRunner", StandIn)
    result = api_module.validate(*mlp_paths, runs=2, warmup=0, atol={"": 0.0, "logits": 0.0}, rtol=0.0)
    roles = [(row.ep, row.role, row.status) for row in result.eps]
    assert roles[:2] == [
        ("tensorrt", "converted", "failed"),
        ("tensorrt", "tensorrt-fp16-baseline", "passed"),
    ]
    assert roles[2][0] == "cpu" and result.eps[2].accuracy_mode == "native"  # a GPU EP ran
    trt = [options for name, provider, options in created if provider == runners.TENSORRT]
    assert {o["trt_fp16_enable"] for o in trt} == {False, True}
    assert all(o["trt_engine_cache_enable"] and o["trt_engine_cache_path"] for o in trt)
    assert result.eps[1].latency.speedup is not None
    assert not result  # the baseline passing does not rescue the failing converted rows
