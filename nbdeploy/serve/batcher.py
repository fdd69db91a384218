"""Run one model version off the event loop: a worker thread, a bounded queue, adaptive batching.

Requests queue their feeds; the worker takes what is waiting (up to ``max_rows`` rows) and, when
batching, runs it as one ONNX Runtime call, then splits the outputs back by rows. A batch waits up
to ``max_wait`` for more rows only while other requests for the version are being read or decoded
(``arriving``), so a lone request, or a closed loop of clients all already queued, never waits.
Results go back to the event loop in one callback per call. The queue is bounded by rows: beyond
``max_queue_rows`` a request gets 503 with Retry-After.

A version whose call costs less than the hand-off itself (``inline_rows``, measured at load by
:mod:`nbdeploy.serve.inline`) runs a lone request of up to that many rows on the event loop instead:
two thread wake-ups cost more than ONNX Runtime takes for a small model.

One batcher belongs to one :class:`~nbdeploy.serve.runtime.LoadedModel` (one version), so a
request always finishes on the version it resolved. ``close()`` lets queued work finish first.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from nbdeploy.errors import Unavailable
from nbdeploy.serve.inline import INLINE_ABANDON_MS, INLINE_SLOW_SHARE, INLINE_STRIKES
from nbdeploy.serve.metrics import Histogram

log = logging.getLogger("nbdeploy.server")
Feeds = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]
_STOP = object()


class Overloaded(Unavailable):
    """The version's queue is full: 503 with ``Retry-After``."""

    retry_after = 1


class _Item:
    __slots__ = ("feeds", "future", "loop", "rows")

    def __init__(self, feeds: Feeds, rows: int, loop: asyncio.AbstractEventLoop, future: asyncio.Future) -> None:
        self.feeds = feeds
        self.rows = rows
        self.loop = loop
        self.future = future


