"""What one row of the route table says, and how it becomes a Starlette route and OpenAPI paths.

A :class:`RouteSpec` names an operation once: method, path, endpoint, and what the document says
of it. ``versioned`` operations also answer under ``/versions/{version}`` (a number or an alias)
right after ``{name}``: one Starlette route with a path convertor that matches the segment or
nothing, documented as two paths, so clients and generators see both forms.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.convertors import Convertor, register_url_convertor
from starlette.routing import Route

JSON = "application/json"
VERSION_SEGMENT = "/versions/{version}"


class VersionSegment(Convertor[str | None]):
    """Matches nothing or ``/versions/<v>``; yields ``None`` or ``"<v>"``."""

    regex = "(?:/versions/[^/]+)?"

    def convert(self, value: str) -> str | None:
        return value[len("/versions/"):] if value else None

    def to_string(self, value: str | None) -> str:
        return f"/versions/{value}" if value else ""


register_url_convertor("versionseg", VersionSegment())


@dataclass(frozen=True)
class Reply:
    """One documented answer: its description and, when it has a body, the body's schema (a name in
    the document's components) and media type."""

    description: str = "OK"
    schema: str | None = None
    media_type: str = JSON


@dataclass(frozen=True, eq=False)
class RouteSpec:
    """One operation of the server: what Starlette routes and what the OpenAPI document shows.

    ``path`` is written without the version segment. ``request`` maps media types to schema names;
    ``errors`` are the statuses answered with the error body.
    """

    method: str
    path: str
    endpoint: Any  # a Starlette request handler, or a plain ASGI app (the inference hot path)
    operation_id: str
    summary: str
    responses: Mapping[int, Reply]
    errors: tuple[int, ...] = ()
    request: Mapping[str, str] = field(default_factory=dict)
    request_required: bool = True
    versioned: bool = False

    def __post_init__(self) -> None:
        if self.versioned and "{name}" not in self.path:
            raise ValueError(f"{self.path}: a versioned route needs a {{name}} to put the version after")

    def route(self) -> Route:
        """The Starlette route: one route, with or without the version segment."""
        path = self.path.replace("{name}", "{name}{version:versionseg}") if self.versioned else self.path
        return Route(path, self.endpoint, methods=[self.method])

    def documented(self) -> list[tuple[str, str]]:
        """(path, operationId) as documented: the plain path, and the versioned one when there is one."""
        paths = [(self.path, self.operation_id)]
        if self.versioned:
            paths.append((self.path.replace("{name}", "{name}" + VERSION_SEGMENT), self.operation_id + "_version"))
        return paths


def path_parameters(path: str) -> list[str]:
    """The ``{...}`` names of a documented path, in order."""
    return re.findall(r"{(\w+)}", path)

