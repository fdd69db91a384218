"""The Triton repository: config.pbtxt read with Triton's own model-config protobuf, checked against
the ONNX model; the example request run through ONNX Runtime as Triton would run it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from onnx import TensorProto
from tritonclient.grpc import model_config_pb2

import nbdeploy
from nbdeploy.store import Store

TRITON_TYPE = {TensorProto.FLOAT: "TYPE_FP32", TensorProto.DOUBLE: "TYPE_FP64", TensorProto.INT64: "TYPE_INT64",
               TensorProto.STRING: "TYPE_STRING", TensorProto.BOOL: "TYPE_BOOL"}
V2_NUMPY = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "BOOL": np.bool_, "BYTES": object}
VERSION = {"iris": 2, "diabetes": 1, "pets": 1}


def parse(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("name", ["iris", "diabetes", "pets"])
def test_config_declares_the_onnx_inputs_and_outputs(source, out, name):
    path = nbdeploy.export(name, "triton", out, home=source["home"])
    version = VERSION[name]
    config = parse(path / name / "config.pbtxt")
    model_file = path / name / str(version) / "model.onnx"
    model = onnx.load(model_file)
    assert config.name == name and config.platform == "onnxruntime_onnx" and config.max_batch_size == 0
    assert model_file.read_bytes() == Store(source["home"]).version(name, version).onnx_bytes()
    assert "ZipMap" not in {node.op_type for node in model.graph.node}
    for declared, graph in ((config.input, model.graph.input), (config.output, model.graph.output)):
        assert [d.name for d in declared] == [g.name for g in graph]
        for d, g in zip(declared, graph, strict=True):
            tensor = g.type.tensor_type
            assert model_config_pb2.DataType.Name(d.data_type) == TRITON_TYPE[tensor.elem_type]
            assert list(d.dims) == [x.dim_value if x.HasField("dim_value") else -1 for x in tensor.shape.dim]
            assert d.dims[0] == -1  # the batch dimension, as max_batch_size 0 asks
    assert [(g.kind, g.count) for g in config.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_CPU, 1)]


def test_types_and_shapes_for_text_and_array_models(source, out):
    pets = parse(nbdeploy.export("pets", "triton", out / "pets", home=source["home"]) / "pets" / "config.pbtxt")
    types = {t.name: (model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in [*pets.input, *pets.output]}
    assert types == {"kind": ("TYPE_STRING", [-1, 1]), "age": ("TYPE_FP32", [-1, 1]),
                     "label": ("TYPE_STRING", [-1]), "probabilities": ("TYPE_FP32", [-1, 2])}
    path = nbdeploy.export("diabetes", "triton", out / "d", home=source["home"])
    diabetes = parse(path / "diabetes" / "config.pbtxt")
    assert [(t.name, list(t.dims)) for t in diabetes.input] == [("input", [-1, 10])]


@pytest.mark.parametrize("name", ["iris", "pets"])
def test_example_request_runs_on_the_model_as_triton_would(source, out, name):
    """request.json names inputs as Triton does (ONNX names) and fits their types and shapes."""
    path = nbdeploy.export(name, "triton", out, home=source["home"])
    request = json.loads((path / "request.json").read_text())
    feeds = {i["name"]: np.array(i["data"], dtype=V2_NUMPY[i["datatype"]]).reshape(i["shape"])
             for i in request["inputs"]}
    session = ort.InferenceSession(str(path / name / str(VERSION[name]) / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    label = session.run(["label"], feeds)[0]
    X, _ = source[name]
    np.testing.assert_array_equal(label, nbdeploy.load(name, home=source["home"]).predict(X.iloc[:1]))


def test_readme_maps_columns_to_triton_inputs(source, out):
    text = (nbdeploy.export("iris", "triton", out, home=source["home"]) / "README.md").read_text()
    assert "| `sepal length (cm)` | `sepal_length__cm_` | FP32 | [-1, 1] |" in text
    assert "tritonserver --model-repository=/models" in text and "/v2/models/iris/infer" in text