class Batcher:
    def __init__(self, run: Callable[[Feeds], Outputs], label: str, *, batching: bool, max_rows: int = 64,
                 max_wait: float = 0.001, max_queue_rows: int = 4096, sizes: Histogram | None = None,
                 inline_rows: int = 0) -> None:
        self.run = run
        self.label = label
        self.batching = batching
        self.max_rows = max_rows
        self.max_wait = max_wait
        self.max_queue_rows = max_queue_rows
        self.sizes = sizes or Histogram((1,))
        self.inline_rows = inline_rows  # requests of at most this many rows run on the event loop
        self._slow = 0.0  # slow inline calls, less INLINE_SLOW_SHARE for each call in time
        self._inline_turn = False  # a request ran inline during this turn of the event loop
        self.pending_rows = 0  # queued or running; changed on the event loop only
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self.arriving = 0  # requests resolved to this version and still being read or decoded (event loop)
        self._outbox: list[_Item] = []  # submitted during this turn of the event loop
        self._thread = threading.Thread(target=self._work, name=f"nbdeploy-{label}", daemon=True)
        self._thread.start()

    # -- event loop side ----------------------------------------------------------------------
    async def submit(self, feeds: Feeds, rows: int) -> Outputs:
        """Queue one request's feeds and wait for its outputs (rows in the order given).

        Under load, requests submitted during one turn of the event loop go to the worker together,
        so it is woken once per turn, not once per request; a request alone goes at once. A request
        of at most ``inline_rows`` rows runs here, on the event loop, when it is alone: nothing queued
        and no other request submitted this turn. Under load the hand-off is the cheaper path after all
        (measured: the worker answers a turn's requests together, where inline answers wake the clients
        one by one), so inline calls are what cuts a lone request's latency.
        """
        if rows <= self.inline_rows and not self.pending_rows and not self._inline_turn:
            self._inline_turn = True
            asyncio.get_running_loop().call_soon(self._next_turn)
            return self._inline(feeds, rows)
        if self.pending_rows and self.pending_rows + rows > self.max_queue_rows:
            raise Overloaded(f"model {self.label} is overloaded: {self.pending_rows} rows are queued "
                             f"(limit {self.max_queue_rows}); retry shortly")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        idle = not self.pending_rows
        self.pending_rows += rows
        if not self._outbox and not idle:
            loop.call_soon(self._flush)
        self._outbox.append(_Item(feeds, rows, loop, future))
        if idle:  # nothing else in flight: hand it over now rather than at the end of this turn
            self._flush()
        return await future

    def _next_turn(self) -> None:
        self._inline_turn = False

    def _inline(self, feeds: Feeds, rows: int) -> Outputs:
        """One call on the event loop. Calls far costlier than measured at load, more than a few and more than
        one in a hundred, send the version back to its thread for good (its real inputs cost more than the
        warm-up rows did); a slow call now and then does not."""
        # CPU time of this thread, not wall time: waiting for the GIL (held by another thread when ONNX
        # Runtime returns) or for a core on a busy machine is no fault of the model's
        started = time.thread_time()
        result = self.run(feeds)
        elapsed_ms = (time.thread_time() - started) * 1000
        if elapsed_ms <= INLINE_ABANDON_MS:
            self._slow = max(self._slow - INLINE_SLOW_SHARE, 0.0)
        else:  # a slow call now and then may be the machine's doing; a slow call every time is the model's
            self._slow += 1.0
            if self._slow >= INLINE_STRIKES and self.inline_rows:
                self.inline_rows = 0
                log.warning("%s took %.1f ms on the event loop (again): it runs on its worker thread from now on",
                            self.label, elapsed_ms)
        self.sizes.observe(rows)
        return result

    def _flush(self) -> None:
        items, self._outbox = self._outbox, []
        with self._lock:
            closed = self._closed
            if not closed:
                self._queue.put(items)
        if closed:  # resolved just before a swap retired this version: still answer on it
            for item in items:
                task = item.loop.run_in_executor(None, self._call, item.feeds, item.rows)
                task.add_done_callback(lambda t, item=item: self._deliver([(item, t.result())]))

    def _deliver(self, done: list[tuple[_Item, Any]]) -> None:
        for item, result in done:
            self.pending_rows -= item.rows
            if item.future.done():  # the client went away
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)

    def close(self) -> None:
        """Stop taking requests; the worker finishes what is queued, then exits."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # -- worker thread ------------------------------------------------------------------------
    def _work(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        backlog: list[_Item] = []
        stopping = False
        while True:
            if not backlog:
                got = _STOP if stopping else get()
                if got is _STOP:
                    return
                backlog = list(got)
            while not stopping:  # everything already waiting
                try:
                    got = get_nowait()
                except queue.Empty:
                    break
                if got is _STOP:
                    stopping = True
                else:
                    backlog += got
            if not self.batching:
                done = [(item, self._call(item.feeds, item.rows)) for item in backlog]
                backlog = []
            else:
                if self.max_wait and self.arriving > 0 and not stopping:
                    stopping = self._wait_for_more(backlog)
                batch, rows, backlog = self._take(backlog)
                done = self._run_batch(batch, rows)
            self._send_back(done)

    def _wait_for_more(self, backlog: list[_Item]) -> bool:
        """While requests are arriving, wait up to max_wait for max_rows; True if told to stop."""
        rows = sum(item.rows for item in backlog)
        deadline = time.perf_counter() + self.max_wait
        while rows < self.max_rows and self.arriving > 0:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return False
            try:
                got = self._queue.get(timeout=remaining)
            except queue.Empty:
                return False
            if got is _STOP:
                return True
            backlog += got
            rows += sum(item.rows for item in got)
        return False

    def _take(self, backlog: list[_Item]) -> tuple[list[_Item], int, list[_Item]]:
        """The first requests of ``backlog`` that fit in max_rows rows (at least one), their rows, the rest."""
        rows = 0
        for n, item in enumerate(backlog):
            if n and rows + item.rows > self.max_rows:
                return backlog[:n], rows, backlog[n:]
            rows += item.rows
        return backlog, rows, []

    def _send_back(self, done: list[tuple[_Item, Any]]) -> None:
        loop = done[0][0].loop
        if all(item.loop is loop for item, _ in done):
            loop.call_soon_threadsafe(self._deliver, done)
            return
        for item, result in done:  # several event loops (tests): one callback each
            item.loop.call_soon_threadsafe(self._deliver, [(item, result)])

    def _call(self, feeds: Feeds, rows: int) -> Any:
        try:
            result = self.run(feeds)
        except Exception as exc:
            return exc
        self.sizes.observe(rows)
        return result

    def _run_batch(self, batch: list[_Item], rows: int) -> list[tuple[_Item, Any]]:
        if len(batch) == 1:
            return [(batch[0], self._call(batch[0].feeds, rows))]
        names = batch[0].feeds.keys()
        try:
            feeds = {k: np.concatenate([item.feeds[k] for item in batch]) for k in names}
        except (ValueError, KeyError, TypeError):  # inputs that do not stack: run them one by one
            return [(item, self._call(item.feeds, item.rows)) for item in batch]
        result = self._call(feeds, rows)
        if isinstance(result, BaseException) or any(len(v) != rows for v in result.values()):
            # one bad request must not fail the others, and outputs not by row cannot be split
            return [(item, self._call(item.feeds, item.rows)) for item in batch]
        done, start = [], 0
        for item in batch:
            stop = start + item.rows
            done.append((item, {k: v[start:stop] for k, v in result.items()}))
            start = stop
        return done
