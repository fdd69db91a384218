"""The V2 routes in-process: metadata, readiness, infer (JSON and binary), versions and aliases."""

from __future__ import annotations

import uuid
from urllib.parse import quote

import numpy as np
import pytest
import tritonclient.http as triton
from serve_helpers import add_version, iris_inputs

from nbdeploy.signature import NUMPY_TO_DATATYPE


def test_server_metadata_health_and_readiness(client):
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2/models/iris/ready").json() == {"name": "iris", "version": "1", "ready": True}
    assert client.get("/v2/models/iris/versions/production/ready").status_code == 200
    assert client.get("/v2/models/nope/ready").status_code == 404


def test_model_metadata_per_version_and_alias(client, store, iris_onnx):
    add_version(store, "iris", iris_onnx, alias="staging")
    client.app.state.runtime.sync()
    meta = client.get("/v2/models/iris").json()
    assert meta["versions"] == ["1", "2"] and meta["parameters"]["aliases"] == {"production": "1", "staging": "2"}
    assert meta["platform"] == "onnxruntime_onnx" and meta["parameters"]["classes"] == [0, 1, 2]
    assert client.get("/v2/models/iris/versions/staging").json()["versions"] == ["2"]
    assert client.get("/v2/models/iris/versions/1").json()["parameters"]["model_version"] == "1"


def test_infer_echoes_id_and_selects_outputs(client, iris):
    X, _, model = iris
    body = {"id": "req-7", "inputs": iris_inputs(X.head(5)), "outputs": [{"name": "probabilities"}],
            "parameters": {"anything": 1}}
    resp = client.post("/v2/models/iris/infer", json=body)
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["id"] == "req-7" and doc["model_version"] == "1"
    assert [o["name"] for o in doc["outputs"]] == ["probabilities"]
    got = np.array(doc["outputs"][0]["data"]).reshape(doc["outputs"][0]["shape"])
    np.testing.assert_allclose(got, model.predict_proba(X.head(5)), atol=1e-5)
    generated = client.post("/v2/models/iris/infer", json={"inputs": iris_inputs(X.head(1))}).json()["id"]
    assert str(uuid.UUID(generated)) == generated  # the server's own id (a UUID; serve/inference.py picks which)


