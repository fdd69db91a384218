"""Canary routing and guards in the server: buckets, versioned requests, an abort by the guard, two workers."""

from __future__ import annotations

import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from serve_helpers import add_version, converted, iris_inputs, scrape, start_server, stop_server
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from nbdeploy.serve.canary import bucket, to_canary
from nbdeploy.store import PRODUCTION, Store
from nbdeploy.store.alerts import alerts
from nbdeploy.store.canary import ABORTED, canaries, current_canary, start_canary


@pytest.fixture(scope="module")
def tolerant_onnx(iris):
    """An iris classifier that takes missing values (imputed); the plain one refuses them."""
    X, y, _ = iris
    return converted(make_pipeline(SimpleImputer(), LogisticRegression(max_iter=500)).fit(X, y), X)


def _body(X, row: int, missing: bool = False) -> dict:
    inputs = iris_inputs(X.iloc[row:row + 1])
    if missing:
        inputs[0]["data"] = [None]
    return {"inputs": inputs}


def test_buckets_are_stable_and_follow_the_share():
    # BLAKE2b of the model name and the key: the same in every process and after every restart
    assert bucket("iris", b"alice") == pytest.approx(82.55060174028253)
    assert bucket("iris", b"alice") != bucket("other", b"alice")
    keys = [f"user-{i}".encode() for i in range(10_000)]
    share = sum(to_canary("iris", k, 10.0) for k in keys) / len(keys)
    assert 0.09 < share < 0.11
    # raising the share keeps every key that had the canary already
    assert all(to_canary("iris", k, 25.0) for k in keys if to_canary("iris", k, 10.0))
    random.seed(0)
    assert 0.27 < sum(to_canary("iris", None, 30.0) for _ in range(10_000)) / 10_000 < 0.33  # no key: at random
    assert 0.27 < sum(to_canary("iris", b"", 30.0) for _ in range(10_000)) / 10_000 < 0.33  # an empty key is none


def test_a_canary_gets_its_share_by_key_and_versioned_requests_keep_their_version(store, make_client, iris,
                                                                                  iris_onnx):
    X, _, _ = iris
    add_version(store, "iris", iris_onnx, alias=None)
    start_canary(store, "iris", 2, 30.0, key="X-User",
                 guards={"min_requests": 10**6, "min_latency_requests": 10**6})  # routing only: no guard judges
    client = make_client()
    answered = {}
    for i in range(120):
        user = f"user-{i}"
        versions = {client.post("/v2/models/iris/infer", json=_body(X, i), headers={"X-User": user})
                    .json()["model_version"] for _ in range(2)}
        assert len(versions) == 1, f"{user} was answered by versions {versions}"  # a client stays on its arm
        answered[user] = versions.pop()
        assert answered[user] == ("2" if bucket("iris", user.encode()) < 30 else "1")
    assert 20 < Counter(answered.values())["2"] < 55  # about 30 % of 120
    # without the header: at random, about the share
    random_versions = Counter(client.post("/v2/models/iris/infer", json=_body(X, 0)).json()["model_version"]
                              for _ in range(200))
    assert 35 < random_versions["2"] < 90
    # a request naming a version is never rerouted
    canary_user = next(u for u, v in answered.items() if v == "2")
    for version in ("1", "2"):
        r = client.post(f"/v2/models/iris/versions/{version}/infer", json=_body(X, 0), headers={"X-User": canary_user})
        assert r.json()["model_version"] == version
    # the MLflow route shares the path, and the routing
    for _ in range(3):
        assert client.post("/models/iris/invocations", json={"dataframe_split": {
            "columns": list(X.columns), "data": X.iloc[:1].values.tolist()}},
            headers={"X-User": canary_user}).status_code == 200
    metrics = scrape(client.get("/metrics").text)
    assert metrics("nbdeploy_requests_total", model="iris", version="2", protocol="mlflow", code="200") == 3


def test_the_guard_aborts_a_canary_that_errs_from_the_servers_own_counts(tmp_path, make_client, iris, iris_onnx,
                                                                         tolerant_onnx):
    X, _, _ = iris
    store = Store(tmp_path / "guarded")
    add_version(store, "iris", tolerant_onnx)
    add_version(store, "iris", iris_onnx, alias=None)  # refuses missing values: answers 400 where v1 answers
    start_canary(store, "iris", 2, 50.0, guards={"min_requests": 10})
    client = make_client(store=store)  # no prediction log: the guard judges this process's counters
    statuses = Counter()
    deadline = time.monotonic() + 30
    i = 0
    while current_canary(store, "iris") is not None and time.monotonic() < deadline:
        r = client.post("/v2/models/iris/infer", json=_body(X, i % 150, missing=i % 2 == 1))
        statuses[r.status_code] += 1
        i += 1
    ended = canaries(store, "iris")[-1]
    assert ended.state == ABORTED and "error rate" in ended.reason, ended
    assert statuses[400] > 0
    assert store.aliases("iris") == {PRODUCTION: 1}  # the canary alias went with it
    [alert] = [a for a in alerts(store, "iris") if a.source == "canary"]
    assert alert.level == "ALERT" and alert.source == "canary" and alert.reasons == [ended.reason]
    runtime = client.app.state.runtime
    deadline = time.monotonic() + 30
    while "canary" in runtime.models()["iris"].aliases:  # the store follower's next sync
        assert time.monotonic() < deadline
        time.sleep(0.05)
    after = {client.post("/v2/models/iris/infer", json=_body(X, j, missing=True)).json()["model_version"]
             for j in range(30)}
    assert after == {"1"}  # all traffic back to production, which takes missing values


# -- two worker processes on one port ------------------------------------------------------------
@pytest.mark.server
def test_two_workers_route_alike_and_record_one_abort(tmp_path: Path, iris, iris_onnx, tolerant_onnx):
    X, _, _ = iris
    store = Store(tmp_path / "home")
    add_version(store, "iris", tolerant_onnx)
    add_version(store, "iris", iris_onnx, alias=None)
    start_canary(store, "iris", 2, 40.0, guards={"min_requests": 10})
    deadline = time.monotonic() + 60
    proc = start_server(store, workers=2, stderr=subprocess.DEVNULL)
    try:
        url = f"{store.server().url}/v2/models/iris/infer"
        client = httpx.Client(headers={"Connection": "close"})  # a connection per request: both workers answer
        # a client id is answered by one version on every worker
        for user in ("ana", "ben", "chen", "dora"):
            versions = {client.post(url, json=_body(X, 0), headers={"X-Client-ID": user}).json()["model_version"]
                        for _ in range(6)}
            assert versions == {"2" if bucket("iris", user.encode()) < 40 else "1"}
        i = 0
        while current_canary(store, "iris") is not None:
            assert time.monotonic() < deadline + 30, "the guard did not abort the canary"
            client.post(url, json=_body(X, i % 150, missing=i % 2 == 1), headers={"X-Client-ID": f"u{i}"})
            i += 1
        time.sleep(1.5)  # both workers judge every 0.5 s: a second outcome would be recorded by now
        [ended] = canaries(store, "iris")
        assert ended.state == ABORTED
        assert [a.reasons for a in alerts(store, "iris") if a.source == "canary"] == [[ended.reason]]  # once
        assert {client.post(url, json=_body(X, 0, missing=True)).json()["model_version"] for _ in range(10)} == {"1"}
    finally:
        stop_server(proc)
