"""The inference routes, found before Starlette's router: a prefix and a suffix, no regular expression.

They carry the traffic, so they skip what every other route goes through after the security guard:
Starlette's exception middleware (a ``Request`` and a wrapped ``send`` per request) and its router
(a regular expression per route tried). The inference routes answer every error themselves
(:class:`~nbdeploy.serve.inference.InferenceRoute`), so they need neither.

:class:`InferFirst` sits right after the guard (see :func:`nbdeploy.serve.app.create_app`) and
reads the table from the route table's versioned inference rows, so a path matches here exactly
when Starlette's route would match it: ``<prefix>{name}[/versions/{version}]<suffix>``, each segment
non-empty and without ``/``. Anything else, a wrong method included, goes on to Starlette, which
answers as before (405, 404, ...).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nbdeploy.serve.inference import InferenceRoute
from nbdeploy.serve.routing import RouteSpec

NAME = "{name}"


class InferFirst:
    """ASGI middleware: the versioned inference routes of ``specs`` matched by prefix and suffix."""

    def __init__(self, app: Any, specs: Iterable[RouteSpec]) -> None:
        self.app = app
        self.table = [(s.method, *s.path.split(NAME), s.endpoint) for s in specs
                      if s.versioned and isinstance(s.endpoint, InferenceRoute)]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            path = scope["path"]
            for method, prefix, suffix, endpoint in self.table:
                if path.endswith(suffix) and path.startswith(prefix) and scope["method"] == method:
                    params = path_params(path[len(prefix):len(path) - len(suffix)])
                    if params is not None:
                        scope["path_params"] = params
                        scope["endpoint"] = endpoint
                        await endpoint(scope, receive, send)
                        return
        await self.app(scope, receive, send)


def path_params(middle: str) -> dict[str, Any] | None:
    """``name`` or ``name/versions/v`` as the route's parameters (version None when absent); None when
    the text is neither."""
    if "/" not in middle:
        return {"name": middle, "version": None} if middle else None
    parts = middle.split("/")
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return {"name": parts[0], "version": parts[2]}
    return None
