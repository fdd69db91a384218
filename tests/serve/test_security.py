"""Safe defaults: Host check, token, body limits, media types, nesting and size caps, no unpickling."""

from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import orjson
import pytest
from serve_helpers import iris_inputs

import nbdeploy.serve
from nbdeploy.serve.config import ServeConfig
from nbdeploy.serve.security import allowed_hosts, is_loopback, load_or_create_token

TOKEN = "t" * 43


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "HEAD"])
@pytest.mark.parametrize("path", ["/v2", "/v2/health/live", "/v2/models/iris/infer", "/metrics", "/nothing"])
def test_foreign_host_is_refused_for_every_method(client, method, path):
    resp = client.request(method, path, headers={"Host": "evil.example:8000"})
    assert resp.status_code == 421
    if method != "HEAD":
        assert "Host header 'evil.example:8000'" in resp.json()["error"]


@pytest.mark.parametrize("host", ["127.0.0.1:9000", "localhost", "LOCALHOST:1", "[::1]:8000"])
def test_loopback_hosts_are_accepted(client, host):
    assert client.get("/v2/health/live", headers={"Host": host}).status_code == 200


def test_allowed_hosts_for_a_wildcard_bind_include_this_machine():
    import socket

    assert socket.gethostname().lower() in allowed_hosts("0.0.0.0")
    assert "10.1.2.3" in allowed_hosts("10.1.2.3") and "evil.example" not in allowed_hosts("10.1.2.3")
    assert is_loopback("127.0.0.1") and not is_loopback("127.0.0.2") and not is_loopback("0.0.0.0")


