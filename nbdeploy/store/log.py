"""The prediction and feedback log: ``log.db`` beside the registry, SQLite in WAL mode, or the
tables of the store's PostgreSQL database.

A separate database file, so heavy logging never contends with the registry's writes (on
PostgreSQL the log's writers take a lock of their own, not the registry's). The log is
optional to the server: a file SQLite cannot read is set aside and a fresh one started (see
:mod:`nbdeploy.store.logfile`), and if even that fails the server serves without a log, counting
every prediction as dropped. :meth:`PredictionLog.health` says which.

Predictions are queued by :meth:`PredictionLog.put` (never blocks, never raises) and committed
by one writer thread (:mod:`nbdeploy.store.writer`: bounded queue, transactions of at most
``batch_rows`` rows, retries of a locked file, drops counted in ``dropped``, retention between
commits), together with the rollups the monitor reads:

* ``rollup``: per model, version and ``BUCKET_SECONDS`` bucket of prediction time: requests,
  rows, errors, a latency histogram (``LATENCY_EDGES_MS``), dropped requests, and the labelled
  count, correct count and absolute/squared errors that feedback adds to its prediction's bucket;
* ``feature_rollup``: per feature, values seen, missing, outside the reference profile's
  [min, max] and categories the profile never saw (needs ``profiles``).

Keys: the server makes every request's key (``PredictionEvent.id``, unique); a request answered
with ``n`` rows logs ``n`` predictions, ``<key>`` when ``n == 1`` and ``<key>:<row>`` otherwise
(:func:`row_ids`). The client's own id is kept beside the request's first row (``client_id``).
Feedback addresses predictions by key, or by a client id that names exactly one logged request
(see :func:`nbdeploy.store.labels.resolve`). A failed request logs one row with its status and
error and no label.

Feedback (:meth:`PredictionLog.feedback`) is synchronous: it commits on a ``synchronous=FULL``
connection (on PostgreSQL, a committed transaction) before it returns, so an acknowledged label
survives a crash. It is idempotent by key;
a different label for a labelled prediction replaces it (last write wins, counted in ``updated``).
A database locked for longer than ``feedback_timeout_s`` (or a PostgreSQL server out of reach)
answers 503 with ``Retry-After``.

Several server processes, on one machine or on several sharing a PostgreSQL store, each run a
:class:`PredictionLog` on the same tables: their writers take turns (the file's write lock, or the
log's advisory lock), so rollups add up exactly.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from nbdeploy.errors import InvalidInput, Unavailable
from nbdeploy.store import database, labels, logfile, writes
from nbdeploy.store.batch import BUCKET_SECONDS, LATENCY_EDGES_MS, N_LATENCY, row_ids
from nbdeploy.store.events import PredictionEvent
from nbdeploy.store.labels import label_key
from nbdeploy.store.logfile import LogFile, connect
from nbdeploy.store.logprocess import ProcessWriter
from nbdeploy.store.reader import LOG_FILE, LogReader
from nbdeploy.store.settings import read_env
from nbdeploy.store.writer import LogWriter, Profiles

log = logging.getLogger("nbdeploy.log")


@dataclass(frozen=True)
class LogSettings:
    """The prediction log's settings. Each field ``x`` is also ``NBDEPLOY_LOG_X`` in the environment."""

    max_age_days: float = 30.0
    """Prediction rows (and their feedback) older than this are pruned; 0 keeps them whatever their age."""
    max_rows: int = 5_000_000
    """Most prediction rows kept, the oldest pruned first; 0: no limit."""
    max_bytes: int = 0
    """Most bytes of data the file holds, the oldest rows pruned first; 0: no limit. On PostgreSQL:
    as many of the newest rows as fit, at the size of the newest rows (see :mod:`nbdeploy.store.retention`)."""
    rollup_max_age_days: float = 400.0
    """The monitor's per-10-second counts older than this are pruned; 0 keeps them."""
    max_queue_rows: int = 1_000_000
    """Rows waiting for the writer; beyond it a request is not logged (counted as dropped)."""
    retry_seconds: float = 60.0
    """How long the writer retries a database another process holds locked before it drops a batch."""
    feedback_timeout_s: float = 5.0
    """How long feedback waits for a locked database before answering 503 with Retry-After."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise InvalidInput(f"NBDEPLOY_LOG_{f.name.upper()} must be a non-negative number, got {value!r}")
        if self.max_queue_rows < 1 or self.feedback_timeout_s <= 0:
            raise InvalidInput("NBDEPLOY_LOG_MAX_QUEUE_ROWS and NBDEPLOY_LOG_FEEDBACK_TIMEOUT_S must be positive")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LogSettings:
        """Defaults, then ``NBDEPLOY_LOG_<FIELD>`` variables."""
        return cls(**read_env(cls, "NBDEPLOY_LOG_", environ))


class LogUnavailable(Unavailable):
    """The log cannot record labels now (503); ``retry_after`` seconds when waiting should help."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PredictionLog:
    """The log of one store: ``home`` is its location (a directory, whose ``log.db`` holds the log, or
    a PostgreSQL URL whose store was created by :class:`~nbdeploy.store.registry.Store`). Also the
    server's ``EventSink``: ``put`` and ``dropped``.

    ``profiles(model, version)`` returns a version's reference profile (or None), for the
    per-feature out-of-range/unseen counts; see :func:`registry_profiles`. With ``start=False``
    there is no writer thread: :meth:`flush` writes the queue in the calling thread.
    ``settings`` default to :meth:`LogSettings.from_env`. With ``process`` the writer is a process of
    its own (:mod:`nbdeploy.store.logprocess`: the server's request path only queues events), which reads
    the reference profiles from the store's registry itself (``profiles`` is then not used).
    """

    def __init__(self, home: str | Path, *, profiles: Profiles | None = None, max_queue: int = 50_000,
                 batch_rows: int = 10_000, interval: float = 0.05, start: bool = True,
                 settings: LogSettings | None = None, process: bool = False) -> None:
        self.location = database.locate(home)
        self.path = self.location.directory / LOG_FILE  # on PostgreSQL only a name: messages show the URL
        if not self.location.is_postgres:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        settings = settings if settings is not None else LogSettings.from_env()
        self.file = LogFile(self.path, settings.feedback_timeout_s, self.location.url)
        self.writer: LogWriter | ProcessWriter
        if process:  # the server: its request path only queues events (see nbdeploy.store.logprocess)
            self.writer = ProcessWriter(self.location.text, self.file.shown, settings, max_queue=max_queue,
                                        batch_rows=batch_rows, interval=interval)
        else:
            self.writer = LogWriter(self.file, settings, profiles=profiles, max_queue=max_queue,
                                    batch_rows=batch_rows, interval=interval, start=start)
        self._readers = threading.local()
        self._reader_list: list[LogReader] = []

    @property
    def error(self) -> str | None:
        """Why the log is not writing now; None while it is."""
        return self.writer.health()["error"]

    def health(self) -> dict[str, Any]:
        """Whether the log is writing (``ok``), and what it lost or recovered: for readiness and ``/metrics``."""
        return self.writer.health()

    # -- the sink and its writer ---------------------------------------------------------
    def put(self, event: PredictionEvent) -> None:
        """Queue one event for the writer. Never blocks, never raises: beyond the bounds it counts a drop."""
        self.writer.put(event)

    @property
    def dropped(self) -> int:
        """Requests answered but not logged since start (the rollups keep them too)."""
        return self.writer.dropped

    @property
    def dropped_rows(self) -> int:
        return self.writer.dropped_rows

    @property
    def duplicates(self) -> int:
        """Rows whose key was already logged (never with server-made keys): counted in ``dropped`` too."""
        return self.writer.duplicates

    @property
    def pruned(self) -> int:
        """Prediction rows retention deleted since start."""
        return self.writer.pruned

    @property
    def settings(self) -> LogSettings:
        return self.writer.settings

    @settings.setter
    def settings(self, value: LogSettings) -> None:
        self.writer.settings = value

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is committed; False on timeout or a dead writer."""
        return self.writer.flush(timeout)

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the writer can commit (a writer process has started and opened the log); False on
        timeout. The server waits for it before it says it is ready, so its first answers are committed
        as promptly as any, and a label for them finds them."""
        return self.writer.wait_ready(timeout)

    def write(self, events: list[PredictionEvent]) -> None:
        """Commit events and their rollups now, ``batch_rows`` rows per transaction (bulk loads, tests)."""
        self.writer.write(events)

    def prune(self, now: float | None = None, deadline: float = math.inf) -> bool:
        """Apply retention now, in short steps, until done or ``deadline`` (``time.monotonic()``);
        True when more is due. The writer thread does it on its own."""
        return self.writer.prune(now, deadline)

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued (retrying a locked file for most of ``timeout``), stop the writer, close."""
        self.writer.close(timeout)
        for reader in self._reader_list:
            reader.close()

    # -- feedback ------------------------------------------------------------------------
    def feedback(self, model: str, items: Any) -> dict[str, Any]:
        """Record ground truth for logged predictions of ``model``; committed durably before it returns.

        ``items`` is one ``{"id": ..., "label": ...}`` or a list of them. Returns ``accepted``,
        ``updated`` (a different label replaced an earlier one: last write wins), ``unchanged``
        and ``errors`` (``index``, ``id``, ``status`` 400/404/409, ``error``); :func:`feedback_status`
        gives the HTTP status. Raises ``InvalidInput`` when the payload is not feedback at all, and
        :class:`LogUnavailable` (503) when the database cannot take labels now.
        """
        parsed, errors = labels.parse(items)
        f = self.file
        f.follow()  # the writer (another process) may have set an unreadable file aside for a fresh one
        if f.feedback is None:
            raise LogUnavailable(f"this server's prediction log is unavailable ({f.error}): no label recorded")
        try:
            targets = self._find(list(dict.fromkeys(i for _, i, _ in parsed)))
            if not f.feedback_lock.acquire(timeout=self.settings.feedback_timeout_s):
                raise _busy()  # another thread of this process is recording labels
            try:
                if f.feedback is None:
                    raise sqlite3.OperationalError(f"no prediction log: {f.error}")
                with writes.transaction(f.feedback) as db:
                    keys = [t.key for t in targets.values() if isinstance(t, labels.Target)]
                    existing = LogReader.on(db).labels(keys)  # under the write lock: another worker may label too
                    return labels.record(db, model, parsed, errors, targets, existing, BUCKET_SECONDS)
            finally:
                f.feedback_lock.release()
        except database.Error as exc:
            raise self._unavailable(exc) from None

    def _unavailable(self, exc: BaseException) -> LogUnavailable:
        wait = max(1, math.ceil(self.settings.feedback_timeout_s))
        if database.transient(exc):
            reach = "" if isinstance(exc, sqlite3.Error) else ", or its database is out of reach"
            return LogUnavailable(f"the prediction log is busy (another process holds its write lock for more than "
                                  f"{self.settings.feedback_timeout_s:g} s{reach}): no label recorded; send them again",
                                  retry_after=wait)
        if logfile.is_full(exc):
            return LogUnavailable("the disk holding the prediction log is full: no label recorded", retry_after=60)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return LogUnavailable(f"the prediction log cannot record labels now ({reason}): no label recorded",
                              retry_after=wait)

    def _find(self, ids: list[str]) -> dict[str, labels.Target | labels.Problem]:
        """What each feedback id names: a logged prediction by key, or by the client id of one request."""
        reader = self._reader()
        found = reader.predictions(ids)
        missing = [i for i in ids if i not in found]
        if missing:  # a label may overtake its prediction, still in the writer's queue
            self.flush(min(self.settings.feedback_timeout_s, 10.0))
            found.update(reader.predictions(missing))
            missing = [i for i in missing if i not in found]
        requests = reader.requests_by_client(sorted({c for i in missing for c in labels.client_ids(i)}))
        unnamed = [i for i in missing if not any(c in requests for c in labels.client_ids(i))]
        if unnamed:  # ... or in another server worker's queue: wait one of its commits (and hand-over)
            time.sleep(3 * self.writer.interval)
            found.update(reader.predictions(unnamed))
            requests.update(reader.requests_by_client(sorted({c for i in unnamed for c in labels.client_ids(i)})))
        derived = {k for i in missing if i not in found for k in labels.derived_keys(i, requests)}
        found.update(reader.predictions(sorted(derived - found.keys())))
        return {i: labels.resolve(i, found, requests) for i in ids}

    def _reader(self) -> LogReader:
        """This thread's reader (SQLite connections are not shared between threads here)."""
        reader = getattr(self._readers, "reader", None)
        if reader is None or self._readers.epoch != self.file.epoch:  # a new file since: read that one
            if reader is not None:
                reader.close()
            reader = self._readers.reader = LogReader(self.location.text)
            self._readers.epoch = self.file.epoch
            self._reader_list.append(reader)
        return reader


