"""Prediction events for the log, Prometheus metrics, and the OpenAPI document and docs page."""

from __future__ import annotations

import threading

import numpy as np
from serve_helpers import iris_inputs

from nbdeploy.store.events import EventSink, NullSink, PredictionEvent, QueueSink


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
    client.post("/v2/models/iris/infer", json={"id": "a1", "inputs": iris_inputs(X.head(3))})
    client.post("/models/iris/invocations", json={"dataframe_records": X.head(2).to_dict(orient="records")})
    client.post("/v2/models/iris/infer", json={"inputs": iris_inputs(X.head(1))[:3]})  # missing input: 400
    client.post("/v2/models/nope/infer", json={"inputs": []})  # never resolved: no event
    got = [(e.model, e.version, e.status) for e in sink.events]
    assert got == [("iris", 1, 200), ("iris", 1, 200), ("iris", 1, 400)]
    ok, mlflow, bad = sink.events
    assert ok.id == "a1" and set(ok.inputs) == set(X.columns) and ok.inputs["sepal length (cm)"].shape == (3, 1)
    assert ok.outputs["label"].tolist() == model.predict(X.head(3)).tolist()
    assert ok.outputs["probabilities"].shape == (3, 3)
    assert ok.error is None and ok.latency_ms > 0 and ok.ts > 1e9
    assert len(mlflow.id) == 36 and mlflow.outputs["label"].shape == (2,)
    assert "missing input" in bad.error and bad.outputs == {}
    text = client.get("/metrics").text
    assert "nbdeploy_log_dropped_total 7" in text


def test_metrics_per_model_and_version(client, iris):
    X, _, _ = iris
    for _ in range(3):
        client.post("/v2/models/iris/infer", json={"inputs": iris_inputs(X.head(2))})
    client.post("/v2/models/iris/infer", content=b"{")
    client.post("/v2/models/zzz/infer", json={})
    client.get("/v2", headers={"Host": "evil"})
    text = client.get("/metrics").text
    assert 'nbdeploy_requests_total{model="iris",version="1",protocol="v2",code="200"} 3' in text
    assert 'nbdeploy_requests_total{model="iris",version="1",protocol="v2",code="400"} 1' in text
    assert 'nbdeploy_requests_total{model="",version="",protocol="v2",code="404"} 1' in text
    assert 'nbdeploy_request_errors_total{model="iris",version="1"} 1' in text
    assert 'nbdeploy_request_duration_seconds_count{model="iris",version="1"} 4' in text
    assert 'nbdeploy_batch_rows_bucket{model="iris",version="1",le="2"} 3' in text
    assert 'nbdeploy_rejected_total{reason="host"} 1' in text
    assert 'nbdeploy_model_loaded{model="diabetes",version="1",batching="false"} 1' in text
    assert "zzz" not in text  # request paths never become labels


def test_queue_sink_never_blocks_and_counts_drops():
    gate = threading.Event()
    written: list[int] = []

    def writer(events):
        gate.wait(5)
        written.append(len(events))

    sink = QueueSink(writer, maxsize=2, batch=10)
    event = PredictionEvent("i", 0.0, "m", 1, {"x": np.zeros(1)}, {}, 1.0, 200, None)
    for _ in range(10):
        sink.put(event)
    assert sink.dropped >= 7
    gate.set()
    sink.close()
    assert sum(written) + sink.dropped == 10
    assert NullSink().put(event) is None and NullSink.dropped == 0


def test_openapi_document_covers_every_route(client):
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in ("/v2", "/v2/health/ready", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer",
                 "/models/{name}/invocations", "/ping", "/metrics"):
        assert path in doc["paths"], path
    page = client.get("/docs")
    assert page.status_code == 200 and "openapi.json" in page.text and "<script>" in page.text
