"""The two inference routes, as plain ASGI apps: V2 ``infer`` and MLflow ``invocations``.

They are the hot path, so they skip Starlette's request/response objects: read the body, resolve
the version, decode and validate, queue the feeds on the version's batcher (off the event loop),
encode, send. Each request is counted in ``/metrics`` and, once resolved to a version, handed to
the prediction log's sink as one :class:`~nbdeploy.store.events.PredictionEvent`, answered or not.

The server makes the log's key of every request (:func:`new_id`) and answers it in the
``X-Request-ID`` header (both protocols) and the V2 body's ``parameters.prediction_id``; feedback
labels a prediction by it (``<key>`` for one row, ``<key>:<row>`` for rows). A V2 client's ``id``
is echoed as ``id`` and kept beside the key, never trusted to be unique.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import orjson
from prometheus_client.registry import CollectorRegistry

from nbdeploy.errors import InvalidInput, NbdeployError
from nbdeploy.serve import handlers
from nbdeploy.serve.batcher import Feeds
from nbdeploy.serve.canary import CanaryRouter
from nbdeploy.serve.codecs.mlflow import decode_scoring_request, encode_predictions
from nbdeploy.serve.codecs.offload import decode_off_loop
from nbdeploy.serve.codecs.v2 import decode_infer_request, encode_infer_response
from nbdeploy.serve.config import ServeConfig
from nbdeploy.serve.metrics import Metrics
from nbdeploy.serve.refusals import RefusalLog
from nbdeploy.serve.responses import INTERNAL, RawHeaders, error_body, error_headers, raw_headers, send_bytes
from nbdeploy.serve.runtime import LoadedModel, Runtime
from nbdeploy.store import SHADOW
from nbdeploy.store.events import NullSink, PredictionEvent
from nbdeploy.store.labels import MAX_ID_CHARS

log = logging.getLogger("nbdeploy.server")
MLFLOW_CODES = {400: "BAD_REQUEST", 404: "RESOURCE_DOES_NOT_EXIST", 413: "BAD_REQUEST", 422: "BAD_REQUEST",
                503: "TEMPORARILY_UNAVAILABLE"}


@dataclass
class ServerContext:
    """What every route needs, on ``app.state.ctx``."""

    runtime: Runtime
    metrics: Metrics
    config: ServeConfig
    draining: bool = False
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=False))  # /metrics
    refusals: RefusalLog = field(default_factory=RefusalLog)  # why clients are turned away, in the server log
    canaries: CanaryRouter = None  # type: ignore[assignment]  # the running canaries' routes (serve/canary.py)

    def __post_init__(self) -> None:
        if self.canaries is None:
            self.canaries = CanaryRouter(self.runtime.store)


def new_id() -> str:
    """A time-ordered random UUID (version 7: milliseconds since 1970, then 74 random bits), without
    ``uuid``'s system call per id. Time order keeps the log's unique index growing at its end
    rather than writing all over it; the random bits keep ids of one millisecond (and of several
    server workers) apart."""
    r = random.getrandbits(74)
    h = f"{time.time_ns() // 1_000_000:012x}7{r >> 62:03x}{(0x2 << 62) | (r & ((1 << 62) - 1)):016x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class ClientGone(Exception):
    """The client disconnected before sending its whole body."""


async def read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class InferenceRoute:
    """Shared flow; subclasses decode the body and encode the answer for their protocol."""

    protocol = ""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        app_state = scope["app"].state
        ctx: ServerContext = app_state.ctx
        sink = app_state.sink
        params = scope["path_params"]
        model: LoadedModel | None = None
        tensors: dict[str, np.ndarray] = {}
        results: dict[str, np.ndarray] = {}
        request_id: str | None = None
        version: str | None = None
        key = ""
        try:
            # an un-versioned request may go to a running canary's version (one dict lookup when none runs)
            version = params.get("version") or ctx.canaries.version_for(params["name"], scope, ctx.runtime)
            model = await ctx.runtime.acquire(params["name"], version)  # loads a version on demand
            key = new_id()  # the log's key of this request: the server's, never the client's
            batcher = model.batcher
            batcher.arriving += 1  # a batch may wait for this one
            try:
                body = await read_body(receive)
                # big bodies decode in a thread of their own, so health checks stay fast meanwhile
                request_id, tensors, decoded, feeds, rows = await decode_off_loop(
                    len(body), self.prepare, scope, body, model, ctx)
            finally:
                batcher.arriving -= 1
            tensors = {s.name: feeds[s.onnx_name] for s in model.signature.inputs}
            results = await model.predict(feeds, rows)
            status, payload, content_type, extra = 200, *self.encode(model, key, request_id, decoded, results)
            error = None
        except ClientGone:
            return
        except NbdeployError as exc:
            if model is not None:
                ctx.refusals.note(model.name, exc.status, exc.message)
            status, payload = exc.status, error_body(exc.message, self.error_fields(exc))
            extra = raw_headers(error_headers(exc))  # Retry-After on a full queue
            content_type, error, results = b"application/json", exc.message, {}
        except Exception as exc:  # a bug, not the client's fault: say so, and keep serving
            log.exception("unexpected error in %s inference", self.protocol)
            status, payload, extra = 500, error_body(INTERNAL), None
            content_type, error, results = b"application/json", f"{type(exc).__name__}: {exc}", {}
        if model is not None:
            extra = [*(extra or ()), (b"x-request-id", key.encode())]
        try:
            await send_bytes(send, status, payload, content_type, extra)
        finally:  # logged even when the client went away while the answer was being sent
            elapsed = time.perf_counter() - started
            if model is None:
                ctx.metrics.unresolved[self.protocol, status] += 1
            else:
                model.stats.record(self.protocol, status, elapsed)
                if type(sink) is not NullSink:
                    sink.put(PredictionEvent(
                        id=key, ts=time.time() - elapsed, model=model.name, version=model.version, inputs=tensors,
                        outputs=results, latency_ms=elapsed * 1000, status=status, error=error, client_id=request_id,
                    ))
                    if status == 200 and version is None:  # production's answers only (not the canary's)
                        shadow = shadow_of(ctx, model)
                        if shadow is not None:  # after the answer went out: the client never waits for it
                            task = asyncio.ensure_future(run_shadow(shadow, tensors, key, sink))
                            _SHADOW_TASKS.add(task)
                            task.add_done_callback(_SHADOW_TASKS.discard)

    def prepare(self, scope: dict[str, Any], body: bytes, model: LoadedModel,
                ctx: ServerContext) -> tuple[str | None, dict[str, np.ndarray], Any, Feeds, int]:
        """Decode and validate: the body's bytes to ONNX feeds (any thread may run this)."""
        request_id, tensors, decoded = self.decode(scope, body, model, ctx)
        feeds, rows = handlers.validate(model, tensors)
        return request_id, tensors, decoded, feeds, rows

    def error_fields(self, exc: NbdeployError) -> dict[str, Any]:
        """What the protocol's error body has beside ``error``."""
        return {}

    def decode(self, scope: dict[str, Any], body: bytes, model: LoadedModel,
               ctx: ServerContext) -> tuple[str | None, dict[str, np.ndarray], Any]:
        raise NotImplementedError

    def encode(self, model: LoadedModel, key: str, request_id: str | None, decoded: Any,
               results: dict[str, np.ndarray]) -> tuple[bytes, bytes, RawHeaders | None]:
        """The answer's body, content type and headers; ``key`` is the server's, ``request_id`` the client's."""
        raise NotImplementedError


