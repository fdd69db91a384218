"""Any registered version answers by number: loaded on its first request, a bounded few kept (LRU)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_helpers import add_version, iris_inputs, scrape, start_server, stop_server

from nbdeploy.errors import NotFound
from nbdeploy.serve import process
from nbdeploy.serve.config import ServeConfig
from nbdeploy.serve.runtime import Runtime
from nbdeploy.store import PRODUCTION, Store

BOUND = 2


@pytest.fixture
def server(tmp_path: Path, iris_onnx) -> Iterator[tuple[Store, httpx.Client]]:
    """Versions 1-3 registered with no alias (3 refused by the gate), 4 ``staging``, 5 ``production``;
    at most two versions loaded on demand."""
    store = Store(tmp_path / "home")
    for _ in range(2):
        add_version(store, "iris", iris_onnx, alias=None)
    store.register("iris", *iris_onnx, status="refused")
    add_version(store, "iris", iris_onnx, alias="staging")
    add_version(store, "iris", iris_onnx)
    proc = start_server(store, NBDEPLOY_MAX_LOADED_VERSIONS=str(BOUND))
    try:
        with httpx.Client(base_url=store.server().url, timeout=30) as http:
            yield store, http
    finally:
        stop_server(proc)


def _infer(http: httpx.Client, X, version: int | str) -> httpx.Response:
    return http.post(f"/v2/models/iris/versions/{version}/infer", json={"inputs": iris_inputs(X)})


def _loaded(store: Store, http: httpx.Client) -> tuple[set[int], set[int]]:
    """The versions loaded, as the store's ``served`` records and as ``/metrics`` say."""
    served = {v for (n, v), (state, _) in store.served().items() if n == "iris" and state == "ready"}
    metrics = {int(labels["version"]) for (name, labels_t), value in scrape(http.get("/metrics").text).items()
               if name == "nbdeploy_model_loaded" and value == 1 and (labels := dict(labels_t))["model"] == "iris"}
    return served, metrics


@pytest.mark.server
def test_a_version_no_alias_points_at_answers_on_every_route(server, iris):
    X, _, _ = iris
    store, http = server
    assert _loaded(store, http) == ({4, 5}, {4, 5})  # aliases only, until a request names another version
    production = http.post("/v2/models/iris/infer", json={"inputs": iris_inputs(X.head(20))}).json()

    answer = _infer(http, X.head(20), 1)
    assert answer.status_code == 200 and answer.json()["model_version"] == "1"
    assert answer.json()["outputs"] == production["outputs"]  # the same model, registered twice
    meta = http.get("/v2/models/iris/versions/2")
    assert meta.status_code == 200
    assert meta.json()["versions"] == ["2"] and meta.json()["parameters"]["model_version"] == "2"
    assert http.get("/v2/models/iris/versions/2/ready").json() == {"name": "iris", "version": "2", "ready": True}
    mlflow = http.post("/models/iris/versions/1/invocations", json={"dataframe_records": X.head(3).to_dict("records")})
    assert mlflow.status_code == 200 and mlflow.headers["x-request-id"]

    assert _loaded(store, http) == ({1, 2, 4, 5}, {1, 2, 4, 5})
    assert http.get("/v2/models/iris").json()["versions"] == ["1", "2", "4", "5"]
    index = {(e["version"], e["state"]) for e in http.post("/v2/repository/index").json()}
    assert index == {("1", "READY"), ("2", "READY"), ("4", "READY"), ("5", "READY")}


@pytest.mark.server
def test_beyond_the_bound_the_least_recently_used_is_unloaded_and_aliases_stay(server, iris):
    X, _, _ = iris
    store, http = server
    for version in (1, 2, 1):  # 1 is now the most recently used
        assert _infer(http, X.head(2), version).status_code == 200
    assert _infer(http, X.head(2), 3).json()["model_version"] == "3"  # a refused candidate, by number
    assert _loaded(store, http) == ({1, 3, 4, 5}, {1, 3, 4, 5})  # 2 was the least recently used
    for version in (5, 4, "production", "staging"):  # aliased versions neither count nor get evicted
        assert _infer(http, X.head(2), version).status_code == 200
    assert _infer(http, X.head(2), 2).json()["model_version"] == "2"  # loads again
    assert _loaded(store, http) == ({2, 3, 4, 5}, {2, 3, 4, 5})


@pytest.mark.server
def test_an_unknown_version_is_404_naming_the_versions_there_are(server, iris):
    X, _, _ = iris
    store, http = server
    answer = _infer(http, X.head(1), 9)
    assert answer.status_code == 404
    assert "no version 9; versions: 1, 2, 3, 4, 5; aliases: production -> 5, staging -> 4" in answer.json()["error"]
    ready = http.get("/v2/models/iris/versions/9/ready")
    assert ready.status_code == 404 and ready.json()["ready"] is False
    assert http.get("/v2/models/iris/versions/9").status_code == 404
    assert http.get("/v2/models/nope/versions/1").status_code == 404
    assert _loaded(store, http) == ({4, 5}, {4, 5})


