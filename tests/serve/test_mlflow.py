"""MLflow-compatible scoring: the request formats of ``mlflow models serve``, CSV, predict_proba."""

from __future__ import annotations

import numpy as np
import pytest
from serve_helpers import add_version


@pytest.fixture
def rows(iris):
    X, _, model = iris
    return X.head(4), model


def _bodies(X):
    cols = list(X.columns)
    return {
        "dataframe_split": {"dataframe_split": {"columns": cols, "data": X.to_numpy().tolist(), "index": [0, 1, 2, 3]}},
        "dataframe_records": {"dataframe_records": X.to_dict(orient="records")},
        "instances_records": {"instances": X.to_dict(orient="records")},
        "inputs_columns": {"inputs": {c: X[c].tolist() for c in cols}},
        "instances_rows": {"instances": X.to_numpy().tolist()},
    }


@pytest.mark.parametrize("fmt", ["dataframe_split", "dataframe_records", "instances_records", "inputs_columns",
                                 "instances_rows"])
def test_json_formats_predict(client, rows, fmt):
    X, model = rows
    resp = client.post("/models/iris/invocations", json=_bodies(X)[fmt])
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"predictions": model.predict(X).tolist()}


def test_csv_and_predict_proba(client, rows):
    X, model = rows
    csv = X.to_csv(index=False).encode()
    resp = client.post("/models/iris/invocations", content=csv, headers={"Content-Type": "text/csv"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["predictions"] == model.predict(X).tolist()
    resp = client.post("/models/iris/invocations?predict_method=predict_proba", content=csv,
                       headers={"Content-Type": "text/csv; charset=utf-8"})
    np.testing.assert_allclose(resp.json()["predictions"], model.predict_proba(X), atol=1e-5)
    body = {**_bodies(X)["dataframe_split"], "params": {"predict_method": "predict_proba"}}
    got = client.post("/models/iris/versions/production/invocations", json=body).json()["predictions"]
    np.testing.assert_allclose(got, model.predict_proba(X), atol=1e-5)


def test_array_model_takes_rows(client, diabetes):
    X, _, model = diabetes
    resp = client.post("/models/diabetes/invocations", json={"inputs": X[:3].tolist()})
    np.testing.assert_allclose(resp.json()["predictions"], model.predict(X[:3]), rtol=1e-4)
    resp = client.post("/models/diabetes/invocations", json={"dataframe_split": {"data": X[:2].tolist()}})
    assert len(resp.json()["predictions"]) == 2
    resp = client.post("/models/diabetes/invocations", json={"instances": X[0].tolist()})
    assert len(resp.json()["predictions"]) == 1


@pytest.mark.parametrize(("body", "needle"), [
    ({"dataframe_split": {"columns": ["a"], "data": [[1]]}}, "unknown column 'a'"),
    ({"dataframe_records": [{"sepal length (cm)": 1}]}, "missing column"),
    ({"dataframe_records": [{"sepal length (cm)": "x", "sepal width (cm)": 1, "petal length (cm)": 1,
                             "petal width (cm)": 1}]},
     "input 'sepal length (cm)': expected numbers (FP32), got the text"),
    ({"instances": [[1, 2, 3]]}, "row 0 must be a list of 4 values, got 3 values"),
    ({"inputs": [[1, 2, 3, 4]], "params": {"predict_method": "transform"}}, "predict_method must be one of"),
    ({"inputs": [[1, 2, 3, 4]], "instances": []}, "exactly one of"),
    ({"columns": []}, "exactly one of"),
    ([1, 2], "must be a JSON object"),
])
def test_bad_requests_are_400_in_mlflow_shape(client, body, needle):
    resp = client.post("/models/iris/invocations", json=body)
    assert resp.status_code == 400, resp.text
    doc = resp.json()
    assert doc["error_code"] == "BAD_REQUEST" and needle in doc["message"] and doc["error"] == doc["message"]


def test_csv_errors_name_column_and_row(client, rows):
    X, _ = rows
    csv = X.to_csv(index=False).replace("5.1", "five", 1)
    resp = client.post("/models/iris/invocations", content=csv, headers={"Content-Type": "text/csv"})
    assert resp.status_code == 400
    assert "input 'sepal length (cm)': CSV row 1: expected a number, got 'five'" in resp.json()["message"]


def test_regressor_has_no_predict_proba(client, diabetes):
    X, _, _ = diabetes
    resp = client.post("/models/diabetes/invocations",
                       json={"inputs": X[:1].tolist(), "params": {"predict_method": "predict_proba"}})
    assert resp.status_code == 400 and "without 'probabilities'" in resp.json()["message"]


def test_ping_health_version(client, store, iris_onnx):
    for path in ("/ping", "/health", "/models/iris/ping", "/models/iris/versions/1/health"):
        assert client.get(path).status_code == 200, path
    assert client.get("/models/nope/ping").status_code == 404
    assert client.get("/version").text == client.get("/v2").json()["version"]
    add_version(store, "iris", iris_onnx, alias="staging")
    client.app.state.runtime.sync()
    assert client.get("/models/iris/versions/staging/ping").status_code == 200


def test_unknown_model_is_404(client):
    resp = client.post("/models/nope/invocations", json={"inputs": [[1]]})
    assert resp.status_code == 404 and resp.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"


@pytest.mark.parametrize(("value", "expected"), [("٥.١", "a number"), ("1_0", "a number"), ("１", "a number")])
def test_csv_numbers_are_ascii(client, rows, value, expected):
    """float() and int() read other scripts' digits and underscores; a CSV number has neither."""
    X, _ = rows
    csv = X.head(1).to_csv(index=False).replace(str(X["sepal length (cm)"].iloc[0]), value, 1)
    resp = client.post("/models/iris/invocations", content=csv, headers={"Content-Type": "text/csv"})
    assert resp.status_code == 400, resp.text
    assert f"input 'sepal length (cm)': CSV row 1: expected {expected}, got {value!r}" in resp.json()["message"]


@pytest.mark.parametrize("value", ["١", "1_0", "²"])
def test_csv_integers_are_ascii(make_client, store, mixed_onnx, value):
    add_version(store, "mixed", mixed_onnx)
    client = make_client()
    csv = f"x,n,flag,city\n0.5,{value},true,oslo\n"
    resp = client.post("/models/mixed/invocations", content=csv, headers={"Content-Type": "text/csv"})
    assert resp.status_code == 400, resp.text
    assert f"input 'n': CSV row 1: expected an integer, got {value!r}" in resp.json()["message"]
