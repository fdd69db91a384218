"""Safe defaults, enforced before any route runs: one plain ASGI middleware, and the access token.

In order, for every HTTP request:

1. ``Host`` must name the bound host or loopback (421 otherwise): a web page whose DNS name was
   rebound to 127.0.0.1 cannot talk to the server. A wildcard bind (0.0.0.0, ::) also accepts this
   machine's names and any of its addresses.
2. Cross-site requests get 403: an ``Origin`` that is not the server's own (see
   :mod:`nbdeploy.serve.origins`), or ``Sec-Fetch-Site: cross-site`` on anything but a top-level
   navigation, unless ``allowed_origins`` lists the origin; then its CORS preflight is answered here
   and its answers carry ``Access-Control-Allow-Origin``. With no setting there is no CORS at all.
3. With a token (required whenever the server binds a non-loopback address), every route but the
   health checks needs ``Authorization: Bearer <token>`` (401 otherwise).
4. Bodies over the limit get 413: by ``Content-Length``, or counted as chunks arrive.
5. Bodies must be JSON, CSV or, for V2 binary tensor requests (``Inference-Header-Content-Length``),
   ``application/octet-stream`` (415 otherwise). A non-empty body without a Content-Type is read as JSON
   from programs (tritonclient sends none) but refused from a browser (a request with ``Origin`` or
   ``Sec-Fetch-*`` headers, which browsers add), unless it carries ``Inference-Header-Content-Length``,
   which a browser cannot send cross-site without a preflight. A compressed body is refused.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import os
import secrets
import socket
from pathlib import Path
from typing import Any

from nbdeploy.errors import InvalidInput, NbdeployError
from nbdeploy.serve import origins
from nbdeploy.serve.metrics import Metrics
from nbdeploy.serve.responses import RawHeaders, send_error, send_no_content

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/ping", "/health"})
TOKEN_FILE = "server.token"
MIN_TOKEN_LENGTH = 32
BODY_TYPES = (b"application/json", b"text/csv")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
ACCEPTED_TYPES = ("expected application/json or text/csv (or application/octet-stream with "
                  "Inference-Header-Content-Length)")


def is_loopback(host: str) -> bool:
    """Only the default addresses count: any other one, even 127.0.0.2, needs the token."""
    return host in LOOPBACK_HOSTS


def allowed_hosts(bound: str, extra: list[str] | tuple[str, ...] = ()) -> frozenset[str]:
    """Host names a request may address: loopback, the bound address and ``extra``; for a wildcard
    bind (0.0.0.0, ::) also this machine's names, and (checked per request, see :func:`is_local_address`)
    any of its addresses."""
    hosts = set(LOOPBACK_HOSTS) | {bound.lower()} | {h.lower() for h in extra}
    if bound in WILDCARD_HOSTS:
        name = socket.gethostname()
        hosts |= {name.lower(), socket.getfqdn().lower()}
        with contextlib.suppress(OSError):
            hosts |= {info[4][0] for info in socket.getaddrinfo(name, None)}
    return frozenset(hosts)


def is_local_address(host: str) -> bool:
    """Whether ``host`` is an IP address of this machine (a socket can bind to it), so a server
    listening on every address can be reached there. Names are not looked up: only literals count."""
    try:
        ipaddress.ip_address(host.partition("%")[0])  # a zone id (fe80::1%eth0) goes to getaddrinfo
        family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_DGRAM,
                                                             flags=socket.AI_NUMERICHOST)[0]
    except (ValueError, OSError):
        return False
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.bind(address)
    except OSError:  # EADDRNOTAVAIL: not an address of this machine
        return False
    return True


def check_token(token: str) -> str:
    """``token`` if it is long enough to be a secret, else :class:`InvalidInput`."""
    if len(token) < MIN_TOKEN_LENGTH:
        raise InvalidInput(f"the server token has {len(token)} characters; a token needs at least "
                           f"{MIN_TOKEN_LENGTH} (secrets.token_urlsafe(32) gives 43)")
    return token


def check_settings(token: str | None, allowed_origins: frozenset[str]) -> None:
    """Refuse a token too short to be secret, and ``*`` origins without a token."""
    if token is not None:
        check_token(token)
    if origins.ANY in allowed_origins and token is None:
        raise InvalidInput("allowed_origins '*' lets any web page call the server: it needs the token "
                           "(bind a non-loopback address, or list the origins instead)")


def read_token(home: Path) -> str | None:
    """The store's server token, if the server made one (it listens beyond loopback); never creates it."""
    try:
        return (home / TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def load_or_create_token(home: Path) -> str:
    """The store's server token, created (0600, owner only) on first use. Never logged.

    A token file with a short token is refused rather than replaced: someone wrote it on purpose.
    An empty one (a crash between creating and writing it) is filled.
    """
    path = home / TOKEN_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        token = path.read_text().strip()
        if token:
            try:
                return check_token(token)
            except InvalidInput as exc:
                raise InvalidInput(f"{path}: {exc.message}; delete the file to have one generated") from None
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


def _bearer(auth: bytes) -> bytes | None:
    """The credentials of ``Authorization: Bearer <token>``; the scheme name is case-insensitive."""
    scheme, _, credentials = auth.strip().partition(b" ")
    return credentials.strip() if scheme.lower() == b"bearer" else None


class Guard:
    """The checks above, as one ASGI middleware in front of the whole app.

    ``hosts`` come from :func:`allowed_hosts` (a wildcard address among them accepts every local
    address); ``allowed_origins`` from :func:`nbdeploy.serve.origins.parse_allowed`.
    """

    def __init__(self, app: Any, *, hosts: frozenset[str], token: str | None, max_body: int,
                 metrics: Metrics | None = None, allowed_origins: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.hosts = hosts
        self.any_local = not hosts.isdisjoint(WILDCARD_HOSTS)
        self._local: set[str] = set()  # addresses found local (a few interfaces; refusals are not kept)
        check_settings(token, allowed_origins)
        self.token = token.encode() if token else None
        self.max_body = max_body
        self.metrics = metrics or Metrics()
        self.allowed_origins = allowed_origins
        self.any_origin = origins.ANY in allowed_origins

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = content_type = length = auth = encoding = origin = site = mode = dest = None
        binary = preflight = False
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
            elif key == b"origin":
                origin = value
            elif key == b"sec-fetch-site":
                site = value
            elif key == b"sec-fetch-mode":
                mode = value
            elif key == b"sec-fetch-dest":
                dest = value
            elif key == b"access-control-request-method":
                preflight = True
        if host is None or not self._our_host(_hostname(host)):
            got = "none" if host is None else repr(host.decode("latin-1"))
            await self._refuse(send, 421, "host", f"Host header {got} is not this server's address: "
                               "expected the address it listens on, or 127.0.0.1/localhost")
            return
        method = scope["method"]
        if origin is not None:
            text = origin.decode("latin-1")
            if self._allowed(text):
                if preflight and method == "OPTIONS":  # no token on a preflight: browsers never send one
                    await send_no_content(send, origins.preflight_headers(origin))
                    return
                send = _with_headers(send, origins.response_headers(origin))
            elif not origins.same_origin(text, host.decode("latin-1")):
                await self._refuse(send, 403, "origin", f"cross-origin request refused: Origin {text[:100]!r} is not "
                                   "this server's; a page may call it only from an origin listed in "
                                   "allowed_origins (NBDEPLOY_ALLOWED_ORIGINS)")
                return
        elif site == b"cross-site" and not (mode == b"navigate" and dest == b"document" and
                                            method in ("GET", "HEAD")):
            # A link followed to the server is harmless (its page then runs as the server's own);
            # anything else another site makes a browser send is refused.
            await self._refuse(send, 403, "origin", "cross-site request refused (Sec-Fetch-Site: cross-site): "
                               "a page may call this server only from an origin listed in allowed_origins "
                               "(NBDEPLOY_ALLOWED_ORIGINS)")
            return
        if self.token is not None and scope["path"] not in OPEN_PATHS:
            given = None if auth is None else _bearer(auth)
            if given is None or not hmac.compare_digest(given, self.token):
                await self._refuse(send, 401, "token", "this server needs 'Authorization: Bearer <token>' "
                                   "(the token is in the store's server.token file)",
                                   {"WWW-Authenticate": "Bearer"})
                return
        # 15 digits are petabytes; longer is refused before int() (which gives up beyond 4300 digits)
        if length is not None and (not length.isdigit() or len(length) > 15 or int(length) > self.max_body):
            await self._refuse(send, 413, "size", f"request body is over the {self.max_body} byte limit "
                               f"(Content-Length {length.decode('latin-1')[:20]})")
            return
        if encoding is not None and encoding.strip().lower() != b"identity":
            await self._refuse(send, 415, "encoding", f"Content-Encoding {encoding.decode('latin-1')!r} is not "
                               "accepted: send the body uncompressed")
            return
        if content_type is not None:
            media = content_type.split(b";")[0].strip().lower()
            if not (media in BODY_TYPES or media.endswith(b"+json") or
                    (binary and media == b"application/octet-stream")):
                await self._refuse(send, 415, "media", f"Content-Type {media.decode('latin-1')!r} is not accepted: "
                                   f"{ACCEPTED_TYPES}")
                return
        elif method in BODY_METHODS and not binary and length != b"0" and (
                origin is not None or site is not None or mode is not None):
            # An untyped body from a browser is what a page on another site can send without a preflight.
            # Programs (tritonclient with JSON tensors, scripts) send no Origin or Sec-Fetch-* headers,
            # which every current browser adds: their untyped JSON is read as before.
            await self._refuse(send, 415, "media", f"a request body needs a Content-Type: {ACCEPTED_TYPES}")
            return
        if length is None and method not in ("GET", "HEAD"):
            receive = self._counting(receive)
        await self.app(scope, receive, send)

    def _allowed(self, origin: str) -> bool:
        """Whether ``allowed_origins`` lets ``origin`` in (and so gets CORS answers)."""
        if not self.allowed_origins:
            return False
        normal = origins.normalize(origin)
        return normal is not None and (self.any_origin or normal in self.allowed_origins)

    def _our_host(self, name: str) -> bool:
        if name in self.hosts or name in self._local:
            return True
        if self.any_local and is_local_address(name):
            if len(self._local) < 256:
                self._local.add(name)
            return True
        return False

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
                      headers: dict[str, str] | None = None) -> None:
        self.metrics.rejected[reason] += 1
        await send_error(send, status, message, headers)


def _with_headers(send: Any, extra: RawHeaders) -> Any:
    """``send``, adding ``extra`` to the response's headers."""

    async def sending(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return sending
