"""HTTP endpoints: decode the request, call a handler, encode the answer. Nothing else."""

from __future__ import annotations

import uuid

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nbdeploy.errors import InvalidInput, NotFound, Unavailable
from nbdeploy.serve import handlers
from nbdeploy.serve.protocol import decode_infer_request, encode_infer_response
from nbdeploy.serve.runtime import Runtime


class VersionSegment(Convertor[str | None]):
    """Matches nothing or ``/versions/<v>``; yields ``None`` or ``"<v>"``."""

    regex = "(?:/versions/[^/]+)?"

    def convert(self, value: str) -> str | None:
        return value[len("/versions/"):] if value else None

    def to_string(self, value: str | None) -> str:
        return f"/versions/{value}" if value else ""


register_url_convertor("versionseg", VersionSegment())


# The optional "/versions/{v}" segment is one path convertor, so each action has one route.
VERSIONED = "/v2/models/{name}{version:versionseg}"


def json_response(data: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def server_metadata(request: Request) -> Response:
    return json_response(handlers.server_metadata())


async def live(request: Request) -> Response:
    return json_response({"live": True})


async def ready(request: Request) -> Response:
    runtime = _runtime(request)
    if not runtime.synced or request.app.state.draining:
        return json_response({"ready": False}, status=503)
    return json_response({"ready": True})


async def model_metadata(request: Request) -> Response:
    p = request.path_params
    return json_response(handlers.model_metadata(_runtime(request), p["name"], p["version"]))


async def model_ready(request: Request) -> Response:
    p = request.path_params
    try:
        model = _runtime(request).resolve(p["name"], p["version"])
    except (NotFound, Unavailable) as exc:
        return json_response({"name": p["name"], "ready": False, "error": exc.message}, status=exc.status)
    return json_response({"name": p["name"], "version": str(model.version), "ready": True})


async def infer(request: Request) -> Response:
    p = request.path_params
    body = await request.body()
    header_length = request.headers.get("inference-header-content-length")
    if header_length is not None:
        try:
            header_length = int(header_length)
        except ValueError:
            raise InvalidInput("Inference-Header-Content-Length must be an integer") from None
    decoded = decode_infer_request(body, header_length)
    model, outputs = await run_in_threadpool(handlers.infer, _runtime(request), p["name"], p["version"], decoded)
    binary = _binary_outputs(decoded)
    payload, headers = encode_infer_response(
        model.name, str(model.version), decoded.id or str(uuid.uuid4()), outputs, binary=binary
    )
    media = headers.pop("Content-Type", headers.pop("content-type", "application/json"))
    return Response(payload, media_type=media, headers=headers)


def _binary_outputs(decoded: object) -> set[str] | bool:
    params = getattr(decoded, "parameters", None) or {}
    if params.get("binary_data_output"):
        return True
    return {o.name for o in (decoded.outputs or []) if o.binary_data}


routes = [
    Route("/v2", server_metadata, methods=["GET"]),
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    Route(VERSIONED, model_metadata, methods=["GET"]),
    Route(VERSIONED + "/ready", model_ready, methods=["GET"]),
    Route(VERSIONED + "/infer", infer, methods=["POST"]),
]
