"""The prediction and feedback log: ``log.db`` beside the registry, SQLite in WAL mode.

A separate database file, so heavy logging never contends with the registry's writes. The log is
optional to the server: a file SQLite cannot read is set aside and a fresh one started (see
:mod:`nbdeploy.store.logfile`), and if even that fails the server serves without a log, counting
every prediction as dropped. :meth:`PredictionLog.health` says which.

Predictions are queued by :meth:`PredictionLog.put` (never blocks, never raises: beyond
``max_queue`` requests or ``max_queue_rows`` rows waiting, the request is counted in ``dropped``)
and committed by one writer thread every ``interval`` seconds (sooner when much waits), in
transactions of at most ``batch_rows`` rows (a large request is split into several) together
with the rollups the monitor reads:

* ``rollup``: per model, version and ``BUCKET_SECONDS`` bucket of prediction time: requests,
  rows, errors, a latency histogram (``LATENCY_EDGES_MS``), dropped requests, and the labelled
  count, correct count and absolute/squared errors that feedback adds to its prediction's bucket;
* ``feature_rollup``: per feature, values seen, missing, outside the reference profile's
  [min, max] and categories the profile never saw (needs ``profiles``).

A database another process holds locked is retried with backoff for ``retry_seconds`` before a
batch is dropped (and counted); a full disk drops (counted) with one warning a minute. Between
writes the writer applies retention (:mod:`nbdeploy.store.retention`).

Keys: the server makes every request's key (``PredictionEvent.id``, unique); a request answered
with ``n`` rows logs ``n`` predictions, ``<key>`` when ``n == 1`` and ``<key>:<row>`` otherwise
(:func:`row_ids`). The client's own id is kept beside the request's first row (``client_id``).
Feedback addresses predictions by key, or by a client id that names exactly one logged request
(see :func:`nbdeploy.store.labels.resolve`). A failed request logs one row with its status and
error and no label.

Feedback (:meth:`PredictionLog.feedback`) is synchronous: it commits on a ``synchronous=FULL``
connection before it returns, so an acknowledged label survives a crash. It is idempotent by key;
a different label for a labelled prediction replaces it (last write wins, counted in ``updated``).
A database locked for longer than ``feedback_timeout_s`` answers 503 with ``Retry-After``.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from nbdeploy.errors import InvalidInput, Unavailable
from nbdeploy.store import labels, logfile, retention, writes
from nbdeploy.store.batch import (
    BUCKET_SECONDS,
    LATENCY_EDGES_MS,
    N_LATENCY,
    Batch,
    Part,
    Rules,
    compile_rules,
    event_rows,
    new_roll,
    row_ids,
)
from nbdeploy.store.events import PredictionEvent
from nbdeploy.store.labels import label_key
from nbdeploy.store.logfile import LogFile, connect
from nbdeploy.store.reader import LOG_FILE, LogReader

log = logging.getLogger("nbdeploy.log")

Profiles = Callable[[str, int], "dict | None"]

WAKE_EVENTS = 5_000  # the writer starts early once this many requests wait
PRUNE_EVERY_S = 5.0
PRUNE_BUDGET_S = 0.05  # retention work between two writes, at most
ROLLUP_PRUNE_EVERY_S = 3_600.0
TRIM_ROWS = 50_000  # after writing this many rows, hand the freed heap back to the system
WARN_EVERY_S = 60.0


@dataclass(frozen=True)
class LogSettings:
    """The prediction log's settings. Each field ``x`` is also ``NBDEPLOY_LOG_X`` in the environment."""

    max_age_days: float = 30.0
    """Prediction rows (and their feedback) older than this are pruned; 0 keeps them whatever their age."""
    max_rows: int = 5_000_000
    """Most prediction rows kept, the oldest pruned first; 0: no limit."""
    max_bytes: int = 0
    """Most bytes of data the file holds, the oldest rows pruned first; 0: no limit."""
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
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"NBDEPLOY_LOG_{f.name.upper()}")
            if raw is None:
                continue
            kind = type(f.default)
            try:
                values[f.name] = kind(raw) if kind is float else int(float(raw))
            except ValueError:
                raise InvalidInput(f"NBDEPLOY_LOG_{f.name.upper()} must be a number, got {raw!r}") from None
        return cls(**values)


class LogUnavailable(Unavailable):
    """The log cannot record labels now (503); ``retry_after`` seconds when waiting should help."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; elsewhere there is nothing to call
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


class _Barrier(threading.Event):
    """Queued by :meth:`PredictionLog.flush`; set once everything queued before it is committed."""


class PredictionLog:
    """The log of one store home. Also the server's ``EventSink``: ``put`` and ``dropped``.

    ``profiles(model, version)`` returns a version's reference profile (or None), for the
    per-feature out-of-range/unseen counts; see :func:`registry_profiles`. With ``start=False``
    there is no writer thread: :meth:`flush` writes the queue in the calling thread.
    ``settings`` default to :meth:`LogSettings.from_env`.
    """

    def __init__(self, home: str | Path, *, profiles: Profiles | None = None, max_queue: int = 50_000,
                 batch_rows: int = 10_000, interval: float = 0.05, start: bool = True,
                 settings: LogSettings | None = None) -> None:
        self.path = Path(home) / LOG_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.settings = settings if settings is not None else LogSettings.from_env()
        self.profiles = profiles
        self.max_queue, self.batch_rows, self.interval = max_queue, batch_rows, interval
        self.dropped = 0  # requests not logged since start; the rollups keep them too
        self.dropped_rows = 0  # the rows of those requests
        self.duplicates = 0  # rows whose key was already logged (not with server-made keys); counted as dropped
        self.pruned = 0  # prediction rows retention deleted since start
        self._queue: collections.deque[tuple[PredictionEvent, int] | _Barrier] = collections.deque()
        self._carry: Part | None = None  # the rest of a large request the last step did not take
        self._rows_in = self._rows_out = 0  # rows queued and rows taken: each counted by one thread, no lock
        self._wake, self._stop, self._lock = threading.Event(), threading.Event(), threading.Lock()
        self._unsaved_drops: collections.Counter[tuple[str, int, int]] = collections.Counter()
        self._rules: dict[tuple[str, int], Rules] = {}
        self._names: dict[tuple[str, int], list[str]] = {}
        self._names_saved: tuple[int, set[tuple[str, int]]] = (0, set())  # (file epoch, names written to it)
        self._readers = threading.local()
        self._reader_list: list[LogReader] = []
        self._give_up_at = math.inf  # set by close: the writer stops retrying then
        self._warned: dict[str, float] = {}
        self._next_prune = self._next_rollup_prune = 0.0
        self._since_trim = 0
        self.file = LogFile(self.path, self.settings.feedback_timeout_s)
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name="nbdeploy-log-writer", daemon=True)
            self._thread.start()

    @property
    def error(self) -> str | None:
        """Why the log is not writing now; None while it is."""
        return self.file.error

    def health(self) -> dict[str, Any]:
        """Whether the log is writing (``ok``), and what it lost or recovered: for readiness and ``/metrics``."""
        f = self.file
        return {"ok": f.ok, "error": f.error, "recoveries": f.recoveries,
                "recovered_from": f.recovered_from.name if f.recovered_from else None,
                "dropped": self.dropped, "queued_rows": max(self._rows_in - self._rows_out, 0)}

    # -- the sink ------------------------------------------------------------------------
    def put(self, event: PredictionEvent) -> None:
        """Queue one event for the writer. Never blocks, never raises: beyond the bounds it counts a drop."""
        try:
            n = event_rows(event)
            if (self._stop.is_set() or self.file.writer is None or len(self._queue) >= self.max_queue
                    or (self._queue and self._rows_in - self._rows_out + n > self.settings.max_queue_rows)):
                self._drop([Part(event, 0, n, n)])
                return
            self._queue.append((event, n))
            self._rows_in += n
            if not self._wake.is_set() and (len(self._queue) >= WAKE_EVENTS
                                            or self._rows_in - self._rows_out >= self.batch_rows):
                self._wake.set()
        except Exception:  # the request path must never see a logging failure
            self._drop([Part(event, 0, 1, 1)])

    def _drop(self, parts: Iterable[Part]) -> None:
        """Count what will not be logged: a request once (with its first rows), and every row."""
        with self._lock:
            for p in parts:
                self.dropped += p.start == 0
                self.dropped_rows += p.stop - p.start
                if p.start:
                    continue
                try:
                    self._unsaved_drops[(str(p.event.model), int(p.event.version),
                                         int(p.event.ts // BUCKET_SECONDS))] += 1
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
        """Commit what is queued (retrying a locked file for most of ``timeout``), stop the writer, close."""
        self._give_up_at = time.monotonic() + 0.8 * timeout
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # stuck in SQLite: what it still holds is lost, and said so
                lost = self._take(math.inf)[0]
                self._drop(lost)
                log.error("the prediction log writer did not finish in %.0f s: %d requests not logged",
                          timeout, sum(p.start == 0 for p in lost))
                return
        else:
            self._drain()
        self.file.close()
        for reader in self._reader_list:
            reader.close()

    # -- the writer thread ---------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            self._drain(maintain=True)
            if self._since_trim >= TRIM_ROWS and _TRIM is not None:  # a big request's garbage back to the system
                self._since_trim = 0
                _TRIM(0)
        self._drain()

    def _drain(self, maintain: bool = False) -> None:
        """Write everything queued, ``batch_rows`` rows per transaction; with ``maintain``, retention
        between them (only the writer thread prunes: ``start=False`` logs prune on :meth:`prune`)."""
        while True:
            parts, barriers = self._take(self.batch_rows)
            if parts:
                self._commit(parts)
            for barrier in barriers:
                barrier.set()
            if maintain:
                self._maintain()
            if not parts and not barriers:
                break

    def _take(self, budget: float) -> tuple[list[Part], list[_Barrier]]:
        """Up to ``budget`` rows from the queue's head (the rest of a large request waits in ``_carry``)."""
        parts: list[Part] = []
        barriers: list[_Barrier] = []
        rows = 0
        while rows < budget:
            if self._carry is not None:
                event, start, n = self._carry.event, self._carry.start, self._carry.rows
                self._carry = None
            else:
                try:
                    item = self._queue.popleft()
                except IndexError:
                    break
                if isinstance(item, _Barrier):
                    barriers.append(item)
                    continue
                (event, n), start = item, 0
            stop = int(min(n, start + budget - rows))
            parts.append(Part(event, start, stop, n))
            rows += stop - start
            if stop < n:
                self._carry = Part(event, stop, n, n)
        self._rows_out += int(rows)
        return parts, barriers

    def _commit(self, parts: list[Part]) -> None:
        """Encode and write one step, retrying a locked file with backoff; what cannot be written is counted."""
        try:
            batch, parts = self._encode(parts)
        except Exception:
            self._warn("encode", "cannot encode %d prediction parts; counted as dropped", len(parts), exc_info=True)
            self._drop(parts)
            return
        started, delay, recovered = time.monotonic(), 0.05, False
        while True:
            try:
                self._save(batch)
                self.file.error = None
                self._since_trim += len(batch.rows)
                return
            except sqlite3.Error as exc:
                if logfile.is_corrupt(exc) and not recovered and self.file.writer is not None:
                    self.file.recover(exc)
                    recovered = True
                    continue
                limit = min(started + self.settings.retry_seconds, self._give_up_at)
                if logfile.is_busy(exc) and time.monotonic() + delay < limit:
                    self._warn("busy", "%s is locked by another process; retrying for up to %.0f s", self.path,
                               self.settings.retry_seconds)
                    time.sleep(delay)
                    delay = min(2 * delay, 1.0)
                    continue
                self.file.error = f"cannot write to {self.path}: {exc}"
                kind = "full" if logfile.is_full(exc) else "write"
                self._warn(kind, "%s: %d rows not logged (counted as dropped)", self.file.error, len(batch.rows))
            except Exception:  # a bug: say so (once a minute), count, carry on
                self._warn("bug", "cannot write %d rows to %s; counted as dropped", len(batch.rows), self.path,
                           exc_info=True)
            self._drop(parts)
            return

    def _warn(self, kind: str, message: str, *args: Any, exc_info: bool = False) -> None:
        """One warning a minute per kind of failure: a full disk must not write a line every 50 ms."""
        now = time.monotonic()
        if now - self._warned.get(kind, -math.inf) >= WARN_EVERY_S:
            self._warned[kind] = now
            log.warning(message, *args, exc_info=exc_info)

    # -- writing -------------------------------------------------------------------------
    def write(self, events: list[PredictionEvent]) -> None:
        """Commit events and their rollups, ``batch_rows`` rows per transaction (for bulk loads and tests).

        Raises what SQLite raises; events that cannot be encoded are counted as dropped.
        """
        step: list[Part] = []
        rows = 0
        for event in events:
            try:
                n = event_rows(event)
            except Exception:
                self._drop([Part(event, 0, 1, 1)])
                continue
            start = 0
            while True:
                stop = min(n, start + self.batch_rows - rows)
                step.append(Part(event, start, stop, n))
                rows, start = rows + stop - start, stop
                if rows >= self.batch_rows:
                    self._save(self._encode(step)[0])
                    step, rows = [], 0
                if start >= n:
                    break
        if step:
            self._save(self._encode(step)[0])

    def _encode(self, parts: list[Part]) -> tuple[Batch, list[Part]]:
        """The step's rows and rollups, and the parts in it (those that could not be encoded are dropped)."""
        batch = Batch(self._rules_for, self._names)
        for part in parts:
            batch.add(part)
        bad = batch.finish()
        for part in bad:
            log.error("cannot encode the prediction %r; counted as dropped", getattr(part.event, "id", None))
        self._drop(bad)
        failed = {id(p) for p in bad}
        return batch, [p for p in parts if id(p) not in failed]

    def _save(self, batch: Batch) -> None:
        """One transaction: the batch's rows and rollups, with the drops counted since the last one."""
        with self._lock:
            drops, self._unsaved_drops = self._unsaved_drops, collections.Counter()
        roll = {key: list(r) for key, r in batch.roll.items()}  # a copy: a retry must not count drops twice
        for key, n in drops.items():
            roll.setdefault(key, new_roll())[4] += n
        rows = batch.rows
        if not rows and not roll:
            return
        time.sleep(0)  # let the server's event loop take the GIL between encoding and writing
        f = self.file
        with f.write_lock:
            try:
                if f.writer is None:
                    raise sqlite3.OperationalError(f"no prediction log: {f.error}")
                if self._names_saved[0] != f.epoch:  # a fresh file: it has no input names yet
                    self._names_saved = (f.epoch, set())
                names = [(k, n) for k, n in self._names.items() if k not in self._names_saved[1]]
                duplicates = writes.save(f.writer, rows, roll, batch.feats, names)
            except BaseException:
                with self._lock:
                    self._unsaved_drops.update(drops)
                raise
        self._names_saved[1].update(k for k, _ in names)
        if duplicates:
            with self._lock:
                self.duplicates += duplicates
                self.dropped += duplicates
                self.dropped_rows += duplicates

    def _rules_for(self, model: str, version: int) -> Rules:
        key = (model, version)
        if key not in self._rules:
            try:
                self._rules[key] = compile_rules(self.profiles(model, version) if self.profiles else None)
            except Exception:
                log.exception("cannot read the reference profile of %s version %s", model, version)
                self._rules[key] = {}
        return self._rules[key]

    # -- retention -----------------------------------------------------------------------
    def _maintain(self) -> None:
        """Retention between writes when due: a few short pruning steps, then some free pages back."""
        now = time.monotonic()
        if now < self._next_prune or self.file.writer is None or self._stop.is_set():
            return
        self._next_prune = now + PRUNE_EVERY_S
        try:
            if self.prune(deadline=now + PRUNE_BUDGET_S):
                self._next_prune = time.monotonic() + 0.2  # more is due: after the next write
        except sqlite3.Error as exc:
            if not logfile.is_busy(exc):  # busy: another worker is writing; next time
                self._warn("prune", "cannot prune %s: %s", self.path, exc)

    def prune(self, now: float | None = None, deadline: float = math.inf) -> bool:
        """Apply retention: delete what is beyond the settings' limits, in short steps, until done or
        ``deadline`` (``time.monotonic()``); True when more is due. The writer does it on its own."""
        s, now = self.settings, time.time() if now is None else now
        with self.file.write_lock:
            db = self.file.writer
            if db is None:
                return False
            while True:
                n = retention.prune_step(db, now=now, max_age_s=s.max_age_days * 86_400,
                                         max_rows=s.max_rows, max_bytes=s.max_bytes)
                self.pruned += n
                if n < retention.PRUNE_BATCH or time.monotonic() > deadline:
                    break
            if s.rollup_max_age_days and time.monotonic() >= self._next_rollup_prune:
                self._next_rollup_prune = time.monotonic() + ROLLUP_PRUNE_EVERY_S
                retention.prune_rollups(db, int((now - s.rollup_max_age_days * 86_400) // BUCKET_SECONDS))
            retention.reclaim(db)
        return n >= retention.PRUNE_BATCH

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
        if f.feedback is None:
            raise LogUnavailable(f"this server's prediction log is unavailable ({f.error}): no label recorded")
        try:
            targets = self._find(list(dict.fromkeys(i for _, i, _ in parsed)))
            if not f.feedback_lock.acquire(timeout=self.settings.feedback_timeout_s):
                raise sqlite3.OperationalError("database is locked")
            try:
                if f.feedback is None:
                    raise sqlite3.OperationalError(f"no prediction log: {f.error}")
                with writes.transaction(f.feedback) as db:
                    keys = [t.key for t in targets.values() if isinstance(t, labels.Target)]
                    existing = LogReader.on(db).labels(keys)  # under the write lock: another worker may label too
                    return labels.record(db, model, parsed, errors, targets, existing, BUCKET_SECONDS)
            finally:
                f.feedback_lock.release()
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from None

    def _unavailable(self, exc: sqlite3.Error) -> LogUnavailable:
        wait = max(1, math.ceil(self.settings.feedback_timeout_s))
        if logfile.is_busy(exc):
            return LogUnavailable(f"the prediction log is busy (another process holds its write lock for more than "
                                  f"{self.settings.feedback_timeout_s:g} s): no label recorded; send them again",
                                  retry_after=wait)
        if logfile.is_full(exc):
            return LogUnavailable("the disk holding the prediction log is full: no label recorded", retry_after=60)
        return LogUnavailable(f"the prediction log cannot record labels now ({exc}): no label recorded",
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
        if unnamed:  # ... or in another server worker's queue: wait one of its commits
            time.sleep(2 * self.interval)
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
            reader = self._readers.reader = LogReader(self.path.parent)
            self._readers.epoch = self.file.epoch
            self._reader_list.append(reader)
        return reader


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

__all__ = ["BUCKET_SECONDS", "LATENCY_EDGES_MS", "LOG_FILE", "N_LATENCY", "LogSettings", "LogUnavailable",
           "PredictionLog", "connect", "feedback_status", "label_key", "open_sink", "registry_profiles", "row_ids"]
