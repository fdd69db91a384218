"""Retention of the prediction log: raw prediction rows age out, the rollups the monitor reads stay.

A logged prediction costs about 250 bytes; with no limit the log grows for as long as the server
serves. The writer thread of :class:`nbdeploy.store.log.PredictionLog` calls :func:`prune_step`
between its writes, so each step is one short transaction deleting at most ``batch`` of the
oldest rows: the writer, feedback and other workers never wait long for it.

What goes: prediction rows older than ``max_age_s``, beyond the newest ``max_rows``, or while
the file's used pages exceed ``max_bytes`` (oldest first), and with them their feedback rows (a
label without its prediction has nothing left to join: no inputs to retrain on, no probabilities
to score). What stays: ``rollup`` and ``feature_rollup``, which already hold every count the
monitor charts (requests, errors, latency, labelled, correct, errors of regressors, inputs out of
range) per 10-second bucket; they are pruned separately after ``rollup_max_age_s``. Freed pages
go back to the file system a little at a time (:func:`reclaim`) when the file was created with
incremental vacuum.

On PostgreSQL the same steps run on the store's database. Freed space is the autovacuum's to
reuse (:func:`reclaim` does nothing), and a table's size on disk does not shrink when rows go, so
``max_bytes`` cannot be checked against it (it would prune the whole log): it keeps as many of the
newest rows as fit, at the size of the newest rows (:func:`rows_within`). ``seq`` numbers may have
gaps there (a sequence never gives a number back to a rolled-back write), so inferring the count
from the numbers, as on SQLite, keeps at most the limit, a few rows fewer after such gaps: the
price of not counting millions of index entries every few seconds.
"""

from __future__ import annotations

from typing import Any

from nbdeploy.store import database
from nbdeploy.store.writes import transaction

PRUNE_BATCH = 2_000  # rows per step: a few milliseconds of write lock
RECLAIM_PAGES = 1_024  # pages returned per step
SLACK_PAGES = 2_048  # free pages kept for new rows (8 MiB of 4 KiB pages), or a tenth of the file if more
ROW_OVERHEAD = 128  # PostgreSQL: a row's header, line pointer and index entries, beyond its values
SIZE_SAMPLE = 256  # the newest rows whose size stands for every row's


def used_bytes(db: Any) -> int:
    """Bytes of the file's pages that hold data (free pages excluded); on PostgreSQL, the size on disk of
    the prediction and feedback tables with their indexes (freed space included: see the module's docstring)."""
    if database.is_postgres(db):
        return int(db.execute("SELECT pg_total_relation_size('predictions') + "
                              "pg_total_relation_size('feedback')").fetchone()[0])
    pages = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
    return pages * db.execute("PRAGMA page_size").fetchone()[0]


def prune_step(db: Any, *, now: float, max_age_s: float, max_rows: int, max_bytes: int,
               batch: int = PRUNE_BATCH) -> int:
    """Delete up to ``batch`` of the oldest prediction rows beyond a limit, with their feedback.

    Returns how many prediction rows went; fewer than ``batch`` means nothing more is due now.
    A limit of 0 is no limit. Row order (``seq``) is arrival order at the writer, close to time order.
    """
    lo, hi = db.execute("SELECT MIN(seq), MAX(seq) FROM predictions").fetchone()
    if lo is None:
        return 0
    row = db.execute("SELECT seq FROM predictions WHERE seq >= ? ORDER BY seq LIMIT 1 OFFSET ?",
                     (lo, batch - 1)).fetchone()
    end = row[0] if row else hi
    cut = lo  # rows below ``cut`` go whatever their age
    if database.is_postgres(db):
        keep = min(n for n in (max_rows, rows_within(db, max_bytes) if max_bytes else 0) if n) \
            if max_rows or max_bytes else 0
        if keep and hi - lo + 1 > keep:  # as on SQLite, from the numbers: no scan of millions of index entries
            # (numbers are drawn once per logged row; a rolled-back write leaves a gap, so this keeps at
            # most ``keep`` rows, a few fewer after such gaps)
            cut = min(end + 1, hi - keep + 1)
    else:
        if max_rows and hi - lo + 1 > max_rows:  # seq has no gaps but those pruning made: the count, without COUNT(*)
            cut = min(end + 1, hi - max_rows + 1)
        if max_bytes and used_bytes(db) > max_bytes:
            cut = end + 1
    before = now - max_age_s if max_age_s else float("-inf")
    with transaction(db):
        n = db.execute("DELETE FROM predictions WHERE seq BETWEEN ? AND ? AND (seq < ? OR ts < ?)",
                       (lo, end, cut, before)).rowcount
        if n:  # also catches a label that raced its prediction's deletion
            db.execute("DELETE FROM feedback WHERE pred_seq <= ? AND NOT EXISTS "
                       "(SELECT 1 FROM predictions p WHERE p.seq = feedback.pred_seq)", (end,))
    return n


def rows_within(db: Any, max_bytes: int) -> int:
    """PostgreSQL: how many prediction rows ``max_bytes`` holds, at the size of the newest rows (at least one)."""
    size = db.execute(f"SELECT AVG(pg_column_size(p.*)) FROM (SELECT * FROM predictions ORDER BY seq DESC "
                      f"LIMIT {SIZE_SAMPLE}) p").fetchone()[0]
    return max(1, int(max_bytes // (float(size or 0) + ROW_OVERHEAD)))


def prune_rollups(db: Any, before_bucket: int) -> int:
    """Delete rollup buckets older than ``before_bucket`` (a full scan of small tables: call it rarely)."""
    with transaction(db):
        n = db.execute("DELETE FROM rollup WHERE bucket < ?", (before_bucket,)).rowcount
        n += db.execute("DELETE FROM feature_rollup WHERE bucket < ?", (before_bucket,)).rowcount
    return n


def reclaim(db: Any, pages: int = RECLAIM_PAGES) -> int:
    """Return up to ``pages`` free pages beyond the slack to the file system; how many went.

    Only a file in incremental-vacuum mode can; another keeps its free pages for new rows. On
    PostgreSQL nothing: the autovacuum makes deleted rows' space reusable.
    """
    if database.is_postgres(db):
        return 0
    if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        return 0
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    excess = free - max(SLACK_PAGES, db.execute("PRAGMA page_count").fetchone()[0] // 10)
    if excess <= 0:
        return 0
    n = min(excess, pages)
    db.executescript(f"PRAGMA incremental_vacuum({int(n)});")  # a pragma that frees pages as it is stepped
    return n
