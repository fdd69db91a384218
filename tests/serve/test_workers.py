"""``nbdeploy serve --workers 2``: one port, two processes, a swap that reaches both, logging from both, drain."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from logtables import log_db
from serve_helpers import add_version, iris_inputs, start_server, stop_server

from nbdeploy.serve import process
from nbdeploy.serve.config import ServeConfig
from nbdeploy.serve.server import config_env
from nbdeploy.store import PRODUCTION, Store

pytestmark = pytest.mark.server


def _worker_pids(parent: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


@pytest.fixture
def two_workers(store_home: str, iris_onnx):
    """A server of two worker processes over a store on SQLite, then on PostgreSQL."""
    store = Store(store_home)
    add_version(store, "iris", iris_onnx)
    proc = start_server(store, workers=2)
    yield store, proc
    stop_server(proc)


def test_config_round_trips_through_the_environment():
    config = ServeConfig(workers=3, batching="on", max_batch_wait_ms=2.5)
    assert ServeConfig.from_env(config_env(config)) == config
    assert ServeConfig.from_env({"NBDEPLOY_WORKERS": "4"}).workers == 4
    with pytest.raises(Exception, match="workers"):
        ServeConfig(workers=0)


def test_the_store_aggregates_worker_reports(tmp_path: Path, iris_onnx):
    store = Store(tmp_path / "home")
    add_version(store, "iris", iris_onnx)
    store.set_server(1, "127.0.0.1", 1)
    store.add_worker(11)
    store.add_worker(12)
    store.report_served(5, {("iris", 1): ("ready", None)}, worker=11)
    assert store.server().applied == -1 and store.served() == {}  # worker 12 has not caught up
    store.report_served(5, {("iris", 1): ("ready", None), ("iris", 2): ("failed", "bad")}, worker=12)
    assert store.server().applied == 5
    assert store.served() == {("iris", 1): ("ready", None), ("iris", 2): ("failed", "bad")}
    store.report_served(6, {}, worker=11)
    assert store.server().applied == 5
    store.remove_worker(12)
    assert store.server().applied == 6 and store.workers() == {11: 6}
    store.clear_server(1)
    assert store.workers() == {} and store.server() is None


def test_two_workers_answer_and_both_log(two_workers, iris):
    X, _, _ = iris
    store, proc = two_workers
    pids = set(store.workers())
    assert len(pids) == 2 and pids == _worker_pids(proc.pid)
    record = store.server()
    assert record.pid == proc.pid
    body = {"inputs": iris_inputs(X.head(1))}
    n = 400

    def hammer(out: list[int]) -> None:
        with httpx.Client(base_url=record.url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            for _ in range(n // 8):
                out.append(c.post("/v2/models/iris/infer", json=body).status_code)

    statuses: list[int] = []
    threads = [threading.Thread(target=hammer, args=(statuses,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * n
    proc.send_signal(signal.SIGTERM)  # drain: both writers commit what they queued before exiting
    assert proc.wait(timeout=20) == 0
    db = log_db(store.location)
    assert db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == n  # no event lost to a lock
    assert db.execute("SELECT SUM(requests) FROM rollup").fetchone()[0] == n
    db.close()


def test_swap_under_load_reaches_every_worker(two_workers, iris, iris_onnx):
    X, _, _ = iris
    store, _ = two_workers
    record = store.server()
    body = {"inputs": iris_inputs(X.head(2))}
    stop = threading.Event()
    seen: list[tuple[int, str]] = []
    sent: list[tuple[float, str]] = []  # (when the request started, the version that answered)

    def load() -> None:  # a new connection per request, so requests spread over both workers
        while not stop.is_set():
            started = time.monotonic()
            resp = httpx.post(f"{record.url}/v2/models/iris/infer", json=body, timeout=10)
            seen.append((resp.status_code, resp.json().get("model_version", resp.text)))
            sent.append((started, seen[-1][1]))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(2):
        time.sleep(0.3)
        version = store.register("iris", *iris_onnx)
        store.set_alias("iris", PRODUCTION, version)
        process.wait_applied(store, store.generation(), timeout=30)
        assert store.served()[("iris", version)] == ("ready", None)
        assert all(applied >= store.generation() for applied in store.workers().values())
        applied_at = time.monotonic()
        time.sleep(0.3)
        later = {v for t, v in list(sent) if t > applied_at}
        assert later == {str(version)}  # once every worker applied, none answers an older version
    stop.set()
    for t in threads:
        t.join()
    assert seen and all(status == 200 for status, _ in seen), [s for s in seen if s[0] != 200][:3]
    assert {v for _, v in seen} == {"1", "2", "3"}
    # every worker answers the new version: many fresh connections, each worker seen by its pid
    answered = {httpx.post(f"{record.url}/v2/models/iris/infer", json=body).json()["model_version"]
                for _ in range(60)}
    assert answered == {"3"}


def test_sigterm_drains_every_worker(two_workers, iris):
    X, _, _ = iris
    store, proc = two_workers
    pids = set(store.workers())
    record = store.server()
    stop = threading.Event()
    statuses: list[int] = []

    def load() -> None:
        with httpx.Client(base_url=record.url, timeout=10) as client:
            while not stop.is_set():
                try:
                    statuses.append(client.post("/v2/models/iris/infer",
                                                json={"inputs": iris_inputs(X.head(1))}).status_code)
                except httpx.TransportError:
                    break  # the server stopped taking connections

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    stop.set()
    for t in threads:
        t.join()
    assert statuses and set(statuses) == {200}
    assert not any(process.pid_alive(p) for p in pids)
    assert store.server() is None and store.workers() == {}
    assert b"Traceback" not in proc.stderr.read()


def test_a_dead_worker_is_replaced(two_workers):
    store, _ = two_workers
    first = set(store.workers())
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = set(store.workers())
        if victim not in now and len(now) == 2 and store.server().applied >= store.generation():
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"no replacement worker: {store.workers()}")
    assert httpx.get(f"{store.server().url}/v2/health/ready").status_code == 200
