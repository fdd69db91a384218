"""Every read of the prediction log (``log.db``, or the store's PostgreSQL database): named columns in,
typed results out.

The monitor, the feedback path and retraining read through :class:`LogReader`; the writes stay
in :mod:`nbdeploy.store.log` (predictions, rollups) and :mod:`nbdeploy.store.labels` (feedback).
Light on imports (no pandas): the server process loads it.

Inputs are stored as one JSON array per row in the order of the ``columns`` table's names for
that model and version (the names first seen for it), or as a JSON object when a row came with
other names; the reader decodes both into ``{name: value}`` dicts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import orjson

from nbdeploy.store import database, postgres
from nbdeploy.store.batch import N_LATENCY
from nbdeploy.store.logfile import identity
from nbdeploy.store.registry import SHADOW

LOG_FILE = "log.db"
_CHUNK = 500  # ids per IN (...) query, well under SQLite's variable limit
_ROLLUP_COUNTS = ("requests", "rows", "errors", "server_errors", "dropped", "labelled", "correct", "err_n")
_ROLLUP_SUMS = ("latency_sum", "abs_err", "sq_err")


@dataclass(frozen=True, eq=False)
class Rollups:
    """Per-bucket totals of one model (all its versions), oldest bucket first: one array per column.

    Counts are int64, sums float64; ``latency`` is one histogram row (``N_LATENCY`` int64 counts
    over ``LATENCY_EDGES_MS``) per bucket. ``labelled``/``correct``/``err_n``/``abs_err``/``sq_err``
    are what feedback added to the bucket of its prediction.
    """

    version: np.ndarray
    bucket: np.ndarray
    requests: np.ndarray
    rows: np.ndarray
    errors: np.ndarray
    server_errors: np.ndarray
    dropped: np.ndarray
    latency_sum: np.ndarray
    labelled: np.ndarray
    correct: np.ndarray
    err_n: np.ndarray
    abs_err: np.ndarray
    sq_err: np.ndarray
    latency: np.ndarray

    def __len__(self) -> int:
        return len(self.bucket)

    def where(self, mask: np.ndarray) -> Rollups:
        """The buckets selected by a boolean mask."""
        return Rollups(*(getattr(self, f.name)[mask] for f in fields(self)))


class InputCounts(NamedTuple):
    """One feature's checks summed over buckets (see ``feature_rollup``)."""

    n: int
    missing: int
    out_of_range: int
    unseen: int


@dataclass(frozen=True)
class LabelledPredictions:
    """Predictions of one version that have feedback, oldest first: one tuple per column.

    Hashable, so a caller can tell cheaply whether anything changed since its last read.
    """

    seq: tuple[int, ...]
    pred_ts: tuple[float, ...]
    feedback_ts: tuple[float, ...]
    label: tuple[Any, ...]  # the ground truth sent as feedback
    predicted: tuple[Any, ...]  # the label the model answered
    proba_json: tuple[bytes | None, ...]  # class probabilities as logged (a JSON array), if any

    def __len__(self) -> int:
        return len(self.seq)

    def probabilities(self, rows: Iterable[int]) -> list[list[float] | None]:
        """Decoded class probabilities of some rows (by position); decoded on demand, as few are needed."""
        return [None if (raw := self.proba_json[i]) is None else orjson.loads(raw) for i in rows]


@dataclass(frozen=True)
class RecentPredictions:
    """The last answered predictions of one version, oldest first, with their feedback label when there is one."""

    seq: tuple[int, ...]
    ts: tuple[float, ...]
    predicted: tuple[Any, ...]  # the label the model answered
    proba_json: tuple[bytes | None, ...]  # class probabilities as logged (a JSON array), if any
    truth: tuple[Any, ...]  # the feedback label, None where none came
    labelled: tuple[bool, ...]
    inputs: tuple[dict[str, Any], ...] = ()  # by input name, when asked for

    def __len__(self) -> int:
        return len(self.seq)


class ShadowAnswer(NamedTuple):
    """A shadow version's answer to a copy of a production request, beside production's answer."""

    version: int  # the shadow version
    label: Any
    production_label: Any
    status: int  # the shadow's HTTP status


class LoggedPrediction(NamedTuple):
    """What feedback needs to know about a logged prediction."""

    seq: int
    model: str
    version: int
    ts: float
    label: Any
    status: int


class LabelledInput(NamedTuple):
    """The inputs of a labelled prediction, by input name, with the label and prediction time."""

    inputs: dict[str, Any]
    label: Any
    ts: float


