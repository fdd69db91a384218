"""Web origins: which pages may call the server from a browser, and the CORS headers that say so.

An origin is ``scheme://host[:port]`` as browsers send it in the ``Origin`` header. A request is
same-origin when its ``Origin`` names the address the request was sent to (its ``Host`` header):
the server's own pages (``/docs``), directly or through a proxy that keeps the ``Host`` header
(jupyter-server-proxy does). Every other origin is refused unless ``allowed_origins`` lists it;
listing it also turns on CORS answers for it (see :mod:`nbdeploy.serve.security`).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from nbdeploy.errors import InvalidInput

ANY = "*"
"""In ``allowed_origins``: every origin (only with a token: each call must still carry it)."""
DEFAULT_PORTS = {"http": 80, "https": 443}

ALLOW_METHODS = b"GET, POST"
ALLOW_HEADERS = b"Authorization, Content-Type, Inference-Header-Content-Length"
EXPOSE_HEADERS = b"X-Request-ID, Inference-Header-Content-Length, Retry-After"
"""Response headers a page may read: the prediction id (to send feedback), the V2 binary header
length, and when to retry a full queue."""
PREFLIGHT_MAX_AGE = b"600"


def normalize(origin: str) -> str | None:
    """``origin`` as ``scheme://host[:port]`` (lower case, default port dropped); None when it is
    not an http(s) origin (``null``, a path, credentials, a bad port)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in DEFAULT_PORTS or not host or "@" in parts.netloc or parts.path not in ("", "/") \
            or parts.query or parts.fragment:
        return None
    name = f"[{host}]" if ":" in host else host
    return f"{scheme}://{name}" if port in (None, DEFAULT_PORTS[scheme]) else f"{scheme}://{name}:{port}"


def parse_allowed(text: str) -> frozenset[str]:
    """The ``allowed_origins`` setting (comma-separated origins, or ``*``) as normalized origins."""
    allowed = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        origin = ANY if item == ANY else normalize(item)
        if origin is None:
            raise InvalidInput(f"allowed_origins: {item!r} is not an origin: expected scheme://host[:port] "
                               "(for example https://app.example.org or http://localhost:3000), or *")
        allowed.add(origin)
    return frozenset(allowed)


def same_origin(origin: str, host: str) -> bool:
    """Whether ``origin`` names the address in the ``Host`` header (http or https: a proxy in front may
    terminate TLS)."""
    normal = normalize(origin)
    if normal is None:
        return False
    scheme, _, netloc = normal.partition("://")
    host = host.strip().lower()
    default = f":{DEFAULT_PORTS[scheme]}"
    return netloc == (host[:-len(default)] if host.endswith(default) else host)


def preflight_headers(origin: bytes) -> list[tuple[bytes, bytes]]:
    """The answer to an allowed origin's preflight (``OPTIONS`` with ``Access-Control-Request-Method``)."""
    return [(b"access-control-allow-origin", origin), (b"access-control-allow-methods", ALLOW_METHODS),
            (b"access-control-allow-headers", ALLOW_HEADERS), (b"access-control-max-age", PREFLIGHT_MAX_AGE),
            (b"vary", b"Origin")]


def response_headers(origin: bytes) -> list[tuple[bytes, bytes]]:
    """Added to every answer to an allowed origin, so its page may read the answer."""
    return [(b"access-control-allow-origin", origin), (b"access-control-expose-headers", EXPOSE_HEADERS),
            (b"vary", b"Origin")]
