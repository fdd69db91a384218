"""Versions cheaper to run than a thread hand-off answer on the event loop; slow ones never do."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from nbdeploy.errors import NbdeployError
from nbdeploy.serve.batcher import Batcher
from nbdeploy.serve.config import ServeConfig
from nbdeploy.serve.inline import INLINE_MAX_ROWS, INLINE_STRIKES, inline_rows
from nbdeploy.serve.runtime import Runtime
from nbdeploy.signature import Signature


class Threads:
    """A fake model that records the thread of each call; spins ``delay`` seconds and fails on negative values."""

    def __init__(self, delay: float = 0.0) -> None:
        self.threads: list[int] = []
        self.delay = delay

    def __call__(self, feeds):
        self.threads.append(threading.get_ident())
        if self.delay:  # busy: the batcher counts the CPU time of its thread
            until = time.perf_counter() + self.delay
            while time.perf_counter() < until:
                pass
        if (feeds["x"] < 0).any():
            raise NbdeployError("negative", 422)
        return {"y": feeds["x"] * 2}


def _feeds(rows: int, value: float = 1.0) -> dict[str, np.ndarray]:
    return {"x": np.full((rows, 1), value, np.float32)}


def test_small_requests_run_on_the_event_loop_and_large_ones_on_the_worker():
    run = Threads()
    batcher = Batcher(run, "m:1", batching=False, inline_rows=4)

    async def scenario():
        small = await batcher.submit(_feeds(4), 4)
        large = await batcher.submit(_feeds(5), 5)
        return threading.get_ident(), small, large

    loop_thread, small, large = asyncio.run(scenario())
    assert run.threads == [loop_thread, batcher._thread.ident]
    assert small["y"].shape == (4, 1) and large["y"].shape == (5, 1)
    assert batcher.sizes.count == 2
    batcher.close()


def test_under_load_only_a_lone_request_runs_inline():
    run = Threads()
    batcher = Batcher(run, "m:1", batching=False, inline_rows=4)

    async def scenario():
        together = await asyncio.gather(*(batcher.submit(_feeds(1, v), 1) for v in (1.0, 2.0, 3.0)))
        await asyncio.sleep(0)
        alone = await batcher.submit(_feeds(1, 4.0), 1)
        return threading.get_ident(), [r["y"].item() for r in [*together, alone]]

    loop_thread, answers = asyncio.run(scenario())
    # the first of a turn's requests runs inline, the others go to the worker together; then one alone
    assert run.threads == [loop_thread, batcher._thread.ident, batcher._thread.ident, loop_thread]
    assert answers == [2.0, 4.0, 6.0, 8.0]
    batcher.close()


def test_an_inline_failure_is_the_request_s_own():
    batcher = Batcher(Threads(), "m:1", batching=False, inline_rows=1)

    async def scenario():
        return await asyncio.gather(batcher.submit(_feeds(1, -1.0), 1), batcher.submit(_feeds(1), 1),
                                    return_exceptions=True)

    bad, good = asyncio.run(scenario())
    assert isinstance(bad, NbdeployError) and bad.status == 422 and good["y"].item() == 2.0
    batcher.close()


def test_a_version_slower_than_promised_leaves_the_event_loop():
    run = Threads(delay=0.01)
    batcher = Batcher(run, "m:1", batching=False, inline_rows=1)

    async def scenario():
        for _ in range(4):
            await batcher.submit(_feeds(1), 1)
            await asyncio.sleep(0)  # the next turn of the loop: each request alone
        return threading.get_ident()

    loop_thread = asyncio.run(scenario())
    assert run.threads == [loop_thread] * INLINE_STRIKES + [batcher._thread.ident] and batcher.inline_rows == 0
    batcher.close()


def test_a_call_preempted_now_and_then_does_not_leave_the_event_loop():
    run = Threads()
    batcher = Batcher(run, "m:1", batching=False, inline_rows=1)

    async def scenario():
        for i in range(1000):
            run.delay = 0.002 if i % 200 == 0 else 0.0  # one slow call in 200
            await batcher.submit(_feeds(1), 1)
            await asyncio.sleep(0)
        return threading.get_ident()

    loop_thread = asyncio.run(scenario())
    assert set(run.threads) == {loop_thread} and batcher.inline_rows == 1
    batcher.close()


def test_the_probe_keeps_slow_models_off_the_event_loop():
    signature = Signature.from_dict({"frame": False, "inputs": [
        {"name": "input", "onnx_name": "x", "datatype": "FP32", "shape": [-1, 1]}]})
    assert inline_rows(signature, lambda feeds: feeds, 0.01) == INLINE_MAX_ROWS
    assert inline_rows(signature, Threads(delay=0.001), 0.01) == 0
    assert inline_rows(signature, lambda feeds: feeds, 1.0) == 0  # the median alone says no


def test_a_small_model_is_served_inline_unless_batching_is_asked_for(store):
    runtime = Runtime(store, ServeConfig(batching="auto"))
    runtime.sync(True)
    assert runtime.resolve("iris").batcher.inline_rows == INLINE_MAX_ROWS  # ≈ 10 µs a call
    runtime.close()
    runtime = Runtime(store, ServeConfig(batching="on"))
    runtime.sync(True)
    assert runtime.resolve("iris").batcher.inline_rows == 0
    runtime.close()