def _empty_rollups() -> Rollups:
    empty = np.zeros(0, np.int64)
    return Rollups(*([empty] * 13), np.zeros((0, N_LATENCY), np.int64))


class LogReader:
    """Read-only queries on the log of one store: ``home`` is its location (a directory, whose
    ``log.db`` holds the log, or a PostgreSQL URL).

    Never creates the log: until something is logged, :meth:`exists` is False and every query
    returns an empty result (on PostgreSQL: until the store's tables exist). Not for concurrent use
    from several threads; one reader per thread (or a lock). :meth:`on` reads through a connection
    the caller owns, such as a writer's connection inside its transaction.
    """

    def __init__(self, home: str | Path) -> None:
        self.location = database.locate(home)
        self.path = self.location.directory / LOG_FILE
        self._db: Any = None  # a sqlite3.Connection, or a postgres.Session
        self._owned = True
        self._ident: tuple[int, int] | None = None

    @classmethod
    def on(cls, db: Any) -> LogReader:
        """A reader over ``db`` (a SQLite connection or a PostgreSQL session), which stays the caller's to close."""
        if database.is_postgres(db):
            reader = cls(db.url)
        else:
            reader = cls(Path(db.execute("PRAGMA database_list").fetchone()[2]).parent)
        reader._db, reader._owned = db, False
        return reader

    def _connect(self) -> Any:
        if self._db is not None:
            return self._db
        url = self.location.url
        if url is not None:
            session = postgres.Session(url, "log")
            if session.execute("SELECT to_regclass('predictions')").fetchone()[0] is not None:
                self._db = session
        elif self.path.exists():
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA query_only=1")
            self._ident = identity(self.path)
        return self._db

    def _follow(self) -> None:
        """Reopen when the server replaced the file (a corrupt one set aside): read the log, not the old file."""
        if self._db is not None and self._owned and self.location.url is None and not self._db.in_transaction \
                and identity(self.path) != self._ident:
            self._db.close()
            self._db = None

    def exists(self) -> bool:
        """Whether anything was ever logged in this home (on PostgreSQL: whether the store's log tables exist)."""
        return self._connect() is not None

    def close(self) -> None:
        if self._db is not None and self._owned:
            self._db.close()
        self._db = None

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def consistent(self) -> Iterator[None]:
        """Run several queries against one state of the log (a read transaction), however the writer moves on."""
        self._follow()
        db = self._connect()
        if db is None or db.in_transaction:
            yield
            return
        db.execute("BEGIN")
        try:
            yield
        finally:
            db.execute("COMMIT")

    def _rows(self, sql: str, params: Iterable[Any]) -> list[tuple[Any, ...]]:
        db = self._connect()
        return [] if db is None else db.execute(sql, tuple(params)).fetchall()

    # -- the monitor ---------------------------------------------------------------------
    def latest_version(self, model: str) -> int | None:
        """The highest version of ``model`` with any traffic or feedback."""
        rows = self._rows("SELECT MAX(version) FROM rollup WHERE model = ?", (model,))
        return rows[0][0] if rows else None

    def rollups(self, model: str, since_bucket: int) -> Rollups:
        """Every version's rollups of ``model`` from bucket ``since_bucket`` on."""
        rows = self._rows(f"SELECT version, bucket, {', '.join(_ROLLUP_COUNTS + _ROLLUP_SUMS)}, latency FROM rollup "
                          "WHERE model = ? AND bucket >= ? ORDER BY bucket", (model, since_bucket))
        if not rows:
            return _empty_rollups()
        names = ("version", "bucket", *_ROLLUP_COUNTS, *_ROLLUP_SUMS)
        values = np.array([r[:-1] for r in rows], dtype=float)
        columns = {name: values[:, i] if name in _ROLLUP_SUMS else values[:, i].astype(np.int64)
                   for i, name in enumerate(names)}
        empty = bytes(8 * N_LATENCY)  # a bucket only feedback touched has no histogram yet
        latency = np.frombuffer(b"".join(r[-1] or empty for r in rows), np.int64).reshape(-1, N_LATENCY)
        return Rollups(**columns, latency=latency)

    def input_counts(self, model: str, version: int | None, since_bucket: int) -> dict[str, InputCounts]:
        """Per feature of ``model`` ``version``, its input checks summed from bucket ``since_bucket`` on."""
        rows = self._rows("SELECT feature, SUM(n), SUM(missing), SUM(out_of_range), SUM(unseen) FROM feature_rollup "
                          "WHERE model = ? AND version = ? AND bucket >= ? GROUP BY feature",
                          (model, version, since_bucket))
        return {feature: InputCounts(*map(int, counts)) for feature, *counts in rows}  # PostgreSQL sums: numeric

    def input_totals(self, model: str, since_bucket: int) -> list[tuple[int, str, InputCounts]]:
        """Per bucket and feature of ``model`` (every version) from ``since_bucket`` on, its input checks,
        oldest bucket first."""
        rows = self._rows("SELECT bucket, feature, SUM(n), SUM(missing), SUM(out_of_range), SUM(unseen) "
                          "FROM feature_rollup WHERE model = ? AND bucket >= ? GROUP BY bucket, feature "
                          "ORDER BY bucket", (model, since_bucket))
        return [(bucket, feature, InputCounts(*map(int, counts))) for bucket, feature, *counts in rows]

    def labelled(self, model: str, version: int | None, limit: int) -> LabelledPredictions:
        """The last ``limit`` predictions of ``model`` ``version`` that have feedback (by prediction order)."""
        rows = self._rows("SELECT f.pred_seq, f.pred_ts, f.ts, f.label, p.label, p.proba FROM feedback f "
                          "JOIN predictions p ON p.seq = f.pred_seq WHERE f.model = ? AND f.version = ? "
                          "ORDER BY f.pred_seq DESC LIMIT ?", (model, version, limit))
        columns = list(zip(*reversed(rows), strict=True)) if rows else [()] * 6
        return LabelledPredictions(*columns)

    def recent_predictions(self, model: str, version: int | None, limit: int, *,
                           inputs: bool = False) -> RecentPredictions:
        """The last ``limit`` answered predictions of ``model`` ``version`` (by prediction order), labelled or not;
        with ``inputs``, their decoded inputs too."""
        rows = self._rows(f"SELECT seq, ts, label, proba{', inputs' if inputs else ''} FROM predictions "
                          "WHERE model = ? AND version = ? AND status = 200 ORDER BY seq DESC LIMIT ?",
                          (model, version, limit))
        if not rows:
            return RecentPredictions((), (), (), (), (), ())
        rows.reverse()
        columns = list(zip(*rows, strict=True))
        # the labels of these rows: one range of the feedback index (a join costs a lookup per row)
        labels = dict(self._rows("SELECT pred_seq, label FROM feedback WHERE model = ? AND version = ? "
                                 "AND pred_seq >= ?", (model, version, columns[0][0])))
        decoded = tuple(self._decode([r or b"{}" for r in columns[4]], self._names(model, version))) if inputs else ()
        return RecentPredictions(*columns[:4], tuple(labels.get(seq) for seq in columns[0]),
                                 tuple(seq in labels for seq in columns[0]), decoded)

    def recent_answers(self, model: str, version: int, limit: int) -> list[tuple[Any, ...]]:
        """The last ``limit`` logged rows of ``model`` ``version`` (any status), newest first, as tuples
        ``(ts, status, latency_ms, label, feedback label or None, labelled)``: a short window's fine detail."""
        # CASE, not ``IS NOT NULL``: a number on both backends (PostgreSQL's comparisons are booleans)
        return self._rows("SELECT p.ts, p.status, p.latency_ms, p.label, f.label, "
                          "CASE WHEN f.pred_seq IS NULL THEN 0 ELSE 1 END "
                          "FROM predictions p LEFT JOIN feedback f ON f.pred_seq = p.seq "
                          "WHERE p.model = ? AND p.version = ? ORDER BY p.seq DESC LIMIT ?", (model, version, limit))

    def latest_prediction(self, model: str, version: int | None) -> int | None:
        """The ``seq`` of the newest answered prediction of ``model`` ``version``: it moves when new ones arrive."""
        rows = self._rows("SELECT seq FROM predictions WHERE model = ? AND version = ? AND status = 200 "
                          "ORDER BY seq DESC LIMIT 1", (model, version))
        return rows[0][0] if rows else None

    def recent_inputs(self, model: str, version: int | None, limit: int) -> list[dict[str, Any]]:
        """Inputs of the last ``limit`` answered predictions of ``model`` ``version``, oldest first."""
        rows = self._rows("SELECT inputs FROM predictions WHERE model = ? AND version = ? AND status = 200 "
                          "ORDER BY seq DESC LIMIT ?", (model, version, limit))
        return self._decode([r[0] for r in reversed(rows) if r[0]], self._names(model, version))

    def shadow_answers(self, model: str, limit: int) -> list[ShadowAnswer]:
        """The last ``limit`` answers of ``model``'s shadow traffic, newest first.

        The server logs them as model ``<model>@shadow`` with ids ``shadow:<production id>``.
        """
        rows = self._rows("SELECT s.version, s.label, p.label, s.status FROM predictions s JOIN predictions p "
                          "ON p.id = substr(s.id, ?) WHERE s.model = ? ORDER BY s.seq DESC LIMIT ?",
                          (len(SHADOW) + 2, f"{model}@{SHADOW}", limit))
        return [ShadowAnswer(*r) for r in rows]

    # -- feedback ------------------------------------------------------------------------
    def predictions(self, ids: list[str]) -> dict[str, LoggedPrediction]:
        """The logged predictions among ``ids`` (prediction keys), by key."""
        found: dict[str, LoggedPrediction] = {}
        for chunk in _chunks(ids):
            rows = self._rows(f"SELECT id, seq, model, version, ts, label, status FROM predictions "
                              f"WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            found.update((r[0], LoggedPrediction(*r[1:])) for r in rows)
        return found

    def requests_by_client(self, client_ids: list[str]) -> dict[str, list[tuple[str, LoggedPrediction]]]:
        """Per client id, the logged requests that carry it: the key of each one's first row, and that row.

        A request's client id is kept on its first row only (``<key>`` or ``<key>:0``).
        """
        found: dict[str, list[tuple[str, LoggedPrediction]]] = {}
        for chunk in _chunks(client_ids):
            rows = self._rows(f"SELECT client_id, id, seq, model, version, ts, label, status FROM predictions "
                              f"WHERE client_id IN ({','.join('?' * len(chunk))}) ORDER BY seq", chunk)
            for client, key, *pred in rows:
                found.setdefault(client, []).append((key, LoggedPrediction(*pred)))
        return found

    def labels(self, ids: list[str]) -> dict[str, Any]:
        """The feedback labels already recorded for ``ids``, by id."""
        found: dict[str, Any] = {}
        for chunk in _chunks(ids):
            found.update(self._rows(f"SELECT id, label FROM feedback WHERE id IN ({','.join('?' * len(chunk))})",
                                    chunk))
        return found

    # -- retraining ----------------------------------------------------------------------
    def labelled_traffic(self, model: str) -> list[LabelledInput]:
        """Every answered prediction of ``model`` (any version) that has feedback, in prediction-time order."""
        rows = self._rows("SELECT p.version, p.inputs, f.label, p.ts FROM feedback f JOIN predictions p "
                          "ON p.seq = f.pred_seq WHERE f.model = ? AND p.status = 200 AND p.inputs IS NOT NULL "
                          "ORDER BY p.ts, p.seq", (model,))
        names = {v: orjson.loads(n) for v, n in self._rows("SELECT version, names FROM columns WHERE model = ?",
                                                          (model,))}
        return [LabelledInput(_named(orjson.loads(raw), names.get(version, [])), label, ts)
                for version, raw, label, ts in rows]

    # -- the log's own health ------------------------------------------------------------
    def incidents(self, since: float) -> list[tuple[float, str]]:
        """What happened to the log itself since ``since`` (a corrupt file set aside), oldest first."""
        try:
            return [(ts, detail) for ts, detail in self._rows(
                "SELECT ts, detail FROM incidents WHERE ts >= ? ORDER BY ts", (since,))]
        except sqlite3.OperationalError:  # a log file no server of this version has opened yet
            return []

    # -- decoding ------------------------------------------------------------------------
    def _names(self, model: str, version: int | None) -> list[str]:
        rows = self._rows("SELECT names FROM columns WHERE model = ? AND version = ?", (model, version))
        return orjson.loads(rows[0][0]) if rows else []

    @staticmethod
    def _decode(raw: list[bytes], names: list[str]) -> list[dict[str, Any]]:
        values = orjson.loads(b"[" + b",".join(raw) + b"]")  # one parse for all rows
        return [_named(x, names) for x in values]


def _named(value: list[Any] | dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Stored inputs as ``{name: value}``: an array by the ``columns`` names, an object as it is."""
    return dict(zip(names, value, strict=False)) if isinstance(value, list) else value


def _chunks(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start:start + _CHUNK]
