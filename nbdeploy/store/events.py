"""What the server tells the prediction log: one :class:`PredictionEvent` per inference request.

The server hands events to an :class:`EventSink`. A sink must never block the request or raise:
when it cannot keep up it drops events and counts them in ``dropped`` (exported on ``/metrics``
as ``nbdeploy_log_dropped_total``). :class:`NullSink` logs nothing and costs nothing: the server
does not even build events for it. :class:`QueueSink` is the usual shape of a real sink: a
bounded queue in front of one writer thread that receives events in batches.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

log = logging.getLogger("nbdeploy.server")


@dataclass(slots=True)
class PredictionEvent:
    """One request to a resolved model version, successful or refused after resolution.

    ``id`` is the log's key for the request, made by the server and unique (a request answered
    with ``n > 1`` rows logs ``<id>:0`` … ``<id>:<n-1>``); ``client_id`` is the ``id`` the client
    sent, if any: kept beside the key and echoed, never trusted to be unique.
    """

    id: str
    ts: float  # wall-clock time the request arrived (time.time())
    model: str
    version: int
    inputs: dict[str, np.ndarray]  # by the user's input names (validated when validation passed)
    outputs: dict[str, np.ndarray]  # empty on failure
    latency_ms: float
    status: int  # the HTTP status answered
    error: str | None
    client_id: str | None = None


@runtime_checkable
class EventSink(Protocol):
    """Where events go. ``put`` must return at once and never raise."""

    dropped: int

    def put(self, event: PredictionEvent) -> None: ...


class NullSink:
    """Logs nothing."""

    dropped = 0

    def put(self, event: PredictionEvent) -> None:
        return None


class QueueSink:
    """A bounded queue drained by one daemon thread that calls ``writer(events)`` in batches.

    ``put`` drops (and counts) events when the queue is full; a writer that raises loses that
    batch, which is counted too, and the thread carries on.
    """

    def __init__(self, writer: Callable[[list[PredictionEvent]], None], maxsize: int = 10_000,
                 batch: int = 256) -> None:
        self.dropped = 0
        self._writer = writer
        self._batch = batch
        self._queue: queue.Queue[PredictionEvent | None] = queue.Queue(maxsize)
        self._thread = threading.Thread(target=self._drain, name="nbdeploy-event-sink", daemon=True)
        self._thread.start()

    def put(self, event: PredictionEvent) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the thread."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _drain(self) -> None:
        while True:
            first = self._queue.get()
            events = [] if first is None else [first]
            stop = first is None
            while not stop and len(events) < self._batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                else:
                    events.append(nxt)
            if events:
                try:
                    self._writer(events)
                except Exception:
                    self.dropped += len(events)
                    log.exception("the prediction log could not write %d events", len(events))
            if stop:
                return
