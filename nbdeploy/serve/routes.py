"""HTTP routes: decode the request, call a handler, encode the answer. Nothing else.

``routes`` is a plain list; ``create_app`` may extend it. Each action has one route: the optional
``/versions/{v}`` segment (a number or an alias) is one path convertor, for V2 and MLflow alike.
"""

from __future__ import annotations

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from nbdeploy import __version__
from nbdeploy.errors import NotFound, Unavailable
from nbdeploy.serve import handlers
from nbdeploy.serve.feedback import routes as feedback_routes
from nbdeploy.serve.inference import Invocations, ServerContext, V2Infer, check_json_object
from nbdeploy.serve.openapi import DOCS_HTML, openapi_document


class VersionSegment(Convertor[str | None]):
    """Matches nothing or ``/versions/<v>``; yields ``None`` or ``"<v>"``."""

    regex = "(?:/versions/[^/]+)?"

    def convert(self, value: str) -> str | None:
        return value[len("/versions/"):] if value else None

    def to_string(self, value: str | None) -> str:
        return f"/versions/{value}" if value else ""


register_url_convertor("versionseg", VersionSegment())

VERSIONED = "/v2/models/{name}{version:versionseg}"
MLFLOW = "/models/{name}{version:versionseg}"


def json_response(data: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


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
    return json_response({"ready": True})


async def model_metadata(request: Request) -> Response:
    p = request.path_params
    return json_response(handlers.model_metadata(_ctx(request).runtime, p["name"], p["version"]))


async def model_ready(request: Request) -> Response:
    p = request.path_params
    try:
        model = _ctx(request).runtime.resolve(p["name"], p["version"])
    except (NotFound, Unavailable) as exc:
        return json_response({"name": p["name"], "ready": False, "error": exc.message}, status=exc.status)
    return json_response({"name": p["name"], "version": str(model.version), "ready": True})


async def repository_index(request: Request) -> Response:
    check_json_object(await request.body(), "the repository index request")
    return json_response(handlers.repository_index(_ctx(request).runtime))


async def ping(request: Request) -> Response:
    """MLflow's health check: 200 once the server serves, 503 while starting or draining."""
    ctx = _ctx(request)
    name = request.path_params.get("name")
    if name is not None:
        ctx.runtime.resolve(name, request.path_params.get("version"))
    ok = ctx.runtime.synced and not ctx.draining
    return Response(b"\n", status_code=200 if ok else 503, media_type="application/json")


async def version(request: Request) -> Response:
    return Response(__version__, media_type="text/plain")


async def metrics(request: Request) -> Response:
    ctx = _ctx(request)
    served = [(name, number, model.batching) for name, s in sorted(ctx.runtime.models().items())
              for number, model in sorted(s.versions.items())]
    text = ctx.metrics.render(dropped=int(getattr(request.app.state.sink, "dropped", 0)), served=served,
                              load_failures=len(ctx.runtime.failed))
    monitors = getattr(request.app.state, "monitors", None)
    if monitors is not None:  # quality, drift and alert gauges from the prediction log
        text += await run_in_threadpool(monitors.text, sorted(ctx.runtime.models()))
    return Response(text, media_type="text/plain; version=0.0.4")


async def openapi(request: Request) -> Response:
    return json_response(openapi_document())


async def docs(request: Request) -> Response:
    return HTMLResponse(DOCS_HTML)


routes: list[BaseRoute] = [
    Route(VERSIONED + "/infer", V2Infer(), methods=["POST"]),
    Route(MLFLOW + "/invocations", Invocations(), methods=["POST"]),
    Route("/v2", server_metadata, methods=["GET"]),
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    Route(VERSIONED, model_metadata, methods=["GET"]),
    Route(VERSIONED + "/ready", model_ready, methods=["GET"]),
    Route("/v2/repository/index", repository_index, methods=["POST"]),
    Route("/ping", ping, methods=["GET"]),
    Route("/health", ping, methods=["GET"]),
    Route("/version", version, methods=["GET"]),
    Route(MLFLOW + "/ping", ping, methods=["GET"]),
    Route(MLFLOW + "/health", ping, methods=["GET"]),
    Route(MLFLOW + "/version", version, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
    *feedback_routes,
]
