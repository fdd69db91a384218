"""The SQL of one writer step: a :class:`~nbdeploy.store.batch.Batch`'s prediction rows, rollup
increments and input names, committed in one transaction (see :mod:`nbdeploy.store.log`).

The same SQL runs on a SQLite connection and on a PostgreSQL session (:mod:`nbdeploy.store.postgres`);
only the bulk insert of prediction rows differs (``COPY`` on PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import orjson

from nbdeploy.store import database

# The columns of the row already there are named by their table: a bare name is ambiguous on PostgreSQL.
_ROLLUP_UPSERT = """
INSERT INTO rollup (model, version, bucket, requests, rows, errors, server_errors, dropped, latency_sum, latency)
VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (model, version, bucket) DO UPDATE SET
requests = rollup.requests + excluded.requests, rows = rollup.rows + excluded.rows,
errors = rollup.errors + excluded.errors, server_errors = rollup.server_errors + excluded.server_errors,
dropped = rollup.dropped + excluded.dropped, latency_sum = rollup.latency_sum + excluded.latency_sum,
latency = excluded.latency"""
_FEATURE_UPSERT = """
INSERT INTO feature_rollup (model, version, bucket, feature, n, missing, out_of_range, unseen)
VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (model, version, bucket, feature) DO UPDATE SET
n = feature_rollup.n + excluded.n, missing = feature_rollup.missing + excluded.missing,
out_of_range = feature_rollup.out_of_range + excluded.out_of_range, unseen = feature_rollup.unseen + excluded.unseen"""
COLUMNS = ("id", "client_id", "ts", "model", "version", "inputs", "label", "proba", "outputs", "latency_ms", "status",
           "error")
_INSERT = f"INSERT OR IGNORE INTO predictions ({', '.join(COLUMNS)}) VALUES "
_ROW = "(" + ",".join("?" * len(COLUMNS)) + ")"
ROWS_PER_INSERT = 128  # one statement step per 128 rows: the GIL is released per step, not per row


@contextmanager
def transaction(db: Any) -> Iterator[Any]:
    """``BEGIN IMMEDIATE`` (take the write lock before reading what the writes depend on), then commit or roll back."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def insert_rows(db: Any, rows: list[tuple[Any, ...]]) -> int:
    """Insert prediction rows (:data:`COLUMNS`) in the caller's transaction; returns how many were new
    (a key already logged is not logged again).

    On PostgreSQL one ``COPY`` (a round trip per batch, not per row). On SQLite multi-row inserts:
    ``executemany`` would release and retake the GIL around every row, and each release hands it to
    the server's event loop and back (a convoy that costs the server).
    """
    if not rows:
        return 0
    if database.is_postgres(db):
        return db.copy_ignoring("predictions", COLUMNS, rows)
    new = 0
    for start in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[start:start + ROWS_PER_INSERT]
        # an INSERT's rowcount counts the rows it inserted: those OR IGNORE skipped are not in it
        new += db.execute(_INSERT + ",".join([_ROW] * len(chunk)), [v for row in chunk for v in row]).rowcount
    return new


def save(db: Any, rows: list[tuple[Any, ...]], roll: dict[tuple[str, int, int], list[Any]],
         feats: dict[tuple[str, int, int, str], list[int]], names: list[tuple[tuple[str, int], list[str]]]) -> int:
    """Rows, rollups (``roll`` as :func:`~nbdeploy.store.batch.new_roll` lists), feature counts and
    first-seen input names, in one transaction. Returns how many rows were already logged."""
    with transaction(db):
        duplicates = len(rows) - insert_rows(db, rows)
        for (model, version, bucket), r in roll.items():
            old = db.execute("SELECT latency FROM rollup WHERE model = ? AND version = ? AND bucket = ?",
                             (model, version, bucket)).fetchone()
            hist = r[6] + (np.frombuffer(old[0], np.int64) if old and old[0] else 0)
            db.execute(_ROLLUP_UPSERT, (model, version, bucket, *r[:6], hist.astype(np.int64).tobytes()))
        db.executemany(_FEATURE_UPSERT, [(*k, *v) for k, v in feats.items()])
        db.executemany("INSERT OR REPLACE INTO columns (model, version, names) VALUES (?,?,?)",
                       [(m, v, orjson.dumps(n).decode()) for (m, v), n in names])
    return duplicates