@pytest.mark.server
def test_a_production_swap_keeps_versions_loaded_on_demand_answering(server, iris):
    X, _, _ = iris
    store, http = server
    assert _infer(http, X.head(2), 1).status_code == 200
    assert _infer(http, X.head(2), 2).status_code == 200
    store.set_alias("iris", PRODUCTION, 2)  # production moves onto a version loaded on demand
    process.wait_applied(store, store.generation())
    assert http.post("/v2/models/iris/infer", json={"inputs": iris_inputs(X.head(2))}).json()["model_version"] == "2"
    assert _infer(http, X.head(2), 1).json()["model_version"] == "1"
    assert _loaded(store, http) == ({1, 2, 4}, {1, 2, 4})  # 5 lost its alias; 2 no longer counts as on demand
    for version in (3, 5):  # two more on demand: with 1 that is one over the bound
        assert _infer(http, X.head(2), version).status_code == 200
    assert _loaded(store, http) == ({2, 3, 4, 5}, {2, 3, 4, 5})


@pytest.mark.server
def test_a_version_whose_file_was_damaged_is_503_with_the_reason(server, iris):
    X, _, _ = iris
    store, http = server
    (store.home / "models" / "iris" / "1" / "model.onnx").write_bytes(b"not the registered bytes")
    for _ in range(2):  # the failure is kept: the second request is refused at once, for the same reason
        answer = _infer(http, X.head(1), 1)
        assert answer.status_code == 503 and "failed to load" in answer.json()["error"]
        assert "sha256" in answer.json()["error"]
    assert store.served()[("iris", 1)][0] == "failed"
    assert _infer(http, X.head(1), 5).status_code == 200


# -- the runtime in-process: what a server process cannot show from outside -------------------------

@pytest.fixture
def store(tmp_path: Path, iris_onnx) -> Store:
    store = Store(tmp_path / "home")
    add_version(store, "iris", iris_onnx, alias=None)
    add_version(store, "iris", iris_onnx)
    return store


def test_concurrent_first_requests_load_a_version_once(store):
    runtime = Runtime(store)
    runtime.sync(True)

    async def many() -> list:
        return await asyncio.gather(*(runtime.acquire("iris", "1") for _ in range(8)))

    models = asyncio.run(many())
    assert all(m is models[0] for m in models) and models[0].version == 1
    assert runtime.loaded_on_demand() == [("iris", 1)]
    runtime.close()


def test_the_event_loop_keeps_running_while_a_version_loads(store):
    runtime = Runtime(store)
    runtime.sync(True)

    async def load_and_count() -> int:
        loading = asyncio.ensure_future(runtime.acquire("iris", "1"))
        turns = 0
        while not loading.done():  # a load on the loop would finish within the first turn
            turns += 1
            await asyncio.sleep(0)
        assert loading.result().version == 1
        return turns

    assert asyncio.run(load_and_count()) > 10
    runtime.close()


def test_an_alias_moving_onto_a_version_loaded_on_demand_takes_it_as_it_is(store):
    runtime = Runtime(store)
    runtime.sync(True)
    first = asyncio.run(runtime.acquire("iris", "1"))
    store.set_alias("iris", PRODUCTION, 1)
    runtime.sync()
    assert runtime.resolve("iris") is first and not first.batcher._closed  # not loaded twice
    assert runtime.loaded_on_demand() == []
    feeds = {s.onnx_name: np.zeros((1, 1), np.float32) for s in first.signature.inputs}
    assert asyncio.run(first.predict(feeds, 1))["label"].shape == (1,)
    runtime.close()


def test_a_bound_of_zero_serves_aliased_versions_only(store):
    runtime = Runtime(store, ServeConfig(max_loaded_versions=0))
    runtime.sync(True)
    with pytest.raises(NotFound, match="on demand is off"):
        asyncio.run(runtime.acquire("iris", "1"))
    assert asyncio.run(runtime.acquire("iris", "2")).version == 2
    assert ServeConfig.from_env({"NBDEPLOY_MAX_LOADED_VERSIONS": "7"}).max_loaded_versions == 7
    with pytest.raises(Exception, match="max_loaded_versions"):
        ServeConfig(max_loaded_versions=-1)
    runtime.close()


def test_a_stopped_model_loads_nothing_on_demand(store):
    runtime = Runtime(store)
    runtime.sync(True)
    asyncio.run(runtime.acquire("iris", "1"))
    store.set_serving("iris", False)
    runtime.sync()
    assert runtime.loaded() == [] and runtime.loaded_on_demand() == []
    with pytest.raises(NotFound, match="not served"):
        asyncio.run(runtime.acquire("iris", "1"))
    with pytest.raises(NotFound, match="not served"):
        runtime.resolve("iris", "2")
    runtime.close()
