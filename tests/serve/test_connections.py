"""Slow and greedy clients against the real server process: deadlines and the connection cap hold."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest
from serve_helpers import add_version, iris_inputs

from nbdeploy.serve import process
from nbdeploy.store import Store

pytestmark = pytest.mark.server


@pytest.fixture
def strict_server(tmp_path: Path, iris_onnx, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NBDEPLOY_HEADER_TIMEOUT_S", "1")
    monkeypatch.setenv("NBDEPLOY_BODY_TIMEOUT_S", "1")
    monkeypatch.setenv("NBDEPLOY_MAX_CONNECTIONS", "40")
    store = Store(tmp_path / "home")
    add_version(store, "iris", iris_onnx)
    record = process.ensure_server(store)
    yield record
    process.stop_server(store)


def _open(record, first: bytes) -> socket.socket:
    sock = socket.create_connection((record.host, record.port), timeout=10)
    sock.sendall(first)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed the connection within ``seconds``, and what it sent before."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        return False, received
    except ConnectionResetError:
        pass
    return True, received


def test_trickled_headers_and_stalled_bodies_are_cut_off_and_the_server_keeps_answering(strict_server, iris):
    X, _, _ = iris
    record = strict_server
    header_trickle = _open(record, b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    stalled_body = _open(record, b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                 b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
    started = time.monotonic()
    for sock in (header_trickle, stalled_body):
        closed, received = _closed_within(sock, 5)
        assert closed and received.startswith(b"HTTP/1.1 408"), received
    assert time.monotonic() - started < 4
    answer = httpx.post(f"{record.url}/v2/models/iris/infer", json={"inputs": iris_inputs(X.head(1))}, timeout=10)
    assert answer.status_code == 200


def test_connections_beyond_the_cap_get_503_and_the_cap_frees_up(strict_server, iris):
    X, _, _ = iris
    record = strict_server
    held = [_open(record, b"GET /v2/health/live HTTP/1.1\r\n") for _ in range(60)]
    answers = []
    for sock in held[40:]:
        closed, received = _closed_within(sock, 5)
        answers.append(closed and received.startswith(b"HTTP/1.1 503"))
    assert all(answers), f"{answers.count(False)} connections beyond the cap were kept open"
    for sock in held:
        sock.close()
    time.sleep(0.2)
    answer = httpx.post(f"{record.url}/v2/models/iris/infer", json={"inputs": iris_inputs(X.head(1))}, timeout=10)
    assert answer.status_code == 200
