"""Loading with embedded weights mapped from the file (mpcompile.io.mapped_load) gives the same model."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import models
import mpcompile
from mpcompile.io import model_io
from mpcompile.io.mapped_load import MIN_MAPPED_BYTES, load_mapped
from tests.helpers import run


@pytest.mark.parametrize(
    "name", ["bert_encoder", "resnet", "control_flow", "regression_initializers_as_inputs"]
)
def test_mapped_weights_equal_parsed_weights(tmp_path, name):
    path = tmp_path / "model.onnx"
    onnx.save(models.build(name), path)
    parsed = ir.from_proto(onnx.load(path))
    mapped = ir.serde.deserialize_model(load_mapped(path))
    ir.external_data.set_base_dir(mapped.graph, str(tmp_path))
    assert list(parsed.graph.initializers) == list(mapped.graph.initializers)
    for name_, value in mapped.graph.initializers.items():
        is_large = parsed.graph.initializers[name_].const_value.nbytes >= MIN_MAPPED_BYTES
        assert isinstance(value.const_value, ir.ExternalTensor) == is_large, name_
    for name_, value in parsed.graph.initializers.items():
        np.testing.assert_array_equal(
            value.const_value.numpy(), mapped.graph.initializers[name_].const_value.numpy()
        )
    assert len(parsed.graph) == len(mapped.graph)


def test_convert_file_with_mapped_weights_writes_an_embedded_model(tmp_path, monkeypatch):
    monkeypatch.setattr(model_io, "MAPPED_LOAD_MIN_BYTES", 0)  # take the mapped path for a small model
    source, output = tmp_path / "encoder.onnx", tmp_path / "encoder.fp16.onnx"
    original = models.build("bert_encoder")
    onnx.save(original, source)
    mpcompile.convert_file(source, output)
    converted = onnx.load(output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.fp16.onnx", "encoder.onnx"]
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in converted.graph.initializer)
    feeds = models.make_inputs(original)
    for want, got in zip(run(original, feeds), run(converted, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2 * float(np.abs(want).max()))


@pytest.mark.parametrize("name", sorted(models.ZOO))
def test_streamed_embedded_save_round_trips(tmp_path, name):
    """convert_file writes embedded weights by streaming them in; the file equals what the
    in-memory conversion produces, tensor by tensor."""
    source, output = tmp_path / "model.onnx", tmp_path / "model.fp16.onnx"
    onnx.save(models.build(name), source)
    options = {"allow_qdq": name == "qdq"}
    mpcompile.convert_file(source, output, **options)
    written = onnx.load(output)
    in_memory = mpcompile.convert(models.build(name), **options).model
    assert not list(tmp_path.glob(".mpcompile-*")), "scratch folder left behind"
    want = {t.name: onnx.numpy_helper.to_array(t) for t in in_memory.graph.initializer}
    got = {t.name: onnx.numpy_helper.to_array(t) for t in written.graph.initializer}
    assert want.keys() == got.keys()
    for key, array in want.items():
        np.testing.assert_array_equal(got[key], array)
