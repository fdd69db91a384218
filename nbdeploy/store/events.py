"""What the server tells the prediction log: one :class:`PredictionEvent` per inference request.

The server hands events to an :class:`EventSink`. A sink must never block the request or raise:
when it cannot keep up it drops events and counts them in ``dropped`` (exported on ``/metrics``
as ``nbdeploy_log_dropped_total``). :class:`NullSink` logs nothing and costs nothing: the server
does not even build events for it. The prediction log (:mod:`nbdeploy.store.log`)
is the real sink: a bounded queue in front of one writer thread.
"""

from __future__ import annotations

import logging
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
