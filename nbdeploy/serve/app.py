"""The ASGI app: routes, one error renderer, and a lifespan that keeps the runtime in step."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from nbdeploy.errors import NbdeployError
from nbdeploy.serve.endpoints import json_response, routes
from nbdeploy.serve.runtime import Runtime
from nbdeploy.store import Store

log = logging.getLogger("nbdeploy.server")
POLL_SECONDS = 0.2
MAX_BODY_BYTES = 8 * 1024 * 1024




async def _nbdeploy_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NbdeployError)
    return json_response({"error": exc.message}, status=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return json_response({"error": exc.detail}, status=exc.status_code, headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return json_response({"error": "internal server error"}, status=500)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, by Content-Length or as chunks arrive."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._too_large(send)
                return
        received = 0

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise NbdeployError(f"request body is over the {self.limit} byte limit", 413)
            return message

        await self.app(scope, limited_receive, send)

    async def _too_large(self, send: Any) -> None:
        body = b'{"error":"request body is over the ' + str(self.limit).encode() + b' byte limit"}'
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def create_app(store: Store, *, poll_seconds: float = POLL_SECONDS, max_body: int = MAX_BODY_BYTES) -> Starlette:
    """The server for one store. The lifespan loads what the store says to serve, then follows it."""
    runtime = Runtime(store)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop = threading.Event()

        def follow() -> None:
            while not stop.wait(poll_seconds):
                try:
                    runtime.sync()
                except Exception:  # keep following: one bad read must not freeze the server
                    log.exception("cannot sync with the store")

        from starlette.concurrency import run_in_threadpool

        await run_in_threadpool(runtime.sync, True)
        thread = threading.Thread(target=follow, name="nbdeploy-store-follower", daemon=True)
        thread.start()
        try:
            yield
        finally:
            app.state.draining = True
            stop.set()
            thread.join(timeout=5)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(BodyLimit, limit=max_body)],
        exception_handlers={NbdeployError: _nbdeploy_error, HTTPException: _http_error, Exception: _unexpected},
    )
    app.state.runtime = runtime
    app.state.draining = False
    return app
