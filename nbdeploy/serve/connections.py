"""Connection limits that an ASGI app cannot enforce: header and body deadlines, and a connection cap.

uvicorn arms no timer until a first response is sent, so a client that opens a connection and
trickles its headers (or sends headers and one byte of body) holds a socket and its buffers for
ever; its ``limit_concurrency`` is only checked once headers are complete. This protocol (uvicorn's
httptools protocol with three additions) closes such connections:

- headers must be complete within ``header_timeout`` seconds of the connection (or of the previous
  response on a kept-alive connection), else the connection gets 408 and is closed;
- the body must be complete within ``body_timeout`` seconds of the headers, else the same;
- beyond ``max_connections`` open connections a new one gets 503 with ``Retry-After`` at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from nbdeploy.serve.responses import error_body

log = logging.getLogger("nbdeploy.server")
WARN_EVERY_S = 60.0


def _refusal(status: int, reason: str, message: str, extra: str = "") -> bytes:
    """A whole HTTP response written straight to the transport: no app runs for these connections."""
    body = error_body(message)
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"{extra}connection: close\r\n\r\n").encode() + body


class _Warnings:
    """One log line per minute per kind, with how many were refused since the last one."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.count: dict[str, int] = {}

    def note(self, kind: str, text: str) -> None:
        self.count[kind] = self.count.get(kind, 0) + 1
        now = time.monotonic()
        if now - self.last.get(kind, -WARN_EVERY_S) >= WARN_EVERY_S:
            log.warning("%s (%d since the last warning)", text, self.count[kind])
            self.last[kind], self.count[kind] = now, 0


def guarded_protocol(header_timeout: float, body_timeout: float, max_connections: int,
                     counters: dict[str, int] | None = None) -> type[HttpToolsProtocol]:
    """An ``HttpToolsProtocol`` class with these limits, for ``uvicorn.Config(http=...)``.

    ``counters`` (optional) is incremented under ``slow_clients_closed`` and ``connections_refused``.
    """
    warnings = _Warnings()
    counts = counters if counters is not None else {}
    timed_out = _refusal(408, "Request Timeout", "the request did not arrive in time")
    busy = _refusal(503, "Service Unavailable", f"more than {max_connections} open connections; retry shortly",
                    "retry-after: 1\r\n")

    class GuardedProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                counts["connections_refused"] = counts.get("connections_refused", 0) + 1
                warnings.note("busy", f"refused connections beyond the limit of {max_connections}")
                transport.write(busy)
                transport.close()
                return
            self._arm(header_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._deadline is None:  # a request on a kept-alive connection: its headers have a deadline
                self._arm(header_timeout)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()
            self._arm(body_timeout)

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            counts["slow_clients_closed"] = counts.get("slow_clients_closed", 0) + 1
            warnings.note("slow", "closed connections whose request did not arrive in time")
            if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
                self.transport.write(timed_out)
            self.transport.close()

    return GuardedProtocol


def connection_settings(header_timeout: float, body_timeout: float, max_connections: int,
                        counters: dict[str, int] | None = None) -> dict[str, Any]:
    """The ``uvicorn.Config`` keyword arguments for these limits (httptools when installed, else h11)."""
    try:
        import httptools  # noqa: F401  (uvicorn[standard]; the guarded protocol builds on it)
    except ImportError:
        log.warning("httptools is not installed: no header or body deadlines (pip install 'uvicorn[standard]')")
        return {"http": "h11", "limit_concurrency": max_connections}
    return {"http": guarded_protocol(header_timeout, body_timeout, max_connections, counters)}
