"""store/retention.py: raw predictions age out in short steps, rollups stay, the file gives space back."""

from __future__ import annotations

import os
import time

import numpy as np
from logtables import log_db

from nbdeploy.store import retention
from nbdeploy.store.events import PredictionEvent
from nbdeploy.store.log import LogSettings, PredictionLog

DAY = 86_400.0


def event(key: str, ts: float, n: int = 1) -> PredictionEvent:
    return PredictionEvent(id=key, ts=ts, model="m", version=1, inputs={"x": np.full(n, 1.5)},
                           outputs={"label": np.zeros(n, np.int64)}, latency_ms=1.0, status=200, error=None)


def counts(log: PredictionLog) -> tuple[int, int, int, int]:
    """(prediction rows, feedback rows, requests and labelled in the rollups)."""
    db = log_db(log.location.text)
    try:
        return (db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0],
                db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0],
                *(int(n) for n in db.execute("SELECT SUM(requests), SUM(labelled) FROM rollup").fetchone()))
    finally:
        db.close()


def query(log: PredictionLog, sql: str) -> list[tuple]:
    db = log_db(log.location.text)
    try:
        return [tuple(r) for r in db.execute(sql).fetchall()]
    finally:
        db.close()


def test_rows_older_than_the_age_limit_go_with_their_feedback_and_the_rollups_stay(log_home: str) -> None:
    now = time.time()
    log = PredictionLog(log_home, start=False, settings=LogSettings(max_age_days=30))
    log.write([event(f"old{i}", now - 40 * DAY) for i in range(5)] + [event(f"new{i}", now - DAY) for i in range(3)])
    log.feedback("m", [{"id": "old0", "label": 0}, {"id": "new0", "label": 1}])
    assert counts(log) == (8, 2, 8, 2)
    assert log.prune(now=now) is False
    assert counts(log) == (3, 1, 8, 2)  # the monitor's counts keep the pruned traffic and labels
    assert log.pruned == 5
    assert query(log, "SELECT id FROM feedback") == [("new0",)]
    log.close()


def test_the_row_limit_keeps_the_newest(log_home: str) -> None:
    now = time.time()
    log = PredictionLog(log_home, start=False, settings=LogSettings(max_rows=100))
    log.write([event(f"k{i}", now, n=30) for i in range(10)])  # 300 rows
    log.prune(now=now)
    ids = [r[0] for r in query(log, "SELECT id FROM predictions ORDER BY seq")]
    assert len(ids) == 100 and ids[-1] == "k9:29" and ids[0] == "k6:20"
    log.close()


def test_pruning_is_done_in_short_steps(log_home: str) -> None:
    now = time.time()
    log = PredictionLog(log_home, start=False, settings=LogSettings(max_rows=1_000))
    log.write([event(f"k{i}", now, n=1_000) for i in range(8)])
    db = log.file.writer
    assert db is not None
    steps = []
    while n := retention.prune_step(db, now=now, max_age_s=0, max_rows=1_000, max_bytes=0, batch=2_000):
        steps.append(n)
    assert steps == [2_000, 2_000, 2_000, 1_000]  # never more than one batch per transaction
    log.close()


def test_the_byte_limit_and_space_going_back_to_the_file_system(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(retention, "SLACK_PAGES", 16)  # a small file: keep few free pages
    now = time.time()
    log = PredictionLog(tmp_path, start=False)
    db = log.file.writer
    assert db is not None and db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental, from creation
    log.write([event(f"k{i}", now, n=2_000) for i in range(40)])  # 80,000 rows
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    full = os.path.getsize(log.path)
    log.settings = LogSettings(max_bytes=full // 4)
    while log.prune(now=now):
        pass
    for _ in range(50):  # reclaim gives pages back a step at a time
        retention.reclaim(db)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert retention.used_bytes(db) <= full // 4
    assert os.path.getsize(log.path) < full / 2, (os.path.getsize(log.path), full)
    log.close()


def test_the_writer_thread_prunes_on_its_own(log_home: str) -> None:
    log = PredictionLog(log_home, settings=LogSettings(max_rows=10), interval=0.01)
    log.write([event(f"k{i}", time.time()) for i in range(50)])
    log.put(event("last", time.time()))
    assert log.flush()  # committed: the thread may have pruned to 10 rows before it came
    deadline = time.monotonic() + 10
    while counts(log)[0] > 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counts(log)[0] == 10 and counts(log)[2] == 51
    log.close()


def test_old_rollups_go_after_their_own_limit(log_home: str) -> None:
    now = time.time()
    log = PredictionLog(log_home, start=False, settings=LogSettings(max_age_days=0, rollup_max_age_days=365))
    log.write([event("ancient", now - 400 * DAY), event("recent", now - 100 * DAY)])
    log.prune(now=now)
    assert counts(log) == (2, 0, 1, 0)  # the raw rows have no age limit here; the old bucket went
    log.close()


def test_the_byte_limit_on_postgresql_keeps_the_rows_that_fit(postgres_url: str) -> None:
    """A table's size on disk does not shrink as rows go: the limit keeps as many rows as fit, and no fewer."""
    from nbdeploy.store import Store

    Store(postgres_url)
    now = time.time()
    log = PredictionLog(postgres_url, start=False)
    log.write([event(f"k{i}", now, n=2_000) for i in range(5)])  # 10,000 rows
    db = log.file.writer
    full = retention.used_bytes(db)
    assert full > 10_000 * 20
    max_bytes = 3_000 * (retention.ROW_OVERHEAD + 40)
    keep = retention.rows_within(db, max_bytes)
    assert 1_000 < keep < 10_000
    log.settings = LogSettings(max_bytes=max_bytes)
    log.prune(now=now)
    assert counts(log)[0] == keep and retention.used_bytes(db) >= full  # still its size on disk
    assert log.prune(now=now) is False and counts(log)[0] == keep  # and it stays: nothing more goes
    assert retention.reclaim(db) == 0  # the autovacuum's work
    log.close()


def test_the_row_limit_counts_rows_where_seq_has_gaps(log_home: str) -> None:
    now = time.time()
    log = PredictionLog(log_home, start=False, settings=LogSettings(max_rows=50))
    log.write([event(f"k{i}", now) for i in range(40)])
    log.write([event(f"k{i}", now) for i in range(40)])  # duplicates: a PostgreSQL sequence skips their numbers
    log.write([event(f"n{i}", now) for i in range(40)])
    log.prune(now=now)
    assert counts(log)[0] == 50
    log.close()