def test_a_frame_models_columns_may_come_as_one_tensor(client, iris):
    X, _, model = iris
    rows = X.head(4).to_numpy()
    body = {"inputs": [{"name": "features", "datatype": "FP64", "shape": list(rows.shape), "data": rows.tolist()}],
            "outputs": [{"name": "label"}]}
    resp = client.post("/v2/models/iris/infer", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["outputs"][0]["data"] == model.predict(X.head(4)).tolist()
    body["inputs"][0]["shape"], body["inputs"][0]["data"] = [4, 3], rows[:, :3].tolist()
    assert client.post("/v2/models/iris/infer", json=body).status_code == 400  # one column short


@pytest.mark.parametrize("datatype", ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                                      "UINT64", "FP16", "FP32", "FP64"])
def test_every_numeric_datatype_is_accepted_for_float_inputs(client, diabetes, datatype):
    X, _, _ = diabetes
    data = (np.abs(X[:3]) * 10).astype(int).ravel().tolist() if datatype != "BOOL" else [True] * 30
    if datatype.startswith("FP"):
        data = X[:3].ravel().tolist()
    body = {"inputs": [{"name": "input", "datatype": datatype, "shape": [3, 10], "data": data}]}
    resp = client.post("/v2/models/diabetes/infer", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["outputs"][0]["shape"] == [3]


def test_bytes_for_a_float_input_is_refused(client):
    body = {"inputs": [{"name": "input", "datatype": "BYTES", "shape": [1, 10], "data": ["1"] * 10}]}
    resp = client.post("/v2/models/diabetes/infer", json=body)
    assert resp.status_code == 400 and "input 'input'" in resp.json()["error"]


def test_mixed_types_by_column(make_client, store, mixed_onnx):
    add_version(store, "mixed", mixed_onnx)
    client = make_client()
    inputs = [{"name": "x", "datatype": "FP64", "shape": [2, 1], "data": [0.5, 3.0]},
              {"name": "n", "datatype": "INT64", "shape": [2, 1], "data": [1, 4]},
              {"name": "flag", "datatype": "BOOL", "shape": [2, 1], "data": [True, False]},
              {"name": "city", "datatype": "BYTES", "shape": [2, 1], "data": ["oslo", "rome"]}]
    resp = client.post("/v2/models/mixed/infer", json={"inputs": inputs})
    assert resp.status_code == 200, resp.text
    inputs[1]["data"] = [1.5, 2]
    inputs[1]["datatype"] = "FP32"
    resp = client.post("/v2/models/mixed/infer", json={"inputs": inputs})
    assert resp.status_code == 400 and "input 'n'" in resp.json()["error"]


def test_tritonclient_binary_request_without_content_type(client, iris):
    """tritonclient's default body: binary tensors, Inference-Header-Content-Length, no Content-Type."""
    X, _, model = iris
    inputs = []
    for col in X.columns:
        arr = X[[col]].to_numpy(np.float32)[:4]
        inputs.append(triton.InferInput(col, list(arr.shape), NUMPY_TO_DATATYPE[arr.dtype]).set_data_from_numpy(arr))
    body, length = triton.InferenceServerClient.generate_request_body(inputs, request_id="t1")
    resp = client.post("/v2/models/iris/infer", content=body, headers={"Inference-Header-Content-Length": str(length)})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/octet-stream"
    result = triton.InferResult.from_response_body(
        resp.content, header_length=int(resp.headers["inference-header-content-length"]))
    assert result.get_response()["id"] == "t1"
    assert result.as_numpy("label").tolist() == model.predict(X.head(4)).tolist()
    resp = client.post("/v2/models/iris/infer", content=body, headers={
        "Inference-Header-Content-Length": str(length), "Content-Type": "application/octet-stream"})
    assert resp.status_code == 200


@pytest.mark.parametrize(
    ("mutate", "status", "needle"),
    [
        (lambda b: b["inputs"].pop(), 400, "missing input 'petal width (cm)'"),
        (lambda b: b["inputs"].append({"name": "extra", "datatype": "FP32", "shape": [1, 1], "data": [1]}),
         400, "unknown input 'extra'"),
        (lambda b: b["inputs"][0].update(shape=[1, 2], data=[1, 2]), 400, "expected shape [-1, 1], got [1, 2]"),
        (lambda b: b["inputs"][0].update(shape=[2, 1]), 400, "shape [2, 1] needs 2 elements, got 1"),
        (lambda b: b["inputs"][0].update(data=["x"]), 400, "expected numbers (FP32), got the text 'x' at row 0"),
        (lambda b: b["inputs"][0].update(data=[None]), 400, "got a missing value (null/NaN) at row 0"),
        (lambda b: b["inputs"][1].update(shape=[1]), 200, ""),
        (lambda b: b["inputs"][0].update(shape=[2, 1], data=[1, 2]), 400, "has 1 rows but other inputs have 2"),
        (lambda b: b.update(outputs=[{"name": "proba"}]), 400, "unknown output 'proba'"),
        (lambda b: b.update(id=3), 400, "id must be a string"),
    ],
)
def test_rejections_name_the_input_with_expected_and_got(client, iris, mutate, status, needle):
    X, _, _ = iris
    body = {"inputs": iris_inputs(X.head(1))}
    mutate(body)
    resp = client.post("/v2/models/iris/infer", json=body)
    assert resp.status_code == status, resp.text
    if needle:
        assert needle in resp.json()["error"]


def test_nan_is_accepted_where_the_model_takes_it(make_client, store, tmp_path):
    from serve_helpers import converted
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import make_pipeline

    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 3))
    model = make_pipeline(HistGradientBoostingClassifier(max_iter=5)).fit(X, (X[:, 0] > 0).astype(int))
    add_version(store, "hgb", converted(model, X))
    client = make_client()
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [None, 1.0, 2.0]}]}
    assert client.post("/v2/models/hgb/infer", json=body).status_code == 200
    resp = client.post("/v2/models/diabetes/infer", json={
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 10], "data": [None] + [0.0] * 9}]})
    assert resp.status_code == 400 and "cannot take missing values" in resp.json()["error"]


@pytest.mark.parametrize(("path", "status", "needle"), [
    ("/v2/models/irsi/infer", 404, "did you mean 'iris'"),
    ("/v2/models/iris/versions/9/infer", 404, "has no version 9; versions: 1;"),
    ("/v2/models/iris/versions/staging/infer", 404, "no version or alias 'staging'"),
])
def test_unknown_models_and_versions(client, iris, path, status, needle):
    X, _, _ = iris
    resp = client.post(path, json={"inputs": iris_inputs(X.head(1))})
    assert resp.status_code == status and needle in resp.json()["error"]


def test_repository_index_lists_versions(client):
    index = client.post("/v2/repository/index").json()
    assert {(e["name"], e["version"], e["state"]) for e in index} == {
        ("diabetes", "1", "READY"), ("iris", "1", "READY")}


@pytest.mark.parametrize("version", ["²", "١", "１", "𝟏", "1" * 5000])
def test_only_ascii_digits_make_a_version_number(client, iris, version):
    """str.isdigit() takes superscripts and other scripts' digits: '²' was a 500, Arabic-Indic 1 version 1."""
    X, _, _ = iris
    quoted = quote(version)
    resp = client.post(f"/v2/models/iris/versions/{quoted}/infer", json={"inputs": iris_inputs(X.head(1))})
    assert resp.status_code == 404 and "no version or alias" in resp.json()["error"], resp.text
    for path in (f"/v2/models/iris/versions/{quoted}", f"/v2/models/iris/versions/{quoted}/ready",
                 f"/models/iris/versions/{quoted}/ping"):
        assert client.get(path).status_code == 404, path
    resp = client.post(f"/models/iris/versions/{quoted}/invocations", json={"instances": [[1, 2, 3, 4]]})
    assert resp.status_code == 404
