"""The runtime: batching, overload, swaps that keep in-flight requests on their version, failed loads."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from serve_helpers import add_version, iris_inputs

from nbdeploy.errors import NbdeployError
from nbdeploy.serve.batcher import Batcher, Overloaded
from nbdeploy.serve.config import ServeConfig
from nbdeploy.serve.metrics import Histogram
from nbdeploy.serve.runtime import Runtime


class Recorder:
    """A fake model: doubles its input, records the rows of each call, fails on negative values."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[int] = []
        self.delay = delay

    def __call__(self, feeds):
        x = feeds["x"]
        self.calls.append(len(x))
        time.sleep(self.delay)
        if (x < 0).any():
            raise NbdeployError("negative", 422)
        return {"y": x * 2}


async def _submit_all(batcher: Batcher, values: list[list[float]]):
    feeds = [{"x": np.array(v, dtype=np.float32).reshape(-1, 1)} for v in values]
    return await asyncio.gather(*(batcher.submit(f, len(f["x"])) for f in feeds), return_exceptions=True)


def test_batching_runs_requests_together_and_splits_by_rows():
    run = Recorder(delay=0.02)
    sizes = Histogram((1, 2, 4, 8, 16))
    batcher = Batcher(run, "m:1", batching=True, max_rows=64, sizes=sizes)
    values = [[1.0], [2.0, 3.0], [4.0], [5.0, 6.0, 7.0]] * 3
    results = asyncio.run(_submit_all(batcher, values))
    for v, r in zip(values, results, strict=True):
        np.testing.assert_array_equal(r["y"].ravel(), np.array(v) * 2)
    assert sum(run.calls) == 21 and len(run.calls) < len(values)
    assert sizes.count == len(run.calls)
    batcher.close()
    batcher.join(2)


def test_without_batching_each_request_is_its_own_call():
    run = Recorder()
    batcher = Batcher(run, "m:1", batching=False)
    asyncio.run(_submit_all(batcher, [[1.0], [2.0, 3.0], [4.0]]))
    assert sorted(run.calls) == [1, 1, 2]
    batcher.close()


def test_a_bad_request_does_not_fail_its_batch():
    run = Recorder(delay=0.01)
    batcher = Batcher(run, "m:1", batching=True)
    results = asyncio.run(_submit_all(batcher, [[1.0], [-1.0], [2.0], [3.0]]))
    assert isinstance(results[1], NbdeployError) and results[1].status == 422
    assert [r["y"].item() for i, r in enumerate(results) if i != 1] == [2.0, 4.0, 6.0]
    batcher.close()


def test_rows_beyond_the_queue_bound_are_refused_with_retry_after():
    run = Recorder(delay=0.05)
    batcher = Batcher(run, "m:1", batching=False, max_queue_rows=4)
    results = asyncio.run(_submit_all(batcher, [[1.0, 2.0]] * 4))
    refused = [r for r in results if isinstance(r, Overloaded)]
    assert len(refused) == 2 and refused[0].status == 503 and refused[0].retry_after == 1
    assert batcher.pending_rows == 0
    batcher.close()


def test_close_finishes_queued_work_and_late_requests_still_answer():
    run = Recorder(delay=0.02)
    batcher = Batcher(run, "m:1", batching=False)

    async def scenario():
        first = asyncio.ensure_future(_submit_all(batcher, [[1.0], [2.0], [3.0]]))
        await asyncio.sleep(0.005)
        batcher.close()
        late = await batcher.submit({"x": np.array([[5.0]], np.float32)}, 1)
        return await first, late

    done, late = asyncio.run(scenario())
    assert [r["y"].item() for r in done] == [2.0, 4.0, 6.0] and late["y"].item() == 10.0
    batcher.join(2)
    assert not batcher._thread.is_alive()


