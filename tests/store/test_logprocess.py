"""store/logprocess.py: the prediction log written by a process of its own, as the thread writes it."""

from __future__ import annotations

import math
import os
import signal
import time
from typing import Any

import numpy as np
import pytest
from logtables import log_db

from nbdeploy.store import eventcodec
from nbdeploy.store.events import PredictionEvent
from nbdeploy.store.log import PredictionLog

NOW = float(int(time.time()))  # recent: retention (30 days by default) keeps it


def event(i: int, *, n: int = 1, status: int = 200, model: str = "m", ts: float | None = None) -> PredictionEvent:
    inputs = {"a": np.full((n, 1), 0.5 + i, np.float32), "colour": np.array([["red"]] * n, dtype=object)}
    if status != 200:
        inputs = {"a": np.array([["abc"]], dtype=object)}
    outputs = {} if status != 200 else {
        "label": np.arange(n) % 2, "probabilities": np.tile(np.array([[0.25, 0.75]], np.float32), (n, 1))}
    return PredictionEvent(id=f"key-{i}", ts=NOW + i if ts is None else ts, model=model, version=1,
                           inputs=inputs, outputs=outputs, latency_ms=1.0 + i, status=status,
                           error=None if status == 200 else "input 'a': 'abc' is not a number", client_id=f"c{i}")


def events() -> list[PredictionEvent]:
    """One-row, many-row and refused requests (one refused before it had any array: an unreadable body), and
    a shadow version's answer."""
    unreadable = PredictionEvent(id="key-5", ts=NOW + 5, model="m", version=1, inputs={}, outputs={},
                                 latency_ms=0.1, status=400, error="request body is not valid JSON")
    return [event(0), event(1, n=3), event(2, status=400), event(3, model="m@shadow"), event(4, n=250), unreadable]


def table(home: str, sql: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in log_db(home).execute(sql).fetchall()]


PREDICTIONS = ("SELECT id, client_id, ts, model, version, inputs, label, proba, outputs, latency_ms, status, error "
               "FROM predictions ORDER BY id")
ROLLUP = ("SELECT model, version, bucket, requests, rows, errors, server_errors, dropped, latency FROM rollup "
          "ORDER BY 1, 3")


@pytest.fixture
def process_log(log_home: str):
    log = PredictionLog(log_home, process=True)
    yield log
    log.close()


def test_the_writer_process_logs_exactly_what_the_writer_thread_logs(log_home: str, tmp_path, process_log) -> None:
    from nbdeploy.store import Store

    other = str(tmp_path / "thread-store")
    Store(other)
    by_thread = PredictionLog(other, start=False)
    by_thread.write(events())
    by_thread.close()
    for e in events():
        process_log.put(e)
    assert process_log.flush()
    assert table(log_home, PREDICTIONS) == table(other, PREDICTIONS)
    assert table(log_home, ROLLUP) == table(other, ROLLUP)
    assert len(table(log_home, PREDICTIONS)) == 1 + 3 + 1 + 1 + 250 + 1
    assert process_log.health() == {"ok": True, "error": None, "recoveries": 0, "recovered_from": None,
                                    "dropped": 0, "queued_rows": 0}


def test_a_label_may_overtake_its_prediction(process_log: PredictionLog) -> None:
    """Feedback right after the answer: the prediction may still be on its way to the writer process."""
    for i in range(50):
        process_log.put(event(i))
    result = process_log.feedback("m", [{"id": f"key-{i}", "label": 1} for i in range(50)])
    assert result["accepted"] == 50 and result["errors"] == []


def test_close_commits_everything_sent_and_ends_the_process(log_home: str) -> None:
    log = PredictionLog(log_home, process=True)
    pid = log.writer.pid
    assert pid is not None
    assert log.wait_ready(10) and log.health()["ok"]  # what the server waits for before it says it is ready
    for i in range(3_000):
        log.put(event(i))
    log.close()
    assert table(log_home, "SELECT COUNT(*) FROM predictions") == [(3_000,)]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_writer_process_that_dies_is_started_again_and_what_it_lost_is_counted(process_log, log_home) -> None:
    process_log.put(event(0))
    assert process_log.flush()
    first = process_log.writer.pid
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while process_log.writer.pid in (None, first) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_log.writer.pid not in (None, first)
    for i in range(1, 20):
        process_log.put(event(i))
    assert process_log.flush()
    logged = table(log_home, "SELECT COUNT(*) FROM predictions")[0][0]
    assert logged + process_log.dropped == 20  # each request either logged or counted
    assert process_log.health()["ok"]


def test_beyond_the_server_side_bound_requests_are_dropped_and_counted(log_home: str) -> None:
    """A burst beyond ``max_queue`` waiting requests: those over it are answered but not logged, and every one
    of them is counted, in ``dropped`` and in its rollup bucket."""
    log = PredictionLog(log_home, process=True, max_queue=10)
    try:
        for i in range(1_000):  # far faster than the flusher's 10 ms
            log.put(event(i, ts=NOW))
        assert log.flush()
        logged = table(log_home, "SELECT COUNT(*) FROM predictions")[0][0]
        assert log.dropped > 0 and logged + log.dropped == 1_000 and log.dropped_rows == log.dropped
        assert table(log_home, "SELECT SUM(requests), SUM(dropped) FROM rollup WHERE model = 'm'") == [
            (logged, log.dropped)]
    finally:
        log.close()


def test_the_writer_process_ends_with_the_server(log_home: str) -> None:
    """A server killed outright: its writer process commits what it got and exits, no orphan left."""
    import subprocess
    import sys

    code = ("import sys, time, numpy as np\n"
            "from nbdeploy.store.log import PredictionLog\n"
            "from nbdeploy.store.events import PredictionEvent\n"
            "log = PredictionLog(sys.argv[1], process=True)\n"
            "for i in range(500):\n"
            "    log.put(PredictionEvent(id=f'k{i}', ts=time.time(), model='m', version=1,\n"
            "        inputs={'a': np.ones((1, 1))}, outputs={'label': np.zeros(1)}, latency_ms=1.0, status=200,\n"
            "        error=None))\n"
            "assert log.flush()\n"
            "print(log.writer.pid, flush=True)\n"
            "time.sleep(60)\n")
    server = subprocess.Popen([sys.executable, "-c", code, log_home], stdout=subprocess.PIPE, text=True)
    pid = int(server.stdout.readline())
    server.kill()
    server.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the writer process outlived its server")
    assert table(log_home, "SELECT COUNT(*) FROM predictions") == [(500,)]


def test_packing_does_no_work_per_row() -> None:
    """Ten thousand rows pack in about the time of one: no Python work per row (a loose bound that catches
    per-row work slipping in, not a benchmark)."""
    one, many = [event(0)], [event(0, n=10_000)]
    for e in (one, many):
        eventcodec.pack_many(e)  # warm
    started = time.perf_counter()
    for _ in range(200):
        eventcodec.pack_many(one)
    small = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(200):
        eventcodec.pack_many(many)
    assert time.perf_counter() - started < 20 * small + 0.05
    assert math.isfinite(many[0].ts)
