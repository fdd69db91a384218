"""The ASGI app: routes, one error renderer, the security guard, and a lifespan that keeps the
runtime in step with the store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from nbdeploy.errors import NbdeployError
from nbdeploy.serve import rounds
from nbdeploy.serve.alerting import Alerting
from nbdeploy.serve.canary import CanaryGuard
from nbdeploy.serve.config import ServeConfig
from nbdeploy.serve.dispatch import InferFirst
from nbdeploy.serve.feedback import log_details
from nbdeploy.serve.inference import ServerContext
from nbdeploy.serve.metrics import Metrics, TrafficCollector
from nbdeploy.serve.monitoring import ServerMonitors
from nbdeploy.serve.responses import INTERNAL, error_headers, error_response
from nbdeploy.serve.routes import ROUTES, routes
from nbdeploy.serve.runtime import Runtime
from nbdeploy.serve.security import LOOPBACK_HOSTS, Guard, check_settings
from nbdeploy.serve.worker_metrics import WorkerMetrics
from nbdeploy.store import Store
from nbdeploy.store.events import EventSink, NullSink

log = logging.getLogger("nbdeploy.server")
POLL_SECONDS = 0.2
WRITER_READY_S = 5.0  # readiness waits this long at most for the log's writer (a database out of reach: no longer)


async def _nbdeploy_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NbdeployError)
    return error_response(exc.status, exc.message, error_headers(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, exc.detail, exc.headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, INTERNAL)


def create_app(store: Store, *, poll_seconds: float = POLL_SECONDS, config: ServeConfig | None = None,
               sink: EventSink | None = None, token: str | None = None,
               hosts: frozenset[str] = LOOPBACK_HOSTS, extra_routes: Sequence[BaseRoute] = (),
               max_body: int | None = None, worker_metrics: Path | None = None) -> Starlette:
    """The server for one store. The lifespan loads what the store says to serve, then follows it.

    ``token`` (when set) is required on every route but the health checks; ``hosts`` are the
    ``Host`` names accepted; ``sink`` receives one event per inference request. ``worker_metrics`` (a
    worker of ``nbdeploy serve --workers N``) is the directory where the workers share their traffic
    counters, so that ``/metrics`` shows the whole server's (serve/worker_metrics.py).
    """
    config = config or ServeConfig()
    if max_body is not None:
        config = replace(config, max_body_bytes=max_body)
    check_settings(token, config.origins)  # now: Starlette builds the Guard only on the first event
    metrics = Metrics()
    runtime = Runtime(store, config, metrics)
    ctx = ServerContext(runtime=runtime, metrics=metrics, config=config)
    shared = WorkerMetrics(worker_metrics) if worker_metrics is not None else None  # the server's other workers

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop = threading.Event()

        def follow() -> None:
            while not stop.wait(poll_seconds):
                try:
                    ctx.canaries.refresh()  # before the swap, so a new canary alias finds its route (serve/canary.py)
                    runtime.sync()
                except Exception:  # keep following: one bad read must not freeze the server
                    rounds.failed("cannot sync with the store")

        await run_in_threadpool(ctx.canaries.refresh)
        await run_in_threadpool(runtime.sync, True)
        ready = getattr(app.state.sink, "wait_ready", None)
        if callable(ready):  # the log's writer process, started with the sink: ready by now, or in a moment
            await run_in_threadpool(ready, WRITER_READY_S)
        thread = threading.Thread(target=follow, name="nbdeploy-store-follower", daemon=True)
        thread.start()
        # judges running canaries from the prediction log when there is one, else from this process's counters
        def rerouted() -> None:
            ctx.canaries.refresh()
            runtime.sync()

        guard = CanaryGuard(store, runtime, logged=callable(getattr(app.state.sink, "feedback", None)),
                            on_end=rerouted)
        guard.start()
        alerting = Alerting(store, config.alert_interval, monitors=getattr(app.state, "monitors", None),
                            workers=config.workers > 1)
        if config.alert_interval > 0:
            alerting.start()  # the one judge of stored alerts, and their webhooks (serve/alerting.py)
        publishing = None if shared is None else asyncio.get_running_loop().create_task(
            shared.publish(metrics, dropped))  # on the event loop, where the counters change
        try:
            yield
        finally:
            ctx.draining = True
            if publishing is not None:
                publishing.cancel()  # writes a last snapshot
                with contextlib.suppress(asyncio.CancelledError):
                    await publishing
            ctx.refusals.flush()
            stop.set()
            thread.join(timeout=5)
            await run_in_threadpool(guard.stop)
            await run_in_threadpool(alerting.stop)
            await run_in_threadpool(runtime.close)
            close = getattr(app.state.sink, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()

    app = Starlette(
        routes=[*routes, *extra_routes],
        lifespan=lifespan,
        middleware=[Middleware(Guard, hosts=hosts, token=token, max_body=config.max_body_bytes, metrics=metrics,
                               allowed_origins=config.origins),
                    Middleware(InferFirst, specs=ROUTES)],  # the hot path skips Starlette's router (serve/dispatch.py)
        exception_handlers={NbdeployError: _nbdeploy_error, HTTPException: _http_error, Exception: _unexpected},
    )
    app.state.ctx = ctx
    app.state.runtime = runtime
    app.state.sink = sink if sink is not None else NullSink()

    def dropped() -> int:
        return int(getattr(app.state.sink, "dropped", 0))

    ctx.registry.register(TrafficCollector(metrics, loaded=runtime.loaded, load_failures=lambda: len(runtime.failed),
                                           dropped=dropped,
                                           log_health=lambda: log_details(app.state).get("prediction_log"),
                                           combine=shared.combine if shared is not None else None))
    if callable(getattr(sink, "feedback", None)):
        app.state.log = sink  # the prediction log also takes feedback (see serve/feedback.py)
        app.state.monitors = ServerMonitors(store)  # quality, drift and alert gauges on /metrics
    return app


def draining(app: Any) -> None:
    """Readiness answers 503 from now on (SIGTERM): the server still answers everything else."""
    app.state.ctx.draining = True
