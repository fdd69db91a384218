"""store/logfile.py and the log's failures: an old schema, a corrupt file, a full disk, a locked database."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from nbdeploy.store import logfile
from nbdeploy.store.events import PredictionEvent
from nbdeploy.store.log import LogSettings, LogUnavailable, PredictionLog
from nbdeploy.store.reader import LogReader

OLD_SCHEMA = """
CREATE TABLE predictions (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, ts REAL NOT NULL, model TEXT NOT NULL,
    version INTEGER NOT NULL, inputs BLOB, label, proba BLOB, outputs BLOB, latency_ms REAL NOT NULL,
    status INTEGER NOT NULL, error TEXT);
CREATE INDEX predictions_model ON predictions (model, version);
CREATE TABLE columns (model TEXT NOT NULL, version INTEGER NOT NULL, names TEXT NOT NULL, PRIMARY KEY (model, version));
CREATE TABLE feedback (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, version INTEGER NOT NULL, label, ts REAL NOT NULL,
    pred_seq INTEGER NOT NULL, pred_ts REAL NOT NULL, updates INTEGER NOT NULL DEFAULT 0);
CREATE INDEX feedback_model ON feedback (model, version, pred_seq);
CREATE TABLE rollup (
    model TEXT NOT NULL, version INTEGER NOT NULL, bucket INTEGER NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0, rows INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0,
    server_errors INTEGER NOT NULL DEFAULT 0, dropped INTEGER NOT NULL DEFAULT 0,
    latency_sum REAL NOT NULL DEFAULT 0, latency BLOB,
    labelled INTEGER NOT NULL DEFAULT 0, correct INTEGER NOT NULL DEFAULT 0, err_n INTEGER NOT NULL DEFAULT 0,
    abs_err REAL NOT NULL DEFAULT 0, sq_err REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (model, version, bucket)) WITHOUT ROWID;
CREATE TABLE feature_rollup (
    model TEXT NOT NULL, version INTEGER NOT NULL, bucket INTEGER NOT NULL, feature TEXT NOT NULL,
    n INTEGER NOT NULL, missing INTEGER NOT NULL, out_of_range INTEGER NOT NULL, unseen INTEGER NOT NULL,
    PRIMARY KEY (model, version, bucket, feature)) WITHOUT ROWID;
"""


def event(key: str, client_id: str | None = None) -> PredictionEvent:
    return PredictionEvent(id=key, ts=time.time(), model="m", version=1, inputs={"x": np.array([1.5])},
                           outputs={"label": np.array([1])}, latency_ms=1.0, status=200, error=None,
                           client_id=client_id)


def rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT id, client_id FROM predictions ORDER BY seq").fetchall()


def test_a_log_with_the_old_schema_opens_and_is_migrated_in_place(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "log.db") as db:  # as the server wrote it before server-made keys
        db.executescript(OLD_SCHEMA)
        db.execute("INSERT INTO predictions (id, ts, model, version, inputs, label, latency_ms, status) "
                   "VALUES ('client-7', ?, 'm', 1, '[1.5]', 1, 1.0, 200)", (time.time(),))
    log = PredictionLog(tmp_path, start=False)
    assert log.health()["ok"]
    log.put(event("server-key", client_id="client-8"))
    log.flush()
    assert rows(log.path) == [("client-7", None), ("server-key", "client-8")]
    result = log.feedback("m", [{"id": "client-7", "label": 1}, {"id": "client-8", "label": 0}])
    assert result["accepted"] == 2, result  # old rows by their old id, new ones by key or client id
    with sqlite3.connect(log.path) as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # a small old file is converted too
    log.close()
    PredictionLog(tmp_path, start=False).close()  # and opens again


@pytest.mark.parametrize("content", [b"this is not a database" * 100, b"SQLite format 3\x00" + b"\xff" * 8192])
def test_a_corrupt_log_is_set_aside_and_a_fresh_one_started(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "log.db").write_bytes(content)
    (tmp_path / "log.db-wal").write_bytes(b"junk")  # belongs to the bad file: it must not be replayed
    log = PredictionLog(tmp_path, start=False)
    health = log.health()
    assert health["ok"] and health["recoveries"] == 1 and health["recovered_from"].startswith("log.db.corrupt-")
    aside = tmp_path / health["recovered_from"]
    assert aside.read_bytes() == content
    log.put(event("k"))
    log.flush()
    assert rows(log.path) == [("k", None)]
    with LogReader(tmp_path) as reader:
        (note,) = reader.incidents(0)
    assert "was unreadable" in note[1] and aside.name in note[1]
    log.close()


def test_the_monitor_notes_a_recovered_log(tmp_path: Path) -> None:
    from nbdeploy.monitor.live import Monitor

    (tmp_path / "log.db").write_bytes(b"garbage" * 1000)
    PredictionLog(tmp_path, start=False).close()
    notes = Monitor(tmp_path, "m").snapshot()["notes"]
    assert any("set aside as log.db.corrupt-" in n for n in notes), notes


def test_without_a_usable_file_the_server_runs_without_a_log(tmp_path: Path) -> None:
    (tmp_path / "log.db").mkdir()  # not a file at all: nothing to set aside, nothing to open
    log = PredictionLog(tmp_path)
    health = log.health()
    assert not health["ok"] and "cannot open" in health["error"]
    log.put(event("k"))
    assert log.dropped == 1  # counted, never raised
    with pytest.raises(LogUnavailable) as info:
        log.feedback("m", {"id": "k", "label": 1})
    assert info.value.status == 503
    log.close()


def test_a_full_disk_counts_drops_and_warns_once_a_minute(tmp_path: Path, caplog) -> None:
    log = PredictionLog(tmp_path, interval=0.01)
    log.put(event("first"))
    assert log.flush()
    with log.file.write_lock:
        assert log.file.writer is not None
        pages = log.file.writer.execute("PRAGMA page_count").fetchone()[0]
        log.file.writer.execute(f"PRAGMA max_page_count={pages}")  # no room to grow: SQLITE_FULL
    caplog.set_level(logging.WARNING, logger="nbdeploy.log")
    big = PredictionEvent(id="k", ts=time.time(), model="m", version=1, inputs={"x": np.ones(2_000)},
                          outputs={"label": np.zeros(2_000, np.int64)}, latency_ms=1.0, status=200, error=None)
    for i in range(20):  # many failing writes, one every writer step
        big.id = f"k{i}"
        log.put(PredictionEvent(**{f: getattr(big, f) for f in big.__slots__}))
        time.sleep(0.02)
    assert log.flush()
    assert log.dropped == 20 and log.dropped_rows == 40_000
    assert not log.health()["ok"] and "full" in log.health()["error"]
    warnings = [r for r in caplog.records if r.name == "nbdeploy.log"]
    assert len(warnings) == 1 and not warnings[0].exc_info, [r.getMessage() for r in warnings]
    log.close()


def test_feedback_on_a_full_disk_is_a_503_with_retry_after(tmp_path: Path, monkeypatch) -> None:
    from nbdeploy.store import labels

    log = PredictionLog(tmp_path, start=False)
    log.put(event("k"))
    log.flush()
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = logfile.SQLITE_FULL

    def record(*args: object) -> None:
        raise full

    monkeypatch.setattr(labels, "record", record)
    with pytest.raises(LogUnavailable) as info:
        log.feedback("m", {"id": "k", "label": 0})
    assert info.value.status == 503 and info.value.retry_after and "full" in info.value.message
    log.close()


def _hold_lock(path: Path, seconds: float, held: threading.Event) -> threading.Thread:
    """Another process's long write transaction (as ``sqlite3 log.db`` in a shell would hold it)."""

    def hold() -> None:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(seconds)
        db.execute("COMMIT")
        db.close()

    thread = threading.Thread(target=hold)
    thread.start()
    return thread


