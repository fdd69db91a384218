"""The V2 endpoints through the real server process, called as an outside client would (httpx only)."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.server


def _infer_columns(url: str, X, **extra) -> httpx.Response:
    meta = httpx.get(url).json()
    inputs = []
    for spec in meta["inputs"]:
        col = X[spec["name"]].to_numpy().tolist()
        inputs.append({"name": spec["name"], "datatype": spec["datatype"], "shape": [len(col), 1], "data": col})
    return httpx.post(f"{url}/infer", json={"inputs": inputs, **extra})


def test_server_and_health(served):
    base = served["url"]
    assert httpx.get(f"{base}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{base}/v2/health/ready").status_code == 200
    meta = httpx.get(f"{base}/v2").json()
    assert meta["name"] == "nbdeploy" and "binary_tensor_data" in meta["extensions"]


def test_metadata_names_the_columns_and_outputs(served, iris):
    X, _, _ = iris
    meta = httpx.get(f"{served['url']}/v2/models/iris").json()
    assert meta["name"] == "iris" and meta["versions"] == ["1"]
    assert [i["name"] for i in meta["inputs"]] == list(X.columns)
    assert all(i["shape"] == [-1, 1] and i["datatype"] == "FP32" for i in meta["inputs"])
    assert {o["name"]: o["datatype"] for o in meta["outputs"]} == {"label": "INT64", "probabilities": "FP32"}


def test_iris_predictions_equal_scikit_learn(served, iris):
    X, _, model = iris
    resp = _infer_columns(f"{served['url']}/v2/models/iris", X, id="req-42")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_name"] == "iris" and body["model_version"] == "1" and body["id"] == "req-42"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"]["data"] == model.predict(X).tolist()
    proba = np.array(outputs["probabilities"]["data"]).reshape(outputs["probabilities"]["shape"])
    np.testing.assert_allclose(proba, model.predict_proba(X), atol=1e-5)


def test_diabetes_regressor_takes_one_array_input(served, diabetes):
    X, _, model = diabetes
    url = f"{served['url']}/v2/models/diabetes"
    meta = httpx.get(url).json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 10]}]
    assert [o["name"] for o in meta["outputs"]] == ["label"]
    body = {"inputs": [{"name": "input", "datatype": "FP64", "shape": list(X.shape), "data": X.ravel().tolist()}]}
    resp = httpx.post(f"{url}/infer", json=body)
    assert resp.status_code == 200, resp.text
    got = np.array(resp.json()["outputs"][0]["data"])
    np.testing.assert_allclose(got, model.predict(X), rtol=1e-4)
    assert resp.json()["id"]  # a generated id when the request has none


def test_versioned_routes_answer_for_that_version(served, iris):
    X, _, _ = iris
    base = f"{served['url']}/v2/models/iris"
    assert httpx.get(f"{base}/versions/1").json()["versions"] == ["1"]
    assert httpx.get(f"{base}/versions/1/ready").json()["ready"] is True
    assert httpx.get(f"{base}/ready").status_code == 200
    assert _infer_columns(f"{base}/versions/1", X.head(3)).json()["model_version"] == "1"
    assert _infer_columns(f"{base}/versions/production", X.head(3)).status_code == 200


@pytest.mark.parametrize(
    ("path", "status", "needle"),
    [
        ("/v2/models/irsi", 404, "did you mean 'iris'"),
        ("/v2/models/iris/versions/9", 404, "version 9"),
        ("/v2/models/iris/versions/staging", 404, "no version or alias 'staging'"),
        ("/v2/models/iris/versions/latest", 404, "no version or alias 'latest'; versions: 1"),
        ("/v2/models/iris/versions/productoin", 404, "(did you mean 'production'?)"),
        ("/v2/nothing-here", 404, "Not Found"),
    ],
)
def test_unknown_things_get_a_json_404(served, path, status, needle):
    resp = httpx.get(served["url"] + path)
    assert resp.status_code == status
    assert needle in resp.json()["error"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"not json", "JSON"),
        (b"{}", "inputs"),
        (b'{"inputs": [{"name": "petal width (cm)", "datatype": "FP32", "shape": [1, 1], "data": [0.2]}]}',
         "missing input"),
        (b'{"inputs": [{"name": "sepal lenght (cm)", "datatype": "FP32", "shape": [1, 1], "data": [0.2]}]}',
         "did you mean"),
    ],
)
def test_bad_requests_get_a_400_naming_the_problem(served, body, needle):
    resp = httpx.post(f"{served['url']}/v2/models/iris/infer", content=body,
                      headers={"Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["error"]


def test_strings_where_numbers_are_expected_are_refused(served):
    meta = httpx.get(f"{served['url']}/v2/models/iris").json()
    inputs = [{"name": s["name"], "datatype": "FP32", "shape": [1, 1], "data": ["1.5"]} for s in meta["inputs"]]
    resp = httpx.post(f"{served['url']}/v2/models/iris/infer", json={"inputs": inputs})
    assert resp.status_code == 400
    assert "sepal length (cm)" in resp.json()["error"]


def test_oversized_bodies_get_413_and_the_server_keeps_serving(served, iris):
    X, _, _ = iris
    resp = httpx.post(f"{served['url']}/v2/models/iris/infer", content=b"x" * (9 * 1024 * 1024),
                      headers={"Content-Type": "application/json"})
    assert resp.status_code == 413
    assert _infer_columns(f"{served['url']}/v2/models/iris", X.head(2)).status_code == 200


def test_text_columns_take_null_for_a_missing_value(tmp_path):
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    import nbdeploy

    X = pd.DataFrame({"city": ["paris", "lyon", None, "nice"] * 25, "age": [20.0, 35.0, 50.0, None] * 25})
    y = [0, 1, 1, 0] * 25
    prep = ColumnTransformer([
        ("city", make_pipeline(SimpleImputer(strategy="constant", fill_value="none"),
                               OneHotEncoder(handle_unknown="ignore")), ["city"]),
        ("age", SimpleImputer(), ["age"]),
    ])
    model = make_pipeline(prep, LogisticRegression()).fit(X, y)
    dep = nbdeploy.deploy(model, X, "cities", home=str(tmp_path))
    try:
        meta = httpx.get(dep.url).json()
        assert meta["parameters"]["input_details"]["city"] == {"missing_values": "send null"}
        body = {"inputs": [{"name": "city", "datatype": "BYTES", "shape": [2, 1], "data": [None, "lyon"]},
                           {"name": "age", "datatype": "FP32", "shape": [2, 1], "data": [None, 35.0]}]}
        resp = httpx.post(f"{dep.url}/infer", json=body)
        assert resp.status_code == 200, resp.text
        rows = pd.DataFrame({"city": [None, "lyon"], "age": [None, 35.0]})
        assert resp.json()["outputs"][0]["data"] == model.predict(rows).tolist()
    finally:
        nbdeploy.shutdown(str(tmp_path))
