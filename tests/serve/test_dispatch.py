"""The inference routes are found before Starlette's router, on exactly the paths its routes match."""

from __future__ import annotations

import asyncio

import pytest
from serve_helpers import iris_inputs
from starlette.routing import Match

from nbdeploy.serve.dispatch import InferFirst
from nbdeploy.serve.routes import ROUTES

PATHS = ["/v2/models/iris/infer", "/v2/models/iris/versions/2/infer", "/v2/models/iris/versions/production/infer",
         "/v2/models//infer", "/v2/models/infer", "/v2/models/iris/versions//infer", "/v2/models/a/b/infer",
         "/v2/models/iris/versions/1/x/infer", "/v2/models/iris/infer/", "/v2/models/iris/inferx",
         "/models/iris/invocations", "/models/iris/versions/3/invocations", "/models//invocations",
         "/v2/models/ir is/infer", "/v2/models/iris/versions/2/2/infer", "/x/v2/models/iris/infer"]


def _dispatched(path: str, method: str) -> tuple[object, dict] | None:
    seen: list = []

    async def fallback(scope, receive, send):
        seen.append(None)

    dispatch = InferFirst(fallback, ROUTES)
    for i, (*_, endpoint) in enumerate(dispatch.table):  # record instead of answering
        async def record(scope, receive, send, endpoint=endpoint):
            seen.append((endpoint, dict(scope["path_params"])))
        dispatch.table[i] = (*dispatch.table[i][:3], record)
    asyncio.run(dispatch({"type": "http", "path": path, "method": method, "root_path": ""}, None, None))
    return seen[0]


@pytest.mark.parametrize("method", ["POST", "GET"])
@pytest.mark.parametrize("path", PATHS)
def test_the_same_paths_as_starlette_s_routes(path, method):
    expected = None
    for spec in ROUTES[:2]:
        route = spec.route()
        match, child = route.matches({"type": "http", "path": path, "method": method, "root_path": ""})
        if match is Match.FULL:
            expected = (spec.endpoint, child["path_params"])
    assert _dispatched(path, method) == expected


def test_through_the_app_with_versions_and_errors(make_client, iris):
    X, _, _ = iris
    client = make_client()
    body = {"inputs": iris_inputs(X.head(2))}
    assert client.post("/v2/models/iris/infer", json=body).json()["model_version"] == "1"
    assert client.post("/v2/models/iris/versions/1/infer", json=body).json()["model_version"] == "1"
    assert client.post("/v2/models/iris/versions/production/infer", json=body).status_code == 200
    assert client.post("/v2/models/nope/infer", json=body).status_code == 404
    assert client.get("/v2/models/iris/infer").status_code == 405
    assert client.post("/v2/models/iris/infer", content=b"{", headers={"content-type": "text/plain"}).status_code == 415
