"""Versions loaded on demand: a bounded set, least recently used unloaded first, each loaded once.

A request for a registered version that no alias points at loads that version on its first
request. Such versions stay loaded while they are among the ``bound`` most recently used; the
one beyond the bound is handed back to be closed (its batcher lets the requests already on it
finish). Loading runs in a worker thread, never on the event loop, and requests that arrive
while a version is loading wait for that one load instead of starting their own.

The set knows nothing of models: it holds whatever its loader returns, keyed by (name, version).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
Key = tuple[str, int]

LOADING_THREADS = 2
"""Versions loading at once, per server process: a load is mostly ONNX Runtime building a session and
warming it, so a few requests for several cold versions at once do not take every core from the others."""


class OnDemand(Generic[T]):
    """At most ``bound`` loaded entries in least-recently-used order, and the loads under way."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self._entries: OrderedDict[Key, T] = OrderedDict()
        self._loading: dict[Key, concurrent.futures.Future[T]] = {}
        self._lock = threading.Lock()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.evictions = 0

    def get(self, key: Key) -> T | None:
        """The entry for ``key``, now the most recently used; None when it is not loaded."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def peek(self, key: Key) -> T | None:
        """The entry for ``key`` without touching its place in the order."""
        return self._entries.get(key)

    def items(self) -> list[tuple[Key, T]]:
        """Every entry, least recently used first."""
        with self._lock:
            return list(self._entries.items())

    def put(self, key: Key, entry: T) -> list[T]:
        """Keep ``entry`` as the most recently used; returns the entries beyond the bound, for the caller to close."""
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            evicted = []
            while len(self._entries) > self.bound:
                evicted.append(self._entries.popitem(last=False)[1])
            self.evictions += len(evicted)
            return evicted

    def discard(self, keep: Callable[[Key], bool]) -> list[T]:
        """Drop every entry whose key ``keep`` refuses; returns them (the caller decides whether to close them)."""
        with self._lock:
            dropped = [k for k in self._entries if not keep(k)]
            return [self._entries.pop(k) for k in dropped]

    async def load(self, key: Key, loader: Callable[[], T]) -> T:
        """The entry for ``key``: loaded already, or from the load under way, or from ``loader()`` run in a
        worker thread now. ``loader`` keeps what it loads (:meth:`put`); its exception reaches every waiter."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
            future = self._loading.get(key)
            if future is None:
                future = self._loading[key] = concurrent.futures.Future()
                future.set_running_or_notify_cancel()  # a waiter that goes away cannot cancel it for the others
                if self._pool is None:
                    self._pool = concurrent.futures.ThreadPoolExecutor(LOADING_THREADS, "nbdeploy-load")
                self._pool.submit(self._run, key, loader, future)
        return await asyncio.wrap_future(future)

    def _run(self, key: Key, loader: Callable[[], T], future: concurrent.futures.Future[T]) -> None:
        try:
            result = loader()
        except BaseException as exc:  # every waiter gets it; the next request tries again (or sees it recorded)
            with self._lock:
                self._loading.pop(key, None)
            future.set_exception(exc)
        else:
            with self._lock:
                self._loading.pop(key, None)
            future.set_result(result)

    def close(self) -> list[T]:
        """Every entry, removed (for the caller to close); loads under way finish on their own."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)
        return entries
