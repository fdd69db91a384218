"""Large bodies are decoded off the event loop: the decoders are pure functions of the body's bytes."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson
from serve_helpers import iris_inputs

from nbdeploy.serve.codecs import offload
from nbdeploy.serve.codecs.mlflow import decode_scoring_request
from nbdeploy.serve.codecs.v2 import decode_infer_request
from nbdeploy.signature import from_sample


def _v2_body(rows: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    inputs = [{"name": n, "datatype": "FP32", "shape": [rows, 1], "data": rng.uniform(0, 8, rows).round(2).tolist()}
              for n in ("a", "b")]
    return orjson.dumps({"id": str(seed), "inputs": inputs})


def test_decoding_runs_on_the_loop_for_small_bodies_and_in_a_thread_for_large_ones():
    small, large = _v2_body(10, 0), _v2_body(20_000, 1)
    assert len(small) <= offload.OFF_LOOP_BYTES < len(large)
    seen: dict[str, int] = {}

    def decode(body: bytes, what: str):
        seen[what] = threading.get_ident()
        return decode_infer_request(body)

    async def main() -> tuple[object, object, int]:
        a = await offload.decode_off_loop(len(small), decode, small, "small")
        b = await offload.decode_off_loop(len(large), decode, large, "large")
        return a, b, threading.get_ident()

    a, b, loop_thread = asyncio.run(main())
    assert seen["small"] == loop_thread and seen["large"] != loop_thread
    assert a.id == "0" and b.inputs[0].data.shape == (20_000, 1)


def test_the_loop_keeps_answering_while_large_bodies_decode():
    bodies = [_v2_body(60_000, seed) for seed in range(4)]
    ticks: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        async def ticker() -> None:
            while not done.is_set():
                ticks.append(loop.time())
                await asyncio.sleep(0)

        task = asyncio.ensure_future(ticker())
        await asyncio.gather(*(offload.decode_off_loop(len(b), decode_infer_request, b) for b in bodies))
        done.set()
        await task

    asyncio.run(main())
    assert len(ticks) > 4  # inline, the ticker would have run once before and once after all four


def test_decoders_give_the_same_answer_from_many_threads_at_once(iris):
    X, _, _ = iris
    signature = from_sample(X)
    v2_bodies = [_v2_body(500 + i, i) for i in range(16)]
    expected = [decode_infer_request(b) for b in v2_bodies]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(decode_infer_request, v2_bodies))
    for want, have in zip(expected, got, strict=True):
        assert want.id == have.id
        for t, u in zip(want.inputs, have.inputs, strict=True):
            np.testing.assert_array_equal(t.data, u.data)
    mlflow_bodies = [orjson.dumps({"dataframe_records": X.iloc[i:i + 30].to_dict(orient="records")})
                     for i in range(0, 120, 10)]
    expected_m = [decode_scoring_request(b, False, signature) for b in mlflow_bodies]
    with ThreadPoolExecutor(8) as pool:
        got_m = list(pool.map(lambda b: decode_scoring_request(b, False, signature), mlflow_bodies))
    for want, have in zip(expected_m, got_m, strict=True):
        for name in want.tensors:
            np.testing.assert_array_equal(want.tensors[name], have.tensors[name])


def test_the_inference_route_decodes_large_bodies_off_the_loop(client, iris, monkeypatch):
    import nbdeploy.serve.inference as inference

    X, _, _ = iris
    threads: list[int] = []

    def recording(*args, **kwargs):
        threads.append(threading.get_ident())
        return decode_infer_request(*args, **kwargs)

    monkeypatch.setattr(inference, "decode_infer_request", recording)
    small = {"inputs": iris_inputs(X.head(1))}
    large = {"inputs": iris_inputs(X.sample(20_000, replace=True, random_state=0))}
    assert len(orjson.dumps(large)) > offload.OFF_LOOP_BYTES
    for body in (small, large):
        assert client.post("/v2/models/iris/infer", json=body).status_code == 200
    assert threads[0] != threads[1]
