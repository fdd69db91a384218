"""The prediction and feedback log: ``log.db`` beside the registry, SQLite in WAL mode.

A separate database file, so heavy logging never contends with the registry's writes.

Predictions are queued by :meth:`PredictionLog.put` (never blocks, never raises: when the
bounded queue is full the event is counted in ``dropped``) and committed by one writer thread
every ``interval`` seconds (or sooner when ``batch_size`` events wait), in one transaction
together with the rollups the monitor reads:

* ``rollup``: per model, version and ``BUCKET_SECONDS`` bucket of prediction time: requests,
  rows, errors, a latency histogram (``LATENCY_EDGES_MS``), dropped events, and the labelled
  count, correct count and absolute/squared errors that feedback adds to its prediction's bucket;
* ``feature_rollup``: per feature, values seen, missing, outside the reference profile's
  [min, max] and categories the profile never saw (needs ``profiles``).

Ids: a request answered with ``n`` rows logs ``n`` predictions, ``<request id>`` when ``n == 1``
and ``<request id>:<row>`` otherwise (:func:`row_ids`); feedback addresses those. Ids are the
client's to keep unique: a prediction whose id is already logged is not logged again
(``duplicates``). A failed request logs one row with its status and error and no label.

Feedback (:meth:`PredictionLog.feedback`) is synchronous: it commits on a ``synchronous=FULL``
connection before it returns, so an acknowledged label survives a crash. It is idempotent by id;
a different label for a labelled id replaces it (last write wins, counted in ``updated``).
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from nbdeploy.store import labels
from nbdeploy.store.batch import BUCKET_SECONDS, LATENCY_EDGES_MS, N_LATENCY, Batch, Rules, compile_rules, row_ids
from nbdeploy.store.events import PredictionEvent
from nbdeploy.store.labels import label_key

log = logging.getLogger("nbdeploy.log")

LOG_FILE = "log.db"
Profiles = Callable[[str, int], "dict | None"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, ts REAL NOT NULL, model TEXT NOT NULL,
    version INTEGER NOT NULL, inputs BLOB, label, proba BLOB, outputs BLOB, latency_ms REAL NOT NULL,
    status INTEGER NOT NULL, error TEXT);
CREATE INDEX IF NOT EXISTS predictions_model ON predictions (model, version);
CREATE TABLE IF NOT EXISTS columns (
    model TEXT NOT NULL, version INTEGER NOT NULL, names TEXT NOT NULL, PRIMARY KEY (model, version));
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY, model TEXT NOT NULL, version INTEGER NOT NULL, label, ts REAL NOT NULL,
    pred_seq INTEGER NOT NULL, pred_ts REAL NOT NULL, updates INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS feedback_model ON feedback (model, version, pred_seq);
CREATE TABLE IF NOT EXISTS rollup (
    model TEXT NOT NULL, version INTEGER NOT NULL, bucket INTEGER NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0, rows INTEGER NOT NULL DEFAULT 0, errors INTEGER NOT NULL DEFAULT 0,
    server_errors INTEGER NOT NULL DEFAULT 0, dropped INTEGER NOT NULL DEFAULT 0,
    latency_sum REAL NOT NULL DEFAULT 0, latency BLOB,
    labelled INTEGER NOT NULL DEFAULT 0, correct INTEGER NOT NULL DEFAULT 0, err_n INTEGER NOT NULL DEFAULT 0,
    abs_err REAL NOT NULL DEFAULT 0, sq_err REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (model, version, bucket)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS feature_rollup (
    model TEXT NOT NULL, version INTEGER NOT NULL, bucket INTEGER NOT NULL, feature TEXT NOT NULL,
    n INTEGER NOT NULL, missing INTEGER NOT NULL, out_of_range INTEGER NOT NULL, unseen INTEGER NOT NULL,
    PRIMARY KEY (model, version, bucket, feature)) WITHOUT ROWID;
"""
_ROLLUP_UPSERT = """
INSERT INTO rollup (model, version, bucket, requests, rows, errors, server_errors, dropped, latency_sum, latency)
VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (model, version, bucket) DO UPDATE SET
requests = requests + excluded.requests, rows = rows + excluded.rows, errors = errors + excluded.errors,
server_errors = server_errors + excluded.server_errors, dropped = dropped + excluded.dropped,
latency_sum = latency_sum + excluded.latency_sum, latency = excluded.latency"""
_FEATURE_UPSERT = """
INSERT INTO feature_rollup (model, version, bucket, feature, n, missing, out_of_range, unseen)
VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (model, version, bucket, feature) DO UPDATE SET
n = n + excluded.n, missing = missing + excluded.missing,
out_of_range = out_of_range + excluded.out_of_range, unseen = unseen + excluded.unseen"""
_INSERT = ("INSERT OR IGNORE INTO predictions (id, ts, model, version, inputs, label, proba, outputs, latency_ms,"
           " status, error) VALUES ")
