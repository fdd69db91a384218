"""store/retention.py: raw predictions age out in short steps, rollups stay, the file gives space back."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import numpy as np

from nbdeploy.store import retention
from nbdeploy.store.events import PredictionEvent
from nbdeploy.store.log import LogSettings, PredictionLog

DAY = 86_400.0


def event(key: str, ts: float, n: int = 1) -> PredictionEvent:
    return PredictionEvent(id=key, ts=ts, model="m", version=1, inputs={"x": np.full(n, 1.5)},
                           outputs={"label": np.zeros(n, np.int64)}, latency_ms=1.0, status=200, error=None)


def counts(path: Path) -> tuple[int, int, int, int]:
    """(prediction rows, feedback rows, requests and labelled in the rollups)."""
    with sqlite3.connect(path) as db:
        return (db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0],
                db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0],
                *db.execute("SELECT SUM(requests), SUM(labelled) FROM rollup").fetchone())


def test_rows_older_than_the_age_limit_go_with_their_feedback_and_the_rollups_stay(tmp_path: Path) -> None:
    now = time.time()
    log = PredictionLog(tmp_path, start=False, settings=LogSettings(max_age_days=30))
    log.write([event(f"old{i}", now - 40 * DAY) for i in range(5)] + [event(f"new{i}", now - DAY) for i in range(3)])
    log.feedback("m", [{"id": "old0", "label": 0}, {"id": "new0", "label": 1}])
    assert counts(log.path) == (8, 2, 8, 2)
    assert log.prune(now=now) is False
    assert counts(log.path) == (3, 1, 8, 2)  # the monitor's counts keep the pruned traffic and labels
    assert log.pruned == 5
    with sqlite3.connect(log.path) as db:
        assert db.execute("SELECT id FROM feedback").fetchall() == [("new0",)]
    log.close()


def test_the_row_limit_keeps_the_newest(tmp_path: Path) -> None:
    now = time.time()
    log = PredictionLog(tmp_path, start=False, settings=LogSettings(max_rows=100))
    log.write([event(f"k{i}", now, n=30) for i in range(10)])  # 300 rows
    log.prune(now=now)
    with sqlite3.connect(log.path) as db:
        ids = [r[0] for r in db.execute("SELECT id FROM predictions ORDER BY seq")]
    assert len(ids) == 100 and ids[-1] == "k9:29" and ids[0] == "k6:20"
    log.close()


def test_pruning_is_done_in_short_steps(tmp_path: Path) -> None:
    now = time.time()
    log = PredictionLog(tmp_path, start=False, settings=LogSettings(max_rows=1_000))
    log.write([event(f"k{i}", now, n=1_000) for i in range(8)])
    db = log.file.writer
    assert db is not None
    steps = []
    while n := retention.prune_step(db, now=now, max_age_s=0, max_rows=1_000, max_bytes=0, batch=2_000):
        steps.append(n)
    assert steps == [2_000, 2_000, 2_000, 1_000]  # never more than one batch per transaction
    log.close()


def test_the_byte_limit_and_space_going_back_to_the_file_system(tmp_path: Path, monkeypatch) -> None:
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


def test_the_writer_thread_prunes_on_its_own(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, settings=LogSettings(max_rows=10), interval=0.01)
    log.write([event(f"k{i}", time.time()) for i in range(50)])
    log.put(event("last", time.time()))
    deadline = time.monotonic() + 10
    while counts(log.path)[0] > 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counts(log.path)[0] == 10 and counts(log.path)[2] == 51
    log.close()


def test_old_rollups_go_after_their_own_limit(tmp_path: Path) -> None:
    now = time.time()
    log = PredictionLog(tmp_path, start=False, settings=LogSettings(max_age_days=0, rollup_max_age_days=365))
    log.write([event("ancient", now - 400 * DAY), event("recent", now - 100 * DAY)])
    log.prune(now=now)
    assert counts(log.path) == (2, 0, 1, 0)  # the raw rows have no age limit here; the old bucket went
    log.close()
