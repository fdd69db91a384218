"""The prediction log's writer in a process of its own, off the server's GIL.

A writer thread in the server's process shares its GIL with the event loop: each time the loop
waits for the network the writer takes the GIL, and each time it gives it back the loop has been
kept waiting, a convoy that cost the server several times the writer's own work (the writer's own
CPU remains, on another core when there is one: docs/performance.md). Here the request path only
appends each event to a list; a flusher thread that wakes every :data:`FLUSH_EVERY_S`
packs what waits (:func:`nbdeploy.store.eventcodec.pack_many`: the events of one kind column by
column) and writes it to a pipe in one system call. The writer process (``python -m
nbdeploy.store.writerprocess``) reads the pipe and runs the same :class:`~nbdeploy.store.writer.LogWriter`
the thread did, in one thread: batches, rollups, retries, retention and drop counting are its.

:class:`ProcessWriter` is the server side and has the writer's interface, so
:class:`~nbdeploy.store.log.PredictionLog` holds either. What it adds:

* a bound on what waits in the server (``max_queue`` requests, ``settings.max_queue_rows`` rows, as
  the writer's own queue): while there is no writer process events wait there; beyond the bound a
  request is counted as dropped here, and the count reaches the rollups through the next ``DROPS``
  frame;
* ``flush`` is a round trip: a ``FLUSH`` frame, answered once everything before it is committed;
* the writer process reports its counts and its file's health every :data:`STATUS_EVERY_S`
  seconds and with every answer; ``dropped`` and ``health()`` add them to the server's own;
* a writer process that dies is started again (at most once every :data:`RESPAWN_EVERY_S`
  seconds); the requests it had taken but not committed are counted as dropped;
* the writer process exits when the server does (the pipe's end), after committing what it holds.

Frames on the pipe: a 4-byte length, a 1-byte kind, the payload. Status lines back: one JSON
object per line.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import itertools
import logging
import math
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import orjson

from nbdeploy.store import eventcodec
from nbdeploy.store.batch import BUCKET_SECONDS, event_rows
from nbdeploy.store.events import PredictionEvent

if TYPE_CHECKING:
    from nbdeploy.store.log import LogSettings

log = logging.getLogger("nbdeploy.log")

FRAME = struct.Struct("<IB")
EVENT, FLUSH, DROPS, CLOSE, EVENTS = 1, 2, 3, 4, 5  # EVENTS: a group of events (eventcodec.pack_many)
FLUSH_EVERY_S = 0.01  # how long an event may wait in the server before it goes down the pipe
PIPE_BYTES = 1024 * 1024  # asked of the kernel for the pipe (it may give less)
STATUS_EVERY_S = 0.5
RESPAWN_EVERY_S = 1.0
F_SETPIPE_SZ = 1031


Key = tuple[str, int, int, int]  # an event's model, version, rollup bucket and rows: what a drop is counted by


class ProcessWriter:
    """The server's side of the writer process: :class:`~nbdeploy.store.writer.LogWriter`'s interface."""

    def __init__(self, home: str, shown: str, settings: LogSettings, *, max_queue: int, batch_rows: int,
                 interval: float) -> None:
        self.home, self.shown, self.settings = home, shown, settings
        self.max_queue, self.batch_rows, self.interval = max_queue, batch_rows, interval
        self._lock = threading.Lock()  # the buffers, the keys and the counts below
        self._events: list[PredictionEvent] = []  # waiting for the flusher
        self._pending_keys: list[Key] = []  # one per waiting event
        self._pending_rows = 0
        self._control: list[bytes] = []  # frames sent after the waiting events: FLUSH, CLOSE
        self._inflight: collections.deque[Key] = collections.deque()  # sent, not yet settled by the writer process
        self._settled = 0  # what the writer process had settled at its last status
        self._drops: collections.Counter[tuple[str, int, int]] = collections.Counter()  # not yet in a rollup
        self._dropped = self._dropped_rows = 0  # counted here: not sent, or lost with a writer process
        self._child: dict[str, Any] = {}  # the writer process's last status
        self._child_total: collections.Counter[str] = collections.Counter()  # counts of writer processes gone
        self._tokens = itertools.count(1)
        self._answered = 0  # the last flush token answered
        self._cond = threading.Condition()
        self._closing = False
        self._proc: subprocess.Popen | None = None
        self._events_fd = self._status_fd = -1
        self._spawned_at = -math.inf
        self._wake, self._stop = threading.Event(), threading.Event()
        self._status_thread: threading.Thread | None = None
        self._generation = 0  # of writer processes: a gone one's status thread must not speak for the next
        self._spawn()
        self._thread = threading.Thread(target=self._run, name="nbdeploy-log-flusher", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int | None:
        """The writer process's id while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    # -- counts ----------------------------------------------------------------------------
    def _count(self, key: str) -> int:
        return int(self._child.get(key, 0)) + self._child_total[key]

    @property
    def dropped(self) -> int:
        return self._dropped + self._count("dropped")

    @property
    def dropped_rows(self) -> int:
        return self._dropped_rows + self._count("dropped_rows")

    @property
    def duplicates(self) -> int:
        return self._count("duplicates")

    @property
    def pruned(self) -> int:
        return self._count("pruned")

    @property
    def queued_rows(self) -> int:
        return self._pending_rows + int(self._child.get("queued_rows", 0))

    @property
    def queued(self) -> int:
        return len(self._events)

    def health(self) -> dict[str, Any]:
        """The writer process's file health and the counts of both sides."""
        child = self._child
        error = child.get("error")
        if self.pid is None:
            error = error or "the prediction log's writer process is not running; it is being started again"
        return {"ok": bool(child.get("ok", False)) and error is None, "error": error,
                "recoveries": self._count("recoveries"), "recovered_from": child.get("recovered_from"),
                "dropped": self.dropped, "queued_rows": self.queued_rows}

    # -- the sink --------------------------------------------------------------------------
    def put(self, event: PredictionEvent) -> None:
        """Queue one event for the flusher. Never blocks, never raises: beyond the bounds it counts a drop."""
        try:
            key = (str(event.model), int(event.version), int(event.ts // BUCKET_SECONDS), event_rows(event))
        except Exception:
            self._count_lost([("?", 0, int(time.time() // BUCKET_SECONDS), 1)])
            return
        with self._lock:
            if not self._closing and len(self._events) < self.max_queue and (
                    not self._events or self._pending_rows + key[3] <= self.settings.max_queue_rows):
                self._events.append(event)
                self._pending_keys.append(key)
                self._pending_rows += key[3]
                return
        self._count_lost([key])

    def _count_lost(self, keys: Iterable[Key]) -> None:
        """Requests that will not be logged: counted, and into their rollups with the next DROPS frame."""
        with self._lock:
            for model, version, bucket, rows in keys:
                self._dropped += 1
                self._dropped_rows += rows
                self._drops[(model, version, bucket)] += 1

    def write(self, events: list[PredictionEvent]) -> None:
        """Queue events and wait until they are committed (bulk loads, tests)."""
        for event in events:
            self.put(event)
        if not self.flush():
            raise TimeoutError(f"the prediction log's writer process did not commit {len(events)} events in time")

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is committed; False on timeout."""
        token = next(self._tokens)
        with self._lock:
            self._control += (FRAME.pack(8, FLUSH), struct.pack("<Q", token))
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._cond:
            while self._answered < token:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the writer process reports its log open; False on timeout (the server serves meanwhile:
        events wait for it here)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._child.get("ok"):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def prune(self, now: float | None = None, deadline: float = math.inf) -> bool:
        """Retention is the writer process's, between its commits: nothing to do here."""
        return False

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued, let the writer process commit it and exit; stop the flusher."""
        with self._lock:
            self._closing = True
            self._control += (FRAME.pack(0, CLOSE), b"")
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        proc = self._proc
        if proc is not None:
            try:
                proc.wait(max(0.1, timeout))
            except subprocess.TimeoutExpired:
                log.error("the writer process of the prediction log %s did not finish in %.0f s: stopping it",
                          self.shown, timeout)
                proc.kill()
                proc.wait()
        if self._status_thread is not None:
            self._status_thread.join(2)
        self._forget_process()
        with self._lock:  # no writer process took them (it was gone and could not be started again in time)
            left, self._events, self._pending_keys = self._pending_keys, [], []
        if left:
            self._count_lost(left)
            log.error("%d requests were not logged to %s: its writer process was not running at shutdown", len(left),
                      self.shown)

    # -- the flusher thread ----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            stopping = self._stop.is_set()
            self._wake.wait(FLUSH_EVERY_S)
            self._wake.clear()
            try:
                if self._proc is not None and self._proc.poll() is not None:
                    self._ended()
                if self._proc is None:
                    self._spawn()
                self._send()
            except Exception:  # a bug: the thread must live on, or every later prediction is lost unseen
                log.exception("the prediction log's flusher failed; it carries on")
            if stopping:
                return

    def _send(self) -> None:
        """Everything waiting, packed, down the pipe in one write; without a writer process it waits (bounded)."""
        if self._proc is None:
            return
        with self._lock:
            events, keys, control = self._events, self._pending_keys, self._control
            self._events, self._pending_keys, self._control, self._pending_rows = [], [], [], 0
            drops, self._drops = self._drops, collections.Counter()
        chunks: list[bytes] = []
        try:
            packed = eventcodec.pack_many(events)
        except Exception:  # a bug: say so, count what it cost, carry on
            log.exception("cannot pack %d prediction events for %s; counted as dropped", len(events), self.shown)
            self._count_lost(keys)
            packed, keys = [], []
        with self._lock:
            self._inflight.extend(keys)  # before the write: the answer may come before write_all returns
        if drops:
            payload = orjson.dumps([[m, v, b, n] for (m, v, b), n in drops.items()])
            chunks += (FRAME.pack(len(payload), DROPS), payload)
        for grouped, payload in packed:
            chunks += (FRAME.pack(len(payload), EVENTS if grouped else EVENT), payload)
        chunks += control  # after the events: a flush answers once they are committed
        if not chunks:
            return
        try:
            write_all(self._events_fd, b"".join(chunks))
        except OSError:  # the writer process is gone: _ended counts what it did not settle
            with self._lock:
                self._drops.update(drops)

    def _ended(self) -> None:
        """The writer process ended: what it was sent and did not settle is counted as dropped."""
        proc = self._proc
        if self._status_thread is not None:
            self._status_thread.join(2)  # its last words: the final status
        with self._lock:
            lost, self._inflight, self._settled = list(self._inflight), collections.deque(), 0
        with self._cond:
            for key in ("dropped", "dropped_rows", "duplicates", "pruned", "recoveries"):
                self._child_total[key] += int(self._child.get(key, 0))
            self._child = {}
            self._cond.notify_all()
        self._count_lost(lost)
        if not self._closing and proc is not None:
            log.error("the writer process of the prediction log %s exited (code %s); the %d requests it held are "
                      "counted as dropped; starting another", self.shown, proc.returncode, len(lost))
        self._forget_process()

    def _forget_process(self) -> None:
        for fd in (self._events_fd, self._status_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._events_fd = self._status_fd = -1
        self._proc = None

    def _spawn(self) -> None:
        if self._closing or time.monotonic() - self._spawned_at < RESPAWN_EVERY_S:
            return
        self._spawned_at = time.monotonic()
        events_r, events_w = os.pipe()
        status_r, status_w = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(events_w, F_SETPIPE_SZ, PIPE_BYTES)
        env = {**os.environ, "NBDEPLOY_HOME": self.home,  # a URL's password stays out of the arguments
               **{f"NBDEPLOY_LOG_{f.name.upper()}": repr(getattr(self.settings, f.name))
                  for f in fields(self.settings)}}
        argv = [sys.executable, "-m", "nbdeploy.store.writerprocess", "--events", str(events_r), "--status",
                str(status_w), "--max-queue", str(self.max_queue), "--batch-rows", str(self.batch_rows),
                "--interval", repr(self.interval)]
        try:
            self._proc = subprocess.Popen(argv, pass_fds=(events_r, status_w), env=env, stdin=subprocess.DEVNULL,
                                          close_fds=True)
        except OSError as exc:
            log.error("cannot start the writer process of the prediction log %s: %s", self.shown, exc)
            for fd in (events_r, events_w, status_r, status_w):
                os.close(fd)
            return
        os.close(events_r)
        os.close(status_w)
        self._events_fd, self._status_fd = events_w, status_r
        self._generation += 1
        self._status_thread = threading.Thread(target=self._read_status, args=(status_r, self._generation),
                                               name="nbdeploy-log-status", daemon=True)
        self._status_thread.start()

    def _read_status(self, fd: int, generation: int) -> None:
        """Take the writer process's status lines until it closes its end."""
        buffered = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            *lines, buffered = (buffered + chunk).split(b"\n")
            for line in lines:
                try:
                    status = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if generation != self._generation:  # a writer process already given up for gone
                    return
                with self._lock:
                    settled = int(status.get("settled", 0))
                    for _ in range(min(settled - self._settled, len(self._inflight))):
                        self._inflight.popleft()
                    self._settled = settled
                with self._cond:
                    self._child = status
                    self._answered = max(self._answered, int(status.get("token") or 0))
                    self._cond.notify_all()


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
