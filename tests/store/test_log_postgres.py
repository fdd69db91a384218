"""The prediction log on PostgreSQL: several server processes on one database, durable feedback, keys
logged once, labels of any JSON type, and a database that is locked or not a store yet."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest

from nbdeploy.store import Store, postgres
from nbdeploy.store.events import PredictionEvent
from nbdeploy.store.log import LogSettings, LogUnavailable, PredictionLog
from nbdeploy.store.reader import LogReader

NOW = time.time()  # the writer thread applies retention: rows of long ago would be pruned at once
REPO = Path(__file__).resolve().parents[2]


def event(key: str, *, label: object = 1, ts: float = NOW, latency: float = 3.0, n: int = 1) -> PredictionEvent:
    labels = np.array([label] * n, dtype=object if isinstance(label, str) else None)
    return PredictionEvent(id=key, ts=ts, model="m", version=1, inputs={"x": np.full(n, 1.5)},
                           outputs={"label": labels}, latency_ms=latency, status=200, error=None)


@pytest.fixture
def url(postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A PostgreSQL store (its tables created), with this machine's files in ``tmp_path``."""
    monkeypatch.setenv("NBDEPLOY_LOCAL_DIR", str(tmp_path / "local"))
    Store(postgres_url)
    return postgres_url


def fetch(url: str, sql: str) -> list[tuple]:
    """Rows read on a connection of its own (no pool, no session): what any other process sees."""
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def totals(url: str) -> tuple[int, int, int, int]:
    """(prediction rows, requests, rows and latencies counted in the rollups)."""
    (n,), = fetch(url, "SELECT COUNT(*) FROM predictions")
    (requests, rows), = fetch(url, "SELECT SUM(requests), SUM(rows) FROM rollup")
    latencies = sum(int(np.frombuffer(h, np.int64).sum()) for (h,) in fetch(url, "SELECT latency FROM rollup"))
    return n, int(requests), int(rows), latencies


WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from nbdeploy.store.events import PredictionEvent
    from nbdeploy.store.log import PredictionLog

    url, prefix, count, ts = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    log = PredictionLog(url, interval=0.005)
    assert log.health()["ok"], log.health()
    for i in range(count):
        log.put(PredictionEvent(id=f"{prefix}{i}", ts=ts, model="m", version=1,
                                inputs={"x": np.array([1.5])}, outputs={"label": np.array([1])}, latency_ms=3.0,
                                status=200, error=None))
        if i % 50 == 0:
            time.sleep(0.002)  # many small commits: they interleave with the other process's
    log.close()
    print(log.dropped, log.duplicates)
