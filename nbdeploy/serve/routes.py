"""The route table: every operation of the server, once. Starlette's routes and the OpenAPI document
are both made from :data:`ROUTES`, so a route cannot go undocumented.

The functions here decode the request, call :mod:`~nbdeploy.serve.handlers`, encode the answer;
nothing else. The inference routes (the hot path) are plain ASGI apps in
:mod:`nbdeploy.serve.inference`; what a row holds is in :mod:`nbdeploy.serve.routing`.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from prometheus_client.exposition import generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute

from nbdeploy._version import __version__
from nbdeploy.errors import NotFound, Unavailable
from nbdeploy.serve import handlers
from nbdeploy.serve.feedback import feedback, log_details
from nbdeploy.serve.inference import Invocations, ServerContext, V2Infer, check_json_object
from nbdeploy.serve.metrics import CONTENT_TYPE
from nbdeploy.serve.openapi import DOCS_HTML, document
from nbdeploy.serve.responses import error_response, json_response
from nbdeploy.serve.routing import JSON, Reply, RouteSpec


def _ctx(request: Request) -> ServerContext:
    return request.app.state.ctx


async def server_metadata(request: Request) -> Response:
    return json_response(handlers.server_metadata())


async def live(request: Request) -> Response:
    return json_response({"live": True})


async def ready(request: Request) -> Response:
    ctx = _ctx(request)
    if not ctx.runtime.synced or ctx.draining:
        return json_response({"ready": False, "draining": ctx.draining}, status=503)
    return json_response({"ready": True, **log_details(request.app.state)})


async def model_metadata(request: Request) -> Response:
    p = request.path_params
    runtime = _ctx(request).runtime
    model = await runtime.acquire(p["name"], p["version"])  # loads a version on demand
    return json_response(handlers.model_metadata(runtime, p["name"], p["version"], model))


async def model_ready(request: Request) -> Response:
    p = request.path_params
    try:
        model = await _ctx(request).runtime.acquire(p["name"], p["version"])
    except (NotFound, Unavailable) as exc:
        return error_response(exc.status, exc.message, fields={"name": p["name"], "ready": False})
    return json_response({"name": p["name"], "version": str(model.version), "ready": True})


async def repository_index(request: Request) -> Response:
    check_json_object(await request.body(), "the repository index request")
    return json_response(handlers.repository_index(_ctx(request).runtime))


async def ping(request: Request) -> Response:
    """MLflow's health check: 200 once the server serves, 503 while starting or draining."""
    ctx = _ctx(request)
    name = request.path_params.get("name")
    if name is not None:
        await ctx.runtime.acquire(name, request.path_params.get("version"))
    ok = ctx.runtime.synced and not ctx.draining
    return Response(b"\n", status_code=200 if ok else 503, media_type="application/json")


async def version(request: Request) -> Response:
    return Response(__version__, media_type="text/plain")


async def metrics(request: Request) -> Response:
    ctx = _ctx(request)
    body = generate_latest(ctx.registry)  # on the event loop, where the traffic counters change
    monitors = getattr(request.app.state, "monitors", None)
    if monitors is not None:  # quality, drift and alert gauges from the prediction log (blocking reads)
        body += (await run_in_threadpool(monitors.text, sorted(ctx.runtime.models()))).encode()
    return Response(body, media_type=CONTENT_TYPE)


async def openapi(request: Request) -> Response:
    return json_response(openapi_document())


async def docs(request: Request) -> Response:
    return HTMLResponse(DOCS_HTML)


def _ok(schema: str, description: str = "OK") -> dict[int, Reply]:
    return {200: Reply(description, schema)}


_TEXT = {200: Reply("The version", "Text", "text/plain")}
_SERVING = {200: Reply("Serving"), 503: Reply("Not ready")}
_BODY_ERRORS = (400, 404, 413, 415, 422, 503)

# The inference routes come first: Starlette tries routes in order, and they carry the traffic.
ROUTES: list[RouteSpec] = [
    RouteSpec("POST", "/v2/models/{name}/infer", V2Infer(), "infer",
              "Inference (V2, JSON or binary tensor data extension)", _ok("InferResponse"), _BODY_ERRORS,
              request={JSON: "InferRequest", "application/octet-stream": "Binary"}, versioned=True),
    RouteSpec("POST", "/models/{name}/invocations", Invocations(), "invocations",
              "MLflow-compatible scoring (JSON or CSV)", _ok("Predictions"), _BODY_ERRORS,
              request={JSON: "ScoringRequest", "text/csv": "Text"}, versioned=True),
    RouteSpec("GET", "/v2", server_metadata, "server_metadata", "Server metadata (V2)", _ok("ServerMetadata")),
    RouteSpec("GET", "/v2/health/live", live, "live", "Liveness (V2)", _ok("Live")),
    RouteSpec("GET", "/v2/health/ready", ready, "ready", "Readiness: 503 while starting or draining",
              {**_ok("Ready"), 503: Reply("Not ready", "Ready")}),
    RouteSpec("GET", "/v2/models/{name}", model_metadata, "model_metadata", "Model metadata (V2)",
              _ok("ModelMetadata"), (404, 503), versioned=True),
    RouteSpec("GET", "/v2/models/{name}/ready", model_ready, "model_ready", "Model readiness (V2)",
              _ok("ModelReady"), (404, 503), versioned=True),
    RouteSpec("POST", "/v2/repository/index", repository_index, "repository_index", "Served versions (read-only)",
              _ok("Index"), (400,), request={JSON: "Object"}, request_required=False),
    RouteSpec("GET", "/ping", ping, "ping", "MLflow health check", _SERVING),
    RouteSpec("GET", "/health", ping, "health", "MLflow health check (alias of /ping)", _SERVING),
    RouteSpec("GET", "/version", version, "version", "Server version (text)", _TEXT),
    RouteSpec("GET", "/models/{name}/ping", ping, "model_ping", "MLflow health", {200: Reply("Serving")},
              (404, 503), versioned=True),
    RouteSpec("GET", "/models/{name}/health", ping, "model_health", "MLflow health", {200: Reply("Serving")},
              (404, 503), versioned=True),
    RouteSpec("GET", "/models/{name}/version", version, "model_version", "Server version (text, MLflow path)",
              _TEXT, versioned=True),
    RouteSpec("GET", "/metrics", metrics, "metrics", "Prometheus metrics",
              {200: Reply("Text exposition format", "Text", "text/plain")}),
    RouteSpec("GET", "/openapi.json", openapi, "openapi", "This document", _ok("Object")),
    RouteSpec("GET", "/docs", docs, "docs", "A page to read this document and try each operation",
              {200: Reply("The page", "Text", "text/html")}),
    RouteSpec("POST", "/v2/models/{name}/feedback", feedback, "feedback",
              "Ground-truth labels for logged predictions, by prediction id",
              {**_ok("FeedbackResult", "Every label recorded"),
               207: Reply("Some labels recorded: see errors", "FeedbackResult")}, (400, 404, 409, 503),
              request={JSON: "FeedbackRequest"}),
]

routes: list[BaseRoute] = [spec.route() for spec in ROUTES]


@cache
def openapi_document() -> dict[str, Any]:
    return document(ROUTES)
