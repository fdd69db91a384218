"""Browsers: cross-site requests are refused, bodies need a content type, CORS only for listed origins."""

from __future__ import annotations

import orjson
import pytest
from serve_helpers import iris_inputs

from nbdeploy.errors import InvalidInput
from nbdeploy.serve.app import create_app
from nbdeploy.serve.config import ServeConfig
from nbdeploy.serve.origins import normalize, parse_allowed, same_origin

TOKEN = "t" * 43
EVIL = "https://evil.example"
APP = "http://localhost:3000"
JSON = "application/json"


@pytest.fixture
def body(iris) -> bytes:
    X, _, _ = iris
    return orjson.dumps({"inputs": iris_inputs(X.head(1))})


def test_a_page_on_another_site_cannot_infer(client, body):
    # what a page's fetch() with a Blob body, or a form, makes a browser send: a "simple" request
    for headers in ({"Origin": EVIL}, {"Origin": EVIL, "Content-Type": "application/json"},
                    {"Origin": "null"}, {"Origin": "http://127.0.0.1:9999"}, {"Origin": "http://localhost"}):
        resp = client.post("/v2/models/iris/infer", content=body, headers=headers)
        assert resp.status_code == 403, (headers, resp.text)
        assert "cross-origin request refused" in resp.json()["error"] and "allowed_origins" in resp.json()["error"]
        assert not any(h.startswith("access-control-") for h in resp.headers)
    resp = client.post("/models/iris/invocations", json={"instances": [[1, 2, 3, 4]]}, headers={"Origin": EVIL})
    assert resp.status_code == 403


class Labels:
    """A prediction log that only records the feedback it is given."""

    def __init__(self) -> None:
        self.given: list[object] = []

    def put(self, event: object) -> None:
        pass

    def feedback(self, name: str, items: object) -> dict[str, object]:
        self.given.append(items)
        return {"accepted": 1, "updated": 0, "unchanged": 0, "errors": []}


def test_a_page_on_another_site_cannot_send_labels(make_client):
    labels = Labels()
    client = make_client(sink=labels)
    resp = client.post("/v2/models/iris/feedback", content=b'{"id": "p0", "label": 2}',
                       headers={"Origin": EVIL, "Content-Type": "text/plain"})
    assert resp.status_code == 403
    resp = client.post("/v2/models/iris/feedback", json={"id": "p0", "label": 2}, headers={"Origin": EVIL})
    assert resp.status_code == 403
    resp = client.post("/v2/models/iris/feedback", content=b'{"id": "p0", "label": 2}',
                       headers={"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors"})
    assert resp.status_code == 415  # an untyped body from a browser: refused whatever the site says
    assert labels.given == []
    resp = client.post("/v2/models/iris/feedback", json={"id": "p0", "label": 2})
    assert resp.status_code == 200 and labels.given == [{"id": "p0", "label": 2}]  # a program, not a page


@pytest.mark.parametrize("mode", ["cors", "no-cors"])
def test_sec_fetch_site_cross_site_is_refused_but_a_followed_link_is_not(client, body, mode):
    fetch = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": mode, "Sec-Fetch-Dest": "empty"}
    resp = client.post("/v2/models/iris/infer", content=body, headers={**fetch, "Content-Type": "application/json"})
    assert resp.status_code == 403 and "Sec-Fetch-Site: cross-site" in resp.json()["error"]
    assert client.get("/v2/models/iris", headers=fetch).status_code == 403  # an <img>, a <script>: no peeking
    link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    assert client.get("/docs", headers=link).status_code == 200
    framed = {**link, "Sec-Fetch-Dest": "iframe"}  # the docs page's buttons inside someone's frame
    assert client.get("/docs", headers=framed).status_code == 403
    same = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": mode}
    assert client.post("/v2/models/iris/infer", content=body,
                       headers={**same, "Content-Type": "application/json"}).status_code == 200


@pytest.mark.parametrize(("origin", "host"), [
    ("http://127.0.0.1", "127.0.0.1"),
    ("http://127.0.0.1:8000", "127.0.0.1:8000"),
    ("http://LOCALHOST:8000", "localhost:8000"),
    ("http://[::1]:8000", "[::1]:8000"),
    ("https://hub.example.org", "hub.example.org"),  # through jupyter-server-proxy, which keeps Host
    ("http://127.0.0.1", "127.0.0.1:80"),
])
def test_the_servers_own_pages_may_call_it(make_client, body, origin, host):
    client = make_client(hosts=frozenset({"127.0.0.1", "localhost", "::1", "hub.example.org"}))
    resp = client.post("/v2/models/iris/infer", content=body,
                       headers={"Origin": origin, "Host": host, "Content-Type": "application/json"})
    assert resp.status_code == 200, resp.text
    assert "access-control-allow-origin" not in resp.headers  # same origin: no CORS needed, none given


