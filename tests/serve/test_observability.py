"""Prediction events for the log, Prometheus metrics, and the OpenAPI document and docs page."""

from __future__ import annotations

import json
import re

import numpy as np
from serve_helpers import iris_inputs, scrape

from nbdeploy.serve.routes import ROUTES
from nbdeploy.store.events import EventSink, NullSink, PredictionEvent


class ListSink:
    def __init__(self) -> None:
        self.events: list[PredictionEvent] = []
        self.dropped = 7

    def put(self, event: PredictionEvent) -> None:
        self.events.append(event)


def test_one_event_per_request_v2_and_mlflow_success_and_failure(make_client, iris):
    X, _, model = iris
    sink = ListSink()
    client = make_client(sink=sink)
    assert isinstance(sink, EventSink) and client.app.state.sink is sink
    answers = [
        client.post("/v2/models/iris/infer", json={"id": "a1", "inputs": iris_inputs(X.head(3))}),
        client.post("/models/iris/invocations", json={"dataframe_records": X.head(2).to_dict(orient="records")}),
        client.post("/v2/models/iris/infer", json={"inputs": iris_inputs(X.head(1))[:3]}),  # missing input: 400
    ]
    assert "x-request-id" not in client.post("/v2/models/nope/infer", json={"inputs": []}).headers  # no event
    got = [(e.model, e.version, e.status) for e in sink.events]
    assert got == [("iris", 1, 200), ("iris", 1, 200), ("iris", 1, 400)]
    ok, mlflow, bad = sink.events
    assert ok.client_id == "a1" and set(ok.inputs) == set(X.columns) and ok.inputs["sepal length (cm)"].shape == (3, 1)
    assert ok.outputs["label"].tolist() == model.predict(X.head(3)).tolist()
    assert ok.outputs["probabilities"].shape == (3, 3)
    assert ok.error is None and ok.latency_ms > 0 and ok.ts > 1e9
    assert mlflow.client_id is None and mlflow.outputs["label"].shape == (2,)
    assert "missing input" in bad.error and bad.outputs == {}
    # the server's key of each request, in X-Request-ID on both protocols (errors too), and in the V2 body
    assert [a.headers["x-request-id"] for a in answers] == [e.id for e in sink.events]
    assert answers[0].json()["id"] == "a1" and answers[0].json()["parameters"] == {"prediction_id": ok.id}
    assert all(len(e.id) == 36 and e.id[14] == "7" for e in sink.events)  # UUID version 7: time-ordered
    assert scrape(client.get("/metrics").text)("nbdeploy_log_dropped_total") == 7


def test_metrics_per_model_and_version(client, iris):
    X, _, _ = iris
    for _ in range(3):
        client.post("/v2/models/iris/infer", json={"inputs": iris_inputs(X.head(2))})
    client.post("/v2/models/iris/infer", content=b"{", headers={"Content-Type": "application/json"})
    client.post("/v2/models/zzz/infer", json={})
    client.get("/v2", headers={"Host": "evil"})
    resp = client.get("/metrics")
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    got = scrape(resp.text)
    iris1 = {"model": "iris", "version": "1"}
    assert got("nbdeploy_requests_total", **iris1, protocol="v2", code="200") == 3
    assert got("nbdeploy_requests_total", **iris1, protocol="v2", code="400") == 1
    assert got("nbdeploy_requests_total", model="", version="", protocol="v2", code="404") == 1
    assert got("nbdeploy_request_errors_total", **iris1) == 1
    assert got("nbdeploy_request_duration_seconds_count", **iris1) == 4
    assert got("nbdeploy_batch_rows_bucket", **iris1, le="2") == 3
    assert got("nbdeploy_rejected_total", reason="host") == 1
    assert got("nbdeploy_model_loaded", model="diabetes", version="1", batching="false") == 1
    assert got("nbdeploy_model_load_failures") == 0
    assert "zzz" not in resp.text  # request paths never become labels


def test_the_null_sink_logs_nothing():
    event = PredictionEvent("i", 0.0, "m", 1, {"x": np.zeros(1)}, {}, 1.0, 200, None)
    assert NullSink().put(event) is None and NullSink.dropped == 0


def _as_documented(route_path: str) -> list[str]:
    """A Starlette route path as OpenAPI writes it: the optional version segment in both its forms."""
    if "{version:versionseg}" not in route_path:
        return [route_path]
    return [route_path.replace("{version:versionseg}", form) for form in ("", "/versions/{version}")]


def test_the_app_and_its_openapi_document_have_the_same_operations(client):
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    served = {(path, method.lower()) for route in client.app.routes for path in _as_documented(route.path)
              for method in route.methods - {"HEAD"}}
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert served == documented
    for spec in ROUTES:  # each row of the table, under the path and id it promises
        for path, operation_id in spec.documented():
            assert doc["paths"][path][spec.method.lower()]["operationId"] == operation_id


def test_the_openapi_document_is_consistent(client):
    doc = client.get("/openapi.json").json()
    operations = [(path, op) for path, item in doc["paths"].items() for op in item.values()]
    ids = [op["operationId"] for _, op in operations]
    assert len(ids) == len(set(ids))
    for path, op in operations:
        assert [p["name"] for p in op.get("parameters", [])] == re.findall(r"{(\w+)}", path), path
        assert op["summary"] and op["responses"], path
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', json.dumps(doc)))
    assert refs and refs <= set(doc["components"]["schemas"])


def test_every_documented_operation_reaches_its_handler(client):
    doc = client.get("/openapi.json").json()
    for path, item in doc["paths"].items():
        url = path.replace("{name}", "iris").replace("{version}", "1")
        for method in item:
            resp = client.request(method.upper(), url, json={} if method == "post" else None)
            routed = resp.status_code != 405 and not (
                resp.status_code == 404 and resp.json() == {"error": "Not Found"})  # the router's own 404
            assert routed, (method, url, resp.status_code, resp.text)


def test_the_docs_page_reads_the_document(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "openapi.json" in page.text and "<script>" in page.text