_SHADOW_TASKS: set[asyncio.Future] = set()


def shadow_of(ctx: ServerContext, model: LoadedModel) -> LoadedModel | None:
    """The version the ``shadow`` alias points at, when it is another loaded version of ``model``."""
    served = ctx.runtime.models().get(model.name)
    version = served.aliases.get(SHADOW) if served else None
    if version is None or version == model.version:
        return None
    return served.versions.get(version)


async def run_shadow(shadow: LoadedModel, tensors: dict[str, np.ndarray], key: str, sink: Any) -> None:
    """Answer a copy of a production request with the shadow version and log it as ``<model>@shadow``.

    Its key is ``shadow:<production key>`` so the monitor can pair each answer with production's.
    """
    started = time.perf_counter()
    results: dict[str, np.ndarray] = {}
    status, error = 200, None
    try:
        feeds, rows = handlers.validate(shadow, tensors)
        results = await shadow.predict(feeds, rows)
    except NbdeployError as exc:
        status, error = exc.status, exc.message
    except Exception as exc:  # the shadow must never disturb production: log and move on
        log.exception("shadow version %s of %s failed", shadow.version, shadow.name)
        status, error = 500, f"{type(exc).__name__}: {exc}"
    elapsed = time.perf_counter() - started
    sink.put(PredictionEvent(
        id=f"{SHADOW}:{key}", ts=time.time() - elapsed, model=f"{shadow.name}@{SHADOW}",
        version=shadow.version, inputs=tensors, outputs=results, latency_ms=elapsed * 1000, status=status,
        error=error,
    ))


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