def test_a_locked_log_is_retried_before_anything_is_dropped(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(logfile, "WRITE_WAIT_S", 0.2)  # one attempt's wait: the retries do the rest
    log = PredictionLog(tmp_path, interval=0.01, settings=LogSettings(retry_seconds=30))
    held = threading.Event()
    holder = _hold_lock(log.path, 3.0, held)
    held.wait(5)
    log.put(event("during-the-lock"))
    time.sleep(1.0)
    assert rows(log.path) == [] and log.dropped == 0  # still waiting, not dropped
    holder.join()
    assert log.flush(10)
    assert rows(log.path) == [("during-the-lock", None)] and log.dropped == 0
    assert log.health()["ok"]
    log.close()


def test_a_locked_log_gives_up_after_its_retry_time_and_counts(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(logfile, "WRITE_WAIT_S", 0.1)
    log = PredictionLog(tmp_path, interval=0.01, settings=LogSettings(retry_seconds=0.5))
    held = threading.Event()
    holder = _hold_lock(log.path, 2.5, held)
    held.wait(5)
    log.put(event("lost"))
    assert log.flush(10)
    assert log.dropped == 1 and "locked" in log.health()["error"]
    holder.join()
    log.put(event("after"))
    assert log.flush(10)
    assert rows(log.path) == [("after", None)] and log.health()["ok"]
    log.close()


def test_feedback_on_a_locked_log_answers_503_with_retry_after_quickly(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, settings=LogSettings(feedback_timeout_s=0.5))
    log.put(event("k"))
    assert log.flush()
    held = threading.Event()
    holder = _hold_lock(log.path, 3.0, held)
    held.wait(5)
    started = time.monotonic()
    with pytest.raises(LogUnavailable) as info:
        log.feedback("m", {"id": "k", "label": 1})
    assert time.monotonic() - started < 2.0  # not the 30 s (then a bare 500) it used to take
    assert info.value.status == 503 and info.value.retry_after == 1 and "busy" in info.value.message
    holder.join()
    assert log.feedback("m", {"id": "k", "label": 1})["accepted"] == 1  # sent again: recorded
    log.close()


def test_a_log_locked_when_the_server_starts_is_opened_once_the_lock_goes(tmp_path: Path, monkeypatch) -> None:
    from nbdeploy.store import writer

    PredictionLog(tmp_path, start=False).close()
    monkeypatch.setattr(logfile, "OPEN_WAIT_S", 0.2)
    monkeypatch.setattr(writer, "PRUNE_EVERY_S", 0.2)  # how often the writer tries the file again
    held = threading.Event()
    holder = _hold_lock(tmp_path / "log.db", 1.5, held)
    held.wait(5)
    log = PredictionLog(tmp_path, interval=0.01)  # the server starts while another process writes
    assert not log.health()["ok"] and "locked" in log.health()["error"]
    log.put(event("while-locked"))
    assert log.dropped == 1  # counted, not lost unseen
    holder.join()
    deadline = time.monotonic() + 10
    while not log.health()["ok"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.health()["ok"]
    log.put(event("after"))
    assert log.flush()
    assert rows(log.path) == [("after", None)]
    log.close()
