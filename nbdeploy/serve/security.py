"""Safe defaults, enforced before any route runs: one plain ASGI middleware, and the access token.

In order, for every HTTP request:

1. ``Host`` must name the bound host or loopback (421 otherwise): a web page whose DNS name was
   rebound to 127.0.0.1 cannot talk to the server.
2. With a token (required whenever the server binds a non-loopback address), every route but the
   health checks needs ``Authorization: Bearer <token>`` (401 otherwise).
3. Bodies over the limit get 413: by ``Content-Length``, or counted as chunks arrive.
4. Bodies must be JSON or CSV (415 otherwise). V2 binary tensor requests (``Inference-Header-
   Content-Length``) may be ``application/octet-stream`` or carry no Content-Type at all; a
   compressed body (``Content-Encoding``) is refused.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import socket
from pathlib import Path
from typing import Any

from nbdeploy.errors import NbdeployError
from nbdeploy.serve.metrics import Metrics

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/ping", "/health"})
TOKEN_FILE = "server.token"
JSON_TYPES = (b"application/json", b"text/csv")


def is_loopback(host: str) -> bool:
    """Only the default addresses count: any other one, even 127.0.0.2, needs the token."""
    return host in LOOPBACK_HOSTS


def allowed_hosts(bound: str, extra: list[str] | tuple[str, ...] = ()) -> frozenset[str]:
    """Host names a request may address: loopback, the bound address and ``extra``; for a wildcard
    bind (0.0.0.0, ::) also this machine's name and addresses."""
    hosts = set(LOOPBACK_HOSTS) | {bound.lower()} | {h.lower() for h in extra}
    if bound in ("0.0.0.0", "::", ""):
        name = socket.gethostname()
        hosts |= {name.lower(), socket.getfqdn().lower()}
        with contextlib.suppress(OSError):
            hosts |= {info[4][0] for info in socket.getaddrinfo(name, None)}
    return frozenset(hosts)


def load_or_create_token(home: Path) -> str:
    """The store's server token, created (0600, owner only) on first use. Never logged."""
    path = home / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        token = path.read_text().strip()
        if len(token) >= 32:
            return token
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def _hostname(value: bytes) -> str:
    text = value.decode("latin-1").strip().lower()
    if text.startswith("["):  # [::1]:8000
        return text[1:text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class Guard:
    """The checks above, as one ASGI middleware in front of the whole app."""

    def __init__(self, app: Any, *, hosts: frozenset[str], token: str | None, max_body: int,
                 metrics: Metrics | None = None) -> None:
        self.app = app
        self.hosts = hosts
        self.expected = f"Bearer {token}".encode() if token else None
        self.max_body = max_body
        self.metrics = metrics or Metrics()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = content_type = length = auth = encoding = None
        binary = False
        for key, value in scope["headers"]:
            if key == b"host":
                host = value
            elif key == b"content-type":
                content_type = value
            elif key == b"content-length":
                length = value
            elif key == b"authorization":
                auth = value
            elif key == b"inference-header-content-length":
                binary = True
            elif key == b"content-encoding":
                encoding = value
        if host is None or _hostname(host) not in self.hosts:
            got = "none" if host is None else repr(host.decode("latin-1"))
            await self._refuse(send, 421, "host", f"Host header {got} is not this server's address: "
                               "expected the address it listens on, or 127.0.0.1/localhost")
            return
        if self.expected is not None and scope["path"] not in OPEN_PATHS and (
                auth is None or not hmac.compare_digest(auth, self.expected)):
            await self._refuse(send, 401, "token", "this server needs 'Authorization: Bearer <token>' "
                               "(the token is in the store's server.token file)",
                               [(b"www-authenticate", b"Bearer")])
            return
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await self._refuse(send, 413, "size", f"request body is over the {self.max_body} byte limit "
                               f"(Content-Length {length.decode('latin-1')})")
            return
        if encoding is not None and encoding.strip().lower() != b"identity":
            await self._refuse(send, 415, "encoding", f"Content-Encoding {encoding.decode('latin-1')!r} is not "
                               "accepted: send the body uncompressed")
            return
        if content_type is not None:
            media = content_type.split(b";")[0].strip().lower()
            if not (media in JSON_TYPES or media.endswith(b"+json") or
                    (binary and media == b"application/octet-stream")):
                await self._refuse(send, 415, "media", f"Content-Type {media.decode('latin-1')!r} is not accepted: "
                                   "expected application/json or text/csv (or application/octet-stream with "
                                   "Inference-Header-Content-Length)")
                return
        if length is None and scope["method"] not in ("GET", "HEAD"):
            receive = self._counting(receive)
        await self.app(scope, receive, send)

    def _counting(self, receive: Any) -> Any:
        received = 0
        limit = self.max_body

        async def limited() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    self.metrics.rejected["size"] += 1
                    raise NbdeployError(f"request body is over the {limit} byte limit", 413)
            return message

        return limited

    async def _refuse(self, send: Any, status: int, reason: str, message: str,
                      extra: list[tuple[bytes, bytes]] | None = None) -> None:
        import orjson

        self.metrics.rejected[reason] += 1
        body = orjson.dumps({"error": message})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
        await send({"type": "http.response.body", "body": body})