def _outbound_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has one."""
    import contextlib
    import socket

    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))
        return s.getsockname()[0]
    return None


def test_a_wildcard_bind_accepts_this_machines_addresses_and_names(make_client):
    import socket

    client = make_client(hosts=allowed_hosts("0.0.0.0"))
    mine = ["127.0.0.2:8000", "127.1.2.3", f"{socket.gethostname()}:8000", "[::1]:8000"]
    if (address := _outbound_address()) not in (None, "127.0.0.1"):
        mine.append(f"{address}:8000")  # an interface address, which the host name may not resolve to
    for host in mine:
        assert client.get("/v2", headers={"Host": host}).status_code == 200, host
    for host in ("203.0.113.7:8000", "[2001:db8::1]:8000", "evil.example", "127.0.0.1.evil.example", "1.2.3"):
        resp = client.get("/v2", headers={"Host": host})
        assert resp.status_code == 421, host
    only = make_client(hosts=allowed_hosts("127.0.0.1"))  # bound to one address: only that one
    assert only.get("/v2", headers={"Host": "127.0.0.2:8000"}).status_code == 421


def test_a_content_length_of_thousands_of_digits_is_413_not_500(client):
    resp = client.post("/v2/models/iris/infer", content=b"{}",
                       headers={"Content-Type": "application/json", "Content-Length": "9" * 5000})
    assert resp.status_code == 413


def test_token_guards_everything_but_health(make_client, iris):
    X, _, _ = iris
    client = make_client(token=TOKEN)
    for path in ("/v2/health/live", "/v2/health/ready", "/ping", "/health"):
        assert client.get(path).status_code == 200, path
    for path in ("/v2", "/metrics", "/v2/models/iris", "/openapi.json"):
        resp = client.get(path)
        assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer", path
        assert TOKEN not in resp.text
    body = {"inputs": iris_inputs(X.head(1))}
    assert client.post("/v2/models/iris/infer", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = client.post("/v2/models/iris/infer", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(make_client, scheme):
    client = make_client(token=TOKEN)
    assert client.get("/v2", headers={"Authorization": f"{scheme} {TOKEN}"}).status_code == 200
    assert client.get("/v2", headers={"Authorization": f"{scheme}  {TOKEN} "}).status_code == 200
    for wrong in (f"Basic {TOKEN}", f"Bearer{TOKEN}", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN.upper()}", TOKEN):
        assert client.get("/v2", headers={"Authorization": wrong}).status_code == 401, wrong


def test_short_tokens_are_refused(tmp_path: Path, store):
    from nbdeploy.errors import InvalidInput
    from nbdeploy.serve.app import create_app

    (tmp_path / "server.token").write_text("hunter2\n")
    with pytest.raises(InvalidInput, match=r"server.token: the server token has 7 characters; .* at least 32"):
        load_or_create_token(tmp_path)
    assert (tmp_path / "server.token").read_text() == "hunter2\n"  # refused, not silently replaced
    (tmp_path / "server.token").write_text("")  # a crash between creating and writing it
    assert len(load_or_create_token(tmp_path)) >= 32
    for short in ("x" * 31, ""):  # e.g. NBDEPLOY_TOKEN on Ray nodes
        with pytest.raises(InvalidInput, match="at least 32"):
            create_app(store, token=short)


def test_token_file_is_private_and_stable(tmp_path: Path):
    token = load_or_create_token(tmp_path)
    path = tmp_path / "server.token"
    assert len(token) >= 40 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.chmod(path, 0o644)
    assert load_or_create_token(tmp_path) == token and stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_bodies_over_the_limit_get_413_by_length_and_by_chunks(make_client, iris):
    X, _, _ = iris
    client = make_client(config=ServeConfig(max_body_bytes=1000))
    big = b'{"inputs": [' + b" " * 2000 + b"]}"
    resp = client.post("/v2/models/iris/infer", content=big, headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and "1000 byte limit" in resp.json()["error"]

    def chunks():
        for _ in range(20):
            yield b" " * 100

    resp = client.post("/v2/models/iris/infer", content=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status_code == 413
    resp = client.post("/models/iris/invocations", content=chunks(), headers={"Content-Type": "text/csv"})
    assert resp.status_code == 413
    assert client.post("/v2/models/iris/infer", json={"inputs": iris_inputs(X.head(1))}).status_code == 200


@pytest.mark.parametrize(("headers", "status"), [
    ({"Content-Type": "text/plain"}, 415),
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
    ({"Content-Type": "application/octet-stream"}, 415),
    ({"Content-Type": "application/json", "Content-Encoding": "gzip"}, 415),
    ({"Content-Type": "application/json; charset=utf-8"}, 200),
    ({"Origin": "http://127.0.0.1"}, 415),  # a browser's untyped body (same origin, and still refused)
    ({}, 200),  # a program's untyped JSON, as tritonclient sends it
])
def test_only_json_and_csv_bodies(client, iris, headers, status):
    X, _, _ = iris
    body = orjson.dumps({"inputs": iris_inputs(X.head(1))})
    resp = client.post("/v2/models/iris/infer", content=body, headers=headers)
    assert resp.status_code == status, resp.text
    if status == 415:
        assert "expected application/json" in resp.json()["error"] or "uncompressed" in resp.json()["error"]


def test_deep_nesting_and_element_caps_are_400_not_500(make_client):
    client = make_client(config=ServeConfig(max_elements=100))
    deep = b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 10], "data": 1}], "parameters": '
    for depth in (40, 2000):
        body = deep + b'{"a":' * depth + b"1" + b"}" * depth + b"}"
        resp = client.post("/v2/models/diabetes/infer", content=body, headers={"Content-Type": "application/json"})
        assert resp.status_code == 400, resp.text
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [11, 10], "data": [0.0] * 110}]}
    resp = client.post("/v2/models/diabetes/infer", json=body)
    assert resp.status_code == 400 and "more than the 100 allowed" in resp.json()["error"]
    resp = client.post("/models/diabetes/invocations", json={"inputs": [[0.0] * 10] * 11})
    assert resp.status_code == 400 and "more than the 100 allowed" in resp.json()["message"]


FORBIDDEN = {"pickle", "cPickle", "_pickle", "joblib", "cloudpickle", "dill", "shelve", "skops", "sklearn", "marshal"}


def test_the_server_package_never_imports_anything_that_unpickles():
    for path in Path(nbdeploy.serve.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
            if isinstance(node, ast.keyword):
                assert node.arg != "allow_pickle", f"{path.name} passes allow_pickle"