def test_same_origin_compares_host_and_port():
    assert same_origin("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert same_origin("https://x.org", "x.org:443") and same_origin("http://x.org:80", "x.org")
    assert not same_origin("http://127.0.0.1:8001", "127.0.0.1:8000")
    assert not same_origin("http://localhost:8000", "127.0.0.1:8000")
    assert not same_origin("null", "127.0.0.1") and not same_origin("file://", "127.0.0.1")
    assert not same_origin("http://evil.example@127.0.0.1:8000", "127.0.0.1:8000")
    assert normalize("HTTPS://App.Example.org:443/") == "https://app.example.org"
    assert normalize("http://[::1]:80") == "http://[::1]" and normalize("http://x.org:99999") is None


@pytest.mark.parametrize(("headers", "status"), [
    ({"Sec-Fetch-Mode": "no-cors"}, 415),  # a browser's untyped body
    ({}, 200),  # a program's untyped JSON (tritonclient sends no Content-Type)
    ({"Content-Type": "text/plain"}, 415),
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
    ({"Content-Type": "application/json"}, 200),
    ({"Content-Type": "application/vnd.api+json"}, 200),
])
def test_a_body_needs_a_json_csv_or_binary_content_type(client, body, headers, status):
    resp = client.post("/v2/models/iris/infer", content=body, headers=headers)
    assert resp.status_code == status, resp.text
    if status == 415:
        error = resp.json()["error"]
        assert "application/json" in error and "text/csv" in error and "application/octet-stream" in error


def test_an_empty_post_needs_no_content_type(client):
    # tritonclient's repository index request: an empty body, nothing a page could smuggle in
    resp = client.post("/v2/repository/index", headers={"Content-Length": "0"})
    assert resp.status_code == 200, resp.text


def test_no_cors_by_default(client, body):
    preflight = {"Origin": APP, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    resp = client.options("/v2/models/iris/infer", headers=preflight)
    assert resp.status_code == 403 and not any(h.startswith("access-control-") for h in resp.headers)
    resp = client.get("/v2", headers={"Origin": APP})
    assert resp.status_code == 403 and "access-control-allow-origin" not in resp.headers


def test_allowed_origins_get_cors_answers_and_others_still_do_not(make_client, body):
    client = make_client(config=ServeConfig(allowed_origins=f"{APP}, https://app.example.org/"))
    preflight = {"Origin": APP, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type, inference-header-content-length"}
    resp = client.options("/v2/models/iris/infer", headers=preflight)
    assert resp.status_code == 204 and resp.content == b""
    assert resp.headers["access-control-allow-origin"] == APP
    assert "POST" in resp.headers["access-control-allow-methods"]
    assert "Content-Type" in resp.headers["access-control-allow-headers"]
    assert "origin" in resp.headers["vary"].lower()
    as_app, as_evil = {"Origin": APP, "Content-Type": JSON}, {"Origin": EVIL, "Content-Type": JSON}
    resp = client.post("/v2/models/iris/infer", content=body, headers=as_app)
    assert resp.status_code == 200 and resp.headers["access-control-allow-origin"] == APP
    assert "X-Request-ID" in resp.headers["access-control-expose-headers"]  # the prediction id, for feedback
    resp = client.post("/models/iris/invocations", json={"instances": [[1, 2, 3, 4]]},
                       headers={"Origin": "https://app.example.org"})
    assert resp.status_code == 200 and resp.headers["access-control-allow-origin"] == "https://app.example.org"
    assert "X-Request-ID" in resp.headers["access-control-expose-headers"]
    resp = client.post("/v2/models/iris/infer", content=b"{", headers=as_app)
    assert resp.status_code == 400 and resp.headers["access-control-allow-origin"] == APP  # errors are readable too
    resp = client.post("/v2/models/iris/infer", content=body, headers=as_evil)
    assert resp.status_code == 403 and "access-control-allow-origin" not in resp.headers
    assert client.options("/v2/models/iris/infer", headers={**preflight, "Origin": EVIL}).status_code == 403


def test_any_origin_needs_the_token(make_client, store, body):
    with pytest.raises(InvalidInput, match="needs the token"):
        create_app(store, config=ServeConfig(allowed_origins="*"))
    client = make_client(token=TOKEN, config=ServeConfig(allowed_origins="*"))
    preflight = {"Origin": EVIL, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    resp = client.options("/v2/models/iris/infer", headers=preflight)  # a preflight carries no token
    assert resp.status_code == 204 and "Authorization" in resp.headers["access-control-allow-headers"]
    headers = {"Origin": EVIL, "Content-Type": "application/json"}
    resp = client.post("/v2/models/iris/infer", content=body, headers=headers)
    assert resp.status_code == 401 and resp.headers["access-control-allow-origin"] == EVIL
    resp = client.post("/v2/models/iris/infer", content=body, headers={**headers, "Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200 and resp.headers["access-control-allow-origin"] == EVIL


def test_allowed_origins_setting_is_checked():
    assert parse_allowed(" http://a.org ,https://b.org:8443,, ") == {"http://a.org", "https://b.org:8443"}
    assert ServeConfig.from_env({"NBDEPLOY_ALLOWED_ORIGINS": "http://a.org,*"}).origins == {"http://a.org", "*"}
    assert ServeConfig(allowed_origins=["http://a.org", "http://b.org"]).origins == {"http://a.org", "http://b.org"}
    for bad in ("a.org", "ftp://a.org", "http://a.org/path", "null", "http://user@a.org"):
        with pytest.raises(InvalidInput, match="is not an origin"):
            ServeConfig(allowed_origins=bad)