def _external_data_model() -> bytes:
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    weight.data_location = TensorProto.EXTERNAL
    del weight.float_data[:]
    weight.external_data.add(key="location", value="/etc/passwd")
    graph = helper.make_graph([helper.make_node("Add", ["input", "w"], ["label"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 1])],
                              [helper.make_tensor_value_info("label", TensorProto.FLOAT, [None, 1])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_external_data_and_hash_mismatch_are_refused_and_reported(store, iris_onnx):
    meta = {"task": "regression", "signature": {"frame": False, "inputs": [
        {"name": "input", "onnx_name": "input", "datatype": "FP32", "shape": [-1, 1]}]}}
    add_version(store, "ext", (_external_data_model(), meta))
    runtime = Runtime(store)
    runtime.sync(True)
    assert "external data" in runtime.failed[("ext", 1)]
    assert store.served()[("ext", 1)][0] == "failed"
    with pytest.raises(NbdeployError) as info:
        runtime.resolve("ext")
    assert info.value.status == 503 and "failed to load" in info.value.message

    version = add_version(store, "iris", iris_onnx)  # production moves to v2, whose file is then damaged
    (store.home / "models" / "iris" / str(version) / "model.onnx").write_bytes(b"not the registered bytes")
    runtime.sync()
    assert runtime.resolve("iris").version == 1  # the old version keeps serving
    assert "sha256" in runtime.failed[("iris", version)]
    assert store.served()[("iris", version)] == ("failed", runtime.failed[("iris", version)])
    runtime.close()


def test_swap_keeps_in_flight_requests_on_their_version(client, store, iris_onnx, iris):
    X, _, _ = iris
    runtime = client.app.state.runtime
    old = runtime.resolve("iris")
    add_version(store, "iris", iris_onnx)
    runtime.sync()
    new = runtime.resolve("iris")
    assert (old.version, new.version) == (1, 2) and old.batcher._closed and not new.batcher._closed
    feeds = {s.onnx_name: np.zeros((1, 1), np.float32) for s in old.signature.inputs}
    assert asyncio.run(old.predict(feeds, 1))["label"].shape == (1,)  # still answers on version 1
    resp = client.post("/v2/models/iris/infer", json={"inputs": iris_inputs(X.head(1))})
    assert resp.json()["model_version"] == "2"
    assert client.get("/v2/models/iris/versions/1").status_code == 200  # loaded again, on demand
    assert runtime.resolve("iris", "1") is not old


def test_auto_batching_is_off_for_fast_models_and_configurable(store):
    runtime = Runtime(store, ServeConfig(batching="auto"))
    runtime.sync(True)
    model = runtime.resolve("iris")
    assert model.single_row_ms < ServeConfig().batch_threshold_ms and not model.batching
    runtime.close()
    runtime = Runtime(store, ServeConfig(batching="on"))
    runtime.sync(True)
    assert runtime.resolve("iris").batching
    runtime.close()


def test_batched_inference_through_the_app_under_concurrency(make_client, iris):
    X, _, model = iris
    client = make_client(config=ServeConfig(batching="on", max_batch_wait_ms=5))
    expected = model.predict(X).tolist()
    results: dict[int, list] = {}

    def call(i: int) -> None:
        rows = X.iloc[i * 10:(i + 1) * 10]
        resp = client.post("/v2/models/iris/infer", json={"inputs": iris_inputs(rows), "outputs": [{"name": "label"}]})
        results[i] = resp.json()["outputs"][0]["data"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(15)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [v for i in range(15) for v in results[i]] == expected
    text = client.get("/metrics").text
    assert 'nbdeploy_batch_rows_count{model="iris",version="1"}' in text


def test_check_self_contained_parses_models():
    from nbdeploy.serve.probe import check_self_contained

    with pytest.raises(NbdeployError, match="cannot be parsed"):
        check_self_contained(b"\x08\x07location garbage")
    check_self_contained(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])).SerializeToString())


def test_overload_answers_503_with_retry_after_and_health_stays_up(make_client, iris):
    X, _, _ = iris
    client = make_client(config=ServeConfig(max_queue_rows=2, batching="off"))
    model = client.app.state.runtime.resolve("iris")
    slow_run = model.batcher.run

    def slow(feeds):
        time.sleep(0.1)
        return slow_run(feeds)

    model.batcher.run = slow
    model.batcher.inline_rows = 0  # as the probe at load decides for a slow model: off the event loop
    statuses: list[tuple[int, str | None]] = []

    def call() -> None:
        resp = client.post("/v2/models/iris/infer", json={"inputs": iris_inputs(X.head(1))})
        statuses.append((resp.status_code, resp.headers.get("retry-after")))

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    started = time.perf_counter()
    assert client.get("/v2/health/live").status_code == 200
    assert time.perf_counter() - started < 0.1
    for t in threads:
        t.join()
    assert (503, "1") in statuses and (200, None) in statuses
    assert {s for s, _ in statuses} == {200, 503}
