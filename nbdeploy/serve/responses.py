"""How the server answers: JSON bodies, and the one error body every refusal carries.

Every error answer is ``{"error": "<message>"}``, after whatever fields its protocol adds (MLflow's
``error_code`` and ``message``, a model's readiness, a feedback tally), whether it comes from a
route, an exception handler, the inference hot path or the security middleware. Starlette routes
return a :class:`~starlette.responses.Response`; the plain ASGI paths send the same bytes with
:func:`send_error`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

from nbdeploy.errors import NbdeployError

RawHeaders = list[tuple[bytes, bytes]]
"""Response headers as a plain ASGI ``send`` takes them: lower-case names, bytes."""

INTERNAL = "internal server error"
"""What a client is told of a bug: the details go to the server's log, not to the client."""


def json_response(data: object, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


def error_body(message: str, fields: Mapping[str, Any] | None = None) -> bytes:
    """The error body: ``fields`` first, then ``"error": message``."""
    return orjson.dumps({**fields, "error": message} if fields else {"error": message})


def error_headers(exc: NbdeployError) -> dict[str, str] | None:
    """``Retry-After`` for an error that says when to come back (a full queue), else None."""
    seconds = getattr(exc, "retry_after", None)
    return None if seconds is None else {"Retry-After": str(seconds)}


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None,
                   fields: Mapping[str, Any] | None = None) -> Response:
    """The error body as a Starlette response."""
    return Response(error_body(message, fields), status_code=status, media_type="application/json",
                    headers=headers)


def raw_headers(headers: Mapping[str, str] | None) -> RawHeaders | None:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()] if headers else None


async def send_bytes(send: Any, status: int, body: bytes, content_type: bytes = b"application/json",
                     extra: RawHeaders | None = None) -> None:
    """A whole response on a plain ASGI ``send``."""
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_no_content(send: Any, headers: RawHeaders) -> None:
    """A 204 (no body, so no Content-Type or Content-Length) on a plain ASGI ``send``."""
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def send_error(send: Any, status: int, message: str, headers: Mapping[str, str] | None = None,
                     fields: Mapping[str, Any] | None = None) -> None:
    """The error body on a plain ASGI ``send``."""
    await send_bytes(send, status, error_body(message, fields), extra=raw_headers(headers))