def _busy() -> sqlite3.OperationalError:
    """The error a locked SQLite database raises (its busy code, so it reads as busy everywhere)."""
    exc = sqlite3.OperationalError("database is locked")
    exc.sqlite_errorcode = logfile.SQLITE_BUSY  # type: ignore[attr-defined]
    return exc


def registry_profiles(store: Any) -> Profiles:
    """Reference profiles from the registry (``model.json`` key ``"profile"``), for ``profiles=``."""

    def profile(model: str, version: int) -> dict | None:
        name = model.split("@", 1)[0]  # "<model>@shadow" is the shadow traffic of <model>
        return store.version(name, version).meta.get("profile")

    return profile


def open_sink(store: Any, process: bool = False) -> PredictionLog:
    """The server's event sink for ``store``: its prediction log, with out-of-range checks from the registry;
    with ``process``, written by a process of its own (:mod:`nbdeploy.store.logprocess`)."""
    return PredictionLog(store.location, profiles=registry_profiles(store), process=process)


feedback_status = labels.status_of

__all__ = ["BUCKET_SECONDS", "LATENCY_EDGES_MS", "LOG_FILE", "N_LATENCY", "LogSettings", "LogUnavailable",
           "PredictionLog", "connect", "feedback_status", "label_key", "open_sink", "registry_profiles", "row_ids"]