class V2Infer(InferenceRoute):
    """``POST /v2/models/{name}[/versions/{v}]/infer``, JSON or the binary tensor data extension."""

    protocol = "v2"

    def decode(self, scope, body, model, ctx):  # type: ignore[no-untyped-def]
        length = _header(scope, b"inference-header-content-length")
        request = decode_infer_request(body, None if length is None else length.decode("latin-1"),
                                       max_elements=ctx.config.max_elements)
        if request.id is not None and len(request.id) > MAX_ID_CHARS:  # it is logged and echoed: keep it small
            raise InvalidInput(f"'id' must be at most {MAX_ID_CHARS} characters, got {len(request.id)}")
        wanted = handlers.requested_outputs(model, request)
        return request.id, handlers.tensors_by_name(model, request), (wanted, request.binary_outputs())

    def encode(self, model, key, request_id, decoded, results):  # type: ignore[no-untyped-def]
        wanted, binary = decoded
        payload, headers = encode_infer_response(model.name, str(model.version),
                                                 key if request_id is None else request_id,
                                                 [(o, results[o]) for o in wanted], binary=binary,
                                                 parameters={"prediction_id": key})
        if "Inference-Header-Content-Length" in headers:
            extra = [(b"inference-header-content-length", headers["Inference-Header-Content-Length"].encode())]
            return payload, b"application/octet-stream", extra
        return payload, b"application/json", None


class Invocations(InferenceRoute):
    """``POST /models/{name}[/versions/{v}]/invocations``: MLflow's scoring formats, JSON or CSV."""

    protocol = "mlflow"

    def decode(self, scope, body, model, ctx):  # type: ignore[no-untyped-def]
        content_type = (_header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
        method = None
        if scope.get("query_string"):
            query = parse_qs(scope["query_string"].decode("latin-1"))
            method = (query.get("predict_method") or [None])[0]
        request = decode_scoring_request(body, content_type == b"text/csv", model.signature, method,
                                         ctx.config.max_elements)
        handlers.check_output(model, request.output)
        return None, request.tensors, request.output

    def error_fields(self, exc: NbdeployError) -> dict[str, Any]:
        """MLflow's error shape (``error_code``, ``message``) beside nbdeploy's ``error``."""
        code = MLFLOW_CODES.get(exc.status, "INTERNAL_ERROR" if exc.status >= 500 else "BAD_REQUEST")
        return {"error_code": code, "message": exc.message}

    def encode(self, model, key, request_id, decoded, results):  # type: ignore[no-untyped-def]
        return encode_predictions(results[decoded]), b"application/json", None  # the key goes in X-Request-ID


def check_json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None
    if type(doc) is not dict:
        raise InvalidInput(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc
