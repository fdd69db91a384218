"""Through the real server process: a wildcard bind answers on this machine's addresses and names,
and ``--allow-origin`` reaches the server."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serve_helpers import add_version

from nbdeploy.store import Store

pytestmark = pytest.mark.server
APP = "http://localhost:3000"


def _outbound_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has one."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))
        return s.getsockname()[0]
    return None


@contextlib.contextmanager
def serving(store: Store, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    proc = subprocess.Popen([sys.executable, "-m", "nbdeploy.cli", "serve", "--home", str(store.home), "--port", "0",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while (record := store.server()) is None or record.pid != proc.pid or record.applied < 0:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "exited"
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        yield proc, record.port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_a_wildcard_bind_answers_on_every_address_of_this_machine(tmp_path: Path, iris_onnx):
    store = Store(tmp_path / "home")
    add_version(store, "iris", iris_onnx)
    with serving(store, "--host", "0.0.0.0", "--allow-origin", APP) as (_, port):
        auth = {"Authorization": f"Bearer {(store.home / 'server.token').read_text().strip()}"}
        addresses = ["127.0.0.1", "127.0.0.2"]
        if (address := _outbound_address()) not in (None, "127.0.0.1"):
            addresses.append(address)  # an interface address, which the host name may not resolve to
        for address in addresses:
            resp = httpx.get(f"http://{address}:{port}/v2", headers=auth)
            assert resp.status_code == 200, (address, resp.text)
        name = socket.gethostname()
        resp = httpx.get(f"http://127.0.0.1:{port}/v2", headers={**auth, "Host": f"{name}:{port}"})
        assert resp.status_code == 200, resp.text
        resp = httpx.get(f"http://127.0.0.1:{port}/v2", headers={**auth, "Host": f"203.0.113.7:{port}"})
        assert resp.status_code == 421
        preflight = {"Origin": APP, "Access-Control-Request-Method": "POST"}
        resp = httpx.options(f"http://127.0.0.1:{port}/v2/models/iris/infer", headers=preflight)
        assert resp.status_code == 204 and resp.headers["access-control-allow-origin"] == APP
        resp = httpx.get(f"http://127.0.0.1:{port}/v2", headers={**auth, "Origin": "https://evil.example"})
        assert resp.status_code == 403


def test_any_origin_on_loopback_is_refused_at_start(tmp_path: Path, iris_onnx):
    store = Store(tmp_path / "home")
    add_version(store, "iris", iris_onnx)
    proc = subprocess.run([sys.executable, "-m", "nbdeploy.cli", "serve", "--home", str(store.home), "--port", "0",
                           "--allow-origin", "*"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "allowed_origins '*'" in proc.stderr and "needs the token" in proc.stderr
