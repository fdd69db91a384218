"""The prediction log's writer: a bounded queue in front of one thread that commits it to the log.

:meth:`LogWriter.put` is the request path's only cost: it never blocks and never raises; beyond
``max_queue`` requests or ``settings.max_queue_rows`` rows waiting, a request is counted as
dropped instead (in ``dropped``, and in its rollup bucket with the next commit). The thread wakes
every ``interval`` seconds (sooner when much waits) and commits what waits in transactions of at
most ``batch_rows`` rows: a large request is split into parts, so the Python objects a step makes
stay bounded however large a request was, and the heap it used goes back to the system after.

A database another process holds locked (or, on PostgreSQL, a server out of reach for a moment)
is retried with backoff for ``settings.retry_seconds`` before the step is dropped (counted); a
full disk drops (counted) with one warning a minute; an unreadable SQLite file is set aside
(:meth:`nbdeploy.store.logfile.LogFile.recover`). Between commits the thread applies retention
(:mod:`nbdeploy.store.retention`) in short steps.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from nbdeploy.errors import Unavailable
from nbdeploy.store import database, logfile, retention, writes
from nbdeploy.store.batch import BUCKET_SECONDS, Batch, Part, Rules, compile_rules, event_rows, new_roll
from nbdeploy.store.events import PredictionEvent
from nbdeploy.store.logfile import LogFile

if TYPE_CHECKING:  # the log imports this module; its settings are only a type here
    from nbdeploy.store.log import LogSettings

log = logging.getLogger("nbdeploy.log")

Profiles = Callable[[str, int], "dict | None"]
WAKE_EVENTS = 5_000  # the thread starts early once this many requests wait
PRUNE_EVERY_S = 5.0
PRUNE_BUDGET_S = 0.05  # retention work between two commits, at most
ROLLUP_PRUNE_EVERY_S = 3_600.0
TRIM_ROWS = 50_000  # after writing this many rows, hand the freed heap back to the system
WARN_EVERY_S = 60.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; elsewhere there is nothing to call
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


class _Barrier(threading.Event):
    """Queued by :meth:`LogWriter.flush`; set once everything queued before it is committed."""


class LogWriter:
    """The queue and the thread that commits it (``start=False``: no thread, :meth:`flush` commits)."""

    def __init__(self, file: LogFile, settings: LogSettings, *, profiles: Profiles | None, max_queue: int,
                 batch_rows: int, interval: float, start: bool) -> None:
        self.file, self.settings, self.profiles = file, settings, profiles
        self.path = file.path
        self.shown = file.shown  # what messages name: the file, or the database URL without its password
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
        self._give_up_at = math.inf  # set by close: the thread stops retrying then
        self._warned: dict[str, float] = {}
        self._next_prune = self._next_rollup_prune = 0.0
        self._since_trim = 0
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name="nbdeploy-log-writer", daemon=True)
            self._thread.start()

    @property
    def queued_rows(self) -> int:
        return max(self._rows_in - self._rows_out, 0)

    @property
    def queued(self) -> int:
        """Requests waiting (a large one partly taken counts until its last part is)."""
        return len(self._queue) + (self._carry is not None)

    def health(self) -> dict[str, Any]:
        """Whether the log is writing (``ok``), and what it lost or recovered: for readiness and ``/metrics``."""
        f = self.file
        return {"ok": f.ok, "error": f.error, "recoveries": f.recoveries,
                "recovered_from": f.recovered_from.name if f.recovered_from else None,
                "dropped": self.dropped, "queued_rows": self.queued_rows}

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

    def count_dropped(self, key: tuple[str, int, int], n: int) -> None:
        """``n`` requests of ``(model, version, bucket)`` dropped before they reached this writer (by the
        server of a writer process): into that bucket's rollup with the next commit."""
        with self._lock:
            self._unsaved_drops[key] += n

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

    def wait_ready(self, timeout: float) -> bool:
        """A writer thread is ready as soon as it exists (a file it could not open is its own matter)."""
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Commit what is queued (retrying a locked file for most of ``timeout``), stop the thread, close the file."""
        self._give_up_at = time.monotonic() + 0.8 * timeout
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # stuck in the database: what it still holds is lost, and said so
                lost = self._take(math.inf)[0]
                self._drop(lost)
                log.error("the prediction log writer did not finish in %.0f s: %d requests not logged",
                          timeout, sum(p.start == 0 for p in lost))
                return
        else:
            self._drain()
        self.file.close()

    # -- the writer thread ---------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            self.step()
        self._drain()

    def step(self) -> None:
        """Commit what is queued, then retention when due (the writer thread's round; a writer process
        calls it from its own loop)."""
        try:
            self._drain(maintain=True)
            if self._since_trim >= TRIM_ROWS and _TRIM is not None:  # a big request's garbage back to the system
                self._since_trim = 0
                _TRIM(0)
        except Exception:  # a bug: the writer must live on, or every later prediction is lost unseen
            self._warn("bug", "the prediction log writer failed; it carries on", exc_info=True)

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
            except database.Error as exc:
                if logfile.is_corrupt(exc) and not recovered and self.file.writer is not None:
                    self.file.recover(exc)
                    recovered = True
                    continue
                limit = min(started + self.settings.retry_seconds, self._give_up_at)
                if database.transient(exc) and time.monotonic() + delay < limit:
                    self._warn("busy", "%s is locked by another process or out of reach (%s); retrying for up to "
                               "%.0f s", self.shown, _first_line(exc), self.settings.retry_seconds)
                    time.sleep(delay)
                    delay = min(2 * delay, 1.0)
                    continue
                self.file.error = f"cannot write to {self.shown}: {_first_line(exc)}"
                kind = "full" if logfile.is_full(exc) else "write"
                self._warn(kind, "%s: %d rows not logged (counted as dropped)", self.file.error, len(batch.rows))
            except Exception:  # a bug: say so (once a minute), count, carry on
                self._warn("bug", "cannot write %d rows to %s; counted as dropped", len(batch.rows), self.shown,
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

        Raises what the database raises; events that cannot be encoded are counted as dropped.
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
            except (*database.Error, Unavailable) as exc:  # the registry out of reach for now: ask again next time
                self._warn("profile", "cannot read the reference profile of %s version %s for now: %s", model,
                           version, _first_line(exc))
                return {}
            except Exception:
                log.exception("cannot read the reference profile of %s version %s", model, version)
                self._rules[key] = {}
        return self._rules[key]

    # -- retention -----------------------------------------------------------------------
    def _maintain(self) -> None:
        """Retention between writes when due: a few short pruning steps, then some free pages back."""
        now = time.monotonic()
        if now < self._next_prune or self._stop.is_set():
            return
        self._next_prune = now + PRUNE_EVERY_S
        if self.file.writer is None:  # no file since start (locked, unreadable): try it again now and then
            self.file.reopen()
            return
        try:
            if self.prune(deadline=now + PRUNE_BUDGET_S):
                self._next_prune = time.monotonic() + 0.2  # more is due: after the next write
        except database.Error as exc:
            if not database.transient(exc):  # busy: another worker is writing; next time
                self._warn("prune", "cannot prune %s: %s", self.shown, exc)

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


def _first_line(exc: BaseException) -> str:
    """An error's message without the detail lines PostgreSQL adds (they may quote the rows)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