""")


def test_two_server_processes_log_to_one_database_and_the_rollups_add_up(url: str) -> None:
    count = 1_500
    other = subprocess.Popen([sys.executable, "-c", WRITER, url, "other-", str(count), repr(NOW)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    log = PredictionLog(url, interval=0.005)
    for i in range(count):
        log.put(event(f"here-{i}"))
        if i % 50 == 0:
            time.sleep(0.002)
    log.close()
    out, err = other.communicate(timeout=60)
    assert other.returncode == 0, err
    assert out.split() == ["0", "0"] and log.dropped == 0
    assert totals(url) == (2 * count,) * 4  # every request once, every rollup increment kept
    assert fetch(url, "SELECT COUNT(DISTINCT bucket) FROM rollup") == [(1,)]  # all in one bucket: upserts collided


def test_two_logs_of_one_process_write_and_label_at_once(url: str) -> None:
    logs = [PredictionLog(url, interval=0.005) for _ in range(2)]
    logged = threading.Barrier(2)
    accepted: list[int] = []

    def work(k: int) -> None:
        for i in range(300):
            logs[k].put(event(f"{k}-{i}"))
        logs[k].flush()
        logged.wait(10)
        result = logs[k].feedback("m", [{"id": f"{1 - k}-{i}", "label": 1} for i in range(0, 300, 3)])  # the other's
        accepted.append(result["accepted"])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in logs:
        log.close()
    assert totals(url) == (600, 600, 600, 600) and accepted == [100, 100]
    assert fetch(url, "SELECT COUNT(*) FROM feedback") == [(200,)]
    assert fetch(url, "SELECT SUM(labelled), SUM(correct) FROM rollup") == [(200, 200)]


def test_feedback_is_committed_before_it_returns(url: str) -> None:
    log = PredictionLog(url, interval=30)  # the writer would not commit on its own for 30 s
    log.put(event("p", label=0))
    assert log.feedback("m", {"id": "p", "label": 1})["accepted"] == 1  # it waits for its prediction's commit
    assert fetch(url, "SELECT id, updates FROM feedback") == [("p", 0)]
    assert fetch(url, "SELECT SUM(labelled), SUM(correct), SUM(err_n), SUM(sq_err) FROM rollup") == [(1, 0, 1, 1.0)]
    log.feedback("m", {"id": "p", "label": 0})
    assert fetch(url, "SELECT updates FROM feedback") == [(1,)]
    assert fetch(url, "SELECT SUM(labelled), SUM(correct) FROM rollup") == [(1, 1)]
    log.close()


def test_a_duplicate_prediction_id_is_logged_and_counted_once(url: str) -> None:
    log = PredictionLog(url, start=False)
    log.put(event("same", label=0))
    log.put(event("same", label=1))  # in one batch
    log.flush()
    log.put(event("same", label=2))  # in the next
    log.flush()
    assert (log.duplicates, log.dropped) == (2, 2)
    assert fetch(url, "SELECT id FROM predictions") == [("same",)]
    log.close()
    again = PredictionLog(url, start=False)  # another process's log: the key is the database's
    again.write([event("same"), event("new")])
    assert again.duplicates == 1 and [r[0] for r in fetch(url, "SELECT id FROM predictions ORDER BY seq")] == [
        "same", "new"]
    again.close()


def test_labels_of_any_type_round_trip(url: str) -> None:
    log = PredictionLog(url, start=False)
    predicted = {"int": 3, "str": "setosa", "float": 2.5, "bool": True}
    for key, label in predicted.items():
        log.put(event(key, label=label))
    log.flush()
    with LogReader(url) as reader:
        found = reader.predictions(list(predicted))
        assert {k: p.label for k, p in found.items()} == predicted
        assert {k: type(p.label) for k, p in found.items()} == {k: type(v) for k, v in predicted.items()}
        truth = {"int": 7, "str": "virginica", "float": -0.25, "bool": False}
        result = log.feedback("m", [{"id": k, "label": v} for k, v in truth.items()])
        assert result["accepted"] == 4
        labels = reader.labels(list(truth))
        assert labels == truth and {k: type(v) for k, v in labels.items()} == {k: type(v) for k, v in truth.items()}
        assert sorted(reader.labelled("m", 1, 10).label, key=str) == sorted(truth.values(), key=str)
    assert log.feedback("m", {"id": "bool", "label": False})["unchanged"] == 1  # the same label, read back
    log.close()


def _hold_log_lock(url: str, seconds: float, held: threading.Event) -> threading.Thread:
    """Another process's long write transaction on the log (its advisory lock)."""

    def hold() -> None:
        with psycopg.connect(url) as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (postgres.lock_key("log"),))
            held.set()
            time.sleep(seconds)

    thread = threading.Thread(target=hold)
    thread.start()
    return thread


def test_feedback_on_a_locked_log_answers_503_with_retry_after(url: str) -> None:
    log = PredictionLog(url, start=False, settings=LogSettings(feedback_timeout_s=0.5))
    log.write([event("k")])
    held = threading.Event()
    holder = _hold_log_lock(url, 2.5, held)
    held.wait(5)
    started = time.monotonic()
    with pytest.raises(LogUnavailable) as info:
        log.feedback("m", {"id": "k", "label": 1})
    assert time.monotonic() - started < 2.0
    assert info.value.status == 503 and info.value.retry_after == 1 and "busy" in info.value.message
    holder.join()
    assert log.feedback("m", {"id": "k", "label": 1})["accepted"] == 1  # sent again: recorded
    log.close()


def test_a_locked_log_is_waited_for_and_nothing_is_dropped(url: str) -> None:
    log = PredictionLog(url, interval=0.01)
    held = threading.Event()
    holder = _hold_log_lock(url, 1.5, held)
    held.wait(5)
    log.put(event("during-the-lock"))
    time.sleep(0.5)
    assert fetch(url, "SELECT id FROM predictions") == [] and log.dropped == 0
    holder.join()
    assert log.flush(10)
    assert fetch(url, "SELECT id FROM predictions") == [("during-the-lock",)] and log.health()["ok"]
    log.close()


def test_a_database_that_is_no_store_yet_runs_without_a_log_until_it_is(postgres_url: str, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from nbdeploy.store import writer

    monkeypatch.setenv("NBDEPLOY_LOCAL_DIR", str(tmp_path / "local"))
    monkeypatch.setattr(writer, "PRUNE_EVERY_S", 0.1)  # how often the writer tries again
    log = PredictionLog(postgres_url.replace("nbdeploy@", "nbdeploy:secret@"), interval=0.01)
    health = log.health()
    assert not health["ok"] and "no nbdeploy store" in health["error"] and "secret" not in health["error"]
    log.put(event("lost"))
    assert log.dropped == 1
    with pytest.raises(LogUnavailable):
        log.feedback("m", {"id": "lost", "label": 1})
    Store(postgres_url)
    deadline = time.monotonic() + 10
    while not log.health()["ok"] and time.monotonic() < deadline:
        time.sleep(0.05)
    log.put(event("kept"))
    assert log.flush() and fetch(postgres_url, "SELECT id FROM predictions") == [("kept",)]
    log.close()
    assert fetch(postgres_url, "SELECT SUM(dropped) FROM rollup") == [(1,)]  # the loss is in the rollups too