ROWS_PER_INSERT = 128  # one statement step per 128 rows: the GIL is released per step, not per row


def _insert(db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Multi-row inserts: ``executemany`` would release and retake the GIL around every row, and
    each release hands it to the server's event loop and back (a convoy that costs the server)."""
    for start in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[start:start + ROWS_PER_INSERT]
        db.execute(_INSERT + ",".join(["(?,?,?,?,?,?,?,?,?,?,?)"] * len(chunk)), [v for row in chunk for v in row])


def connect(path: str | Path, synchronous: str = "NORMAL") -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


class _Barrier(threading.Event):
    """Queued by :meth:`PredictionLog.flush`; set once everything queued before it is committed."""


class PredictionLog:
    """The log of one store home. Also the server's ``EventSink``: ``put`` and ``dropped``.

    ``profiles(model, version)`` returns a version's reference profile (or None), for the
    per-feature out-of-range/unseen counts; see :func:`registry_profiles`. With ``start=False``
    there is no writer thread: :meth:`flush` writes the queue in the calling thread.
    """

    def __init__(self, home: str | Path, *, profiles: Profiles | None = None, max_queue: int = 50_000,
                 batch_size: int = 5_000, interval: float = 0.05, start: bool = True) -> None:
        self.path = Path(home) / LOG_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.profiles = profiles
        self.max_queue, self.batch_size, self.interval = max_queue, batch_size, interval
        self.dropped = 0  # events lost since start (queue full or a failed write); rollups keep them too
        self.duplicates = 0  # predictions not logged because their id already was
        self._queue: collections.deque[Any] = collections.deque()
        self._wake, self._stop, self._lock = threading.Event(), threading.Event(), threading.Lock()
        self._write_lock, self._fb_lock = threading.Lock(), threading.Lock()
        self._unsaved_drops: collections.Counter[tuple[str, int, int]] = collections.Counter()
        self._rules: dict[tuple[str, int], Rules] = {}
        self._names: dict[tuple[str, int], list[str]] = {}
        self._names_saved: set[tuple[str, int]] = set()
        self._readers = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._writer = connect(self.path)
        self._writer.executescript(SCHEMA)
        self._fb = connect(self.path, "FULL")  # acknowledged labels must survive a crash
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name="nbdeploy-log-writer", daemon=True)
            self._thread.start()

    # -- the sink ------------------------------------------------------------------------
    def put(self, event: PredictionEvent) -> None:
        """Queue one event for the writer. Never blocks, never raises: a full queue counts a drop."""
        try:
            if len(self._queue) >= self.max_queue or self._stop.is_set():
                self._drop([event])
                return
            self._queue.append(event)
            if len(self._queue) >= self.batch_size and not self._wake.is_set():
                self._wake.set()
        except Exception:  # the request path must never see a logging failure
            self._drop([event])

    def _drop(self, events: Iterable[Any]) -> None:
        with self._lock:
            for e in events:
                self.dropped += 1
                try:
                    self._unsaved_drops[(str(e.model), int(e.version), int(e.ts // BUCKET_SECONDS))] += 1
                except Exception:
                    self._unsaved_drops[("?", 0, int(time.time() // BUCKET_SECONDS))] += 1

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is committed; False on timeout or a dead writer."""
        if self._thread is None:
            self._drain()
            return True
        if not self._thread.is_alive():
            return False
        barrier = _Barrier()
        self._queue.append(barrier)
        self._wake.set()
        return barrier.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued, stop the writer and close the connections."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self._drain()
        with self._fb_lock, self._write_lock:
            for conn in (self._fb, self._writer, *self._reader_conns):
                conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            self._drain()
        self._drain()

    def _drain(self) -> None:
        items = [self._queue.popleft() for _ in range(len(self._queue))]
        events = [e for e in items if not isinstance(e, _Barrier)]
        for start in range(0, max(len(events), 1), self.batch_size):
            chunk = events[start:start + self.batch_size]
            try:
                self.write(chunk)
            except Exception:
                log.exception("cannot write %d prediction events to %s", len(chunk), self.path)
                self._drop(chunk)
        for barrier in items:
            if isinstance(barrier, _Barrier):
                barrier.set()

    # -- writing -------------------------------------------------------------------------
    def write(self, events: list[PredictionEvent]) -> None:
        """Commit events and their rollups in one transaction (the writer's step; also for bulk loads)."""
        with self._lock:
            drops, self._unsaved_drops = self._unsaved_drops, collections.Counter()
        batch = Batch(self._rules_for, self._names)
        for event in events:
            try:
                batch.add(event)
            except Exception:
                log.exception("cannot encode a prediction event; counted as dropped")
                self._drop([event])
        for event in batch.finish():
            log.error("cannot encode the prediction event %r; counted as dropped", getattr(event, "id", None))
            self._drop([event])
        for key, n in drops.items():
            batch.drops(key, n)
        rows, roll = batch.rows, batch.roll
        if not rows and not roll:
            return
        time.sleep(0)  # let the server's event loop take the GIL between encoding and writing
        names = [(k, n) for k, n in self._names.items() if k not in self._names_saved]
        with self._write_lock:
            db = self._writer
            try:
                db.execute("BEGIN IMMEDIATE")
                before = db.total_changes
                _insert(db, rows)
                self.duplicates += len(rows) - (db.total_changes - before)
                for (model, version, bucket), r in roll.items():
                    old = db.execute("SELECT latency FROM rollup WHERE model = ? AND version = ? AND bucket = ?",
                                     (model, version, bucket)).fetchone()
                    hist = r[6] + (np.frombuffer(old[0], np.int64) if old and old[0] else 0)
                    db.execute(_ROLLUP_UPSERT, (model, version, bucket, *r[:6], hist.astype(np.int64).tobytes()))
                db.executemany(_FEATURE_UPSERT, [(*k, *v) for k, v in batch.feats.items()])
                db.executemany("INSERT OR REPLACE INTO columns (model, version, names) VALUES (?,?,?)",
                               [(m, v, orjson.dumps(n).decode()) for (m, v), n in names])
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                with self._lock:
                    self._unsaved_drops.update(drops)
                raise
        self._names_saved.update(k for k, _ in names)

    def _rules_for(self, model: str, version: int) -> Rules:
        key = (model, version)
        if key not in self._rules:
            try:
                self._rules[key] = compile_rules(self.profiles(model, version) if self.profiles else None)
            except Exception:
                log.exception("cannot read the reference profile of %s version %s", model, version)
                self._rules[key] = {}
        return self._rules[key]

    # -- feedback ------------------------------------------------------------------------
    def feedback(self, model: str, items: Any) -> dict[str, Any]:
        """Record ground truth for logged predictions of ``model``; committed durably before it returns.

        ``items`` is one ``{"id": ..., "label": ...}`` or a list of them. Returns ``accepted``,
        ``updated`` (a different label replaced an earlier one: last write wins), ``unchanged``
        and ``errors`` (``index``, ``id``, ``status`` 400/404, ``error``); :func:`feedback_status`
        gives the HTTP status. Raises ``InvalidInput`` when the payload is not feedback at all.
        """
        parsed, errors = labels.parse(items)
        ids = list(dict.fromkeys(i for _, i, _ in parsed))
        found = labels.lookup(self._reader(), ids)
        if len(found) < len(ids):  # a label may overtake its prediction, still in the writer's queue
            self.flush()
            found.update(labels.lookup(self._reader(), [i for i in ids if i not in found]))
        if len(found) < len(ids):  # ... or in another server worker's queue: wait one of its commits
            time.sleep(2 * self.interval)
            found.update(labels.lookup(self._reader(), [i for i in ids if i not in found]))
        with self._fb_lock:
            return labels.record(self._fb, model, parsed, errors, found, BUCKET_SECONDS)

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._readers, "conn", None)
        if conn is None:
            conn = self._readers.conn = connect(self.path)
            self._reader_conns.append(conn)
        return conn


def registry_profiles(store: Any) -> Profiles:
    """Reference profiles from the registry (``model.json`` key ``"profile"``), for ``profiles=``."""

    def profile(model: str, version: int) -> dict | None:
        name = model.split("@", 1)[0]  # "<model>@shadow" is the shadow traffic of <model>
        return store.version(name, version).meta.get("profile")

    return profile


def open_sink(store: Any) -> PredictionLog:
    """The server's event sink for ``store``: its prediction log, with out-of-range checks from the registry."""
    return PredictionLog(store.home, profiles=registry_profiles(store))


feedback_status = labels.status_of

__all__ = ["BUCKET_SECONDS", "LATENCY_EDGES_MS", "LOG_FILE", "N_LATENCY", "PredictionLog", "connect",
           "feedback_status", "label_key", "open_sink", "registry_profiles", "row_ids"]
