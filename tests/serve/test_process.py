"""Through the real server process: tritonclient with its defaults, a swap under load, SIGTERM drain,
owner-only store files, and a stop that signals only the process the store recorded."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from serve_helpers import add_version, iris_inputs

from nbdeploy.serve import process
from nbdeploy.store import PRODUCTION, Store

pytestmark = pytest.mark.server


@pytest.fixture
def server(tmp_path: Path, iris_onnx):
    store = Store(tmp_path / "home")
    add_version(store, "iris", iris_onnx)
    record = process.ensure_server(store)
    yield store, record
    process.stop_server(store)


@pytest.fixture
def server_on_each_backend(store_home: str, iris_onnx):
    """The real server over a store on SQLite, then on PostgreSQL."""
    store = Store(store_home)
    add_version(store, "iris", iris_onnx)
    record = process.ensure_server(store)
    yield store, record
    process.stop_server(store)


def test_tritonclient_with_its_defaults(server, iris):
    X, _, model = iris
    _, record = server
    client = triton.InferenceServerClient(url=f"{record.host}:{record.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("iris")
    assert client.get_server_metadata()["name"] == "nbdeploy"
    meta = client.get_model_metadata("iris")
    inputs = []
    for spec in meta["inputs"]:
        arr = X[[spec["name"]]].to_numpy(np.float32)
        inputs.append(triton.InferInput(spec["name"], list(arr.shape), spec["datatype"]))
        inputs[-1].set_data_from_numpy(arr)  # binary tensor data: tritonclient's default
    result = client.infer("iris", inputs, request_id="r-1")
    assert result.get_response()["id"] == "r-1"
    assert result.as_numpy("label").tolist() == model.predict(X).tolist()
    np.testing.assert_allclose(result.as_numpy("probabilities"), model.predict_proba(X), atol=1e-5)
    only = client.infer("iris", inputs, model_version="1", outputs=[triton.InferRequestedOutput("label")])
    assert only.as_numpy("probabilities") is None and only.get_response()["model_version"] == "1"
    client.close()


def test_swap_under_constant_load_fails_no_request(server_on_each_backend, iris, iris_onnx):
    X, _, _ = iris
    store, record = server_on_each_backend
    body = {"inputs": iris_inputs(X.head(2))}
    stop = threading.Event()
    seen: list[tuple[int, str]] = []

    def load() -> None:
        with httpx.Client(base_url=record.url, timeout=10) as client:
            while not stop.is_set():
                resp = client.post("/v2/models/iris/infer", json=body)
                seen.append((resp.status_code, resp.json().get("model_version", resp.text)))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(2):  # two swaps: a new version each time, production moved under load
        time.sleep(0.3)
        version = store.register("iris", *iris_onnx)
        store.set_alias("iris", PRODUCTION, version)
        process.wait_applied(store, store.generation(), timeout=30)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    assert seen and all(status == 200 for status, _ in seen), [s for s in seen if s[0] != 200][:3]
    versions = [v for _, v in seen]
    assert versions[0] == "1" and versions[-1] == "3" and set(versions) == {"1", "2", "3"}


def _port(store: Store, proc: subprocess.Popen, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = store.server()
        if record is not None and record.pid == proc.pid and record.applied >= 0:
            return record.port
        assert proc.poll() is None, "the server exited at start-up"
        time.sleep(0.02)
    raise AssertionError("the server did not start")


def test_sigterm_drains_then_exits_cleanly(tmp_path: Path, iris_onnx, iris):
    X, _, _ = iris
    store = Store(tmp_path / "home")
    add_version(store, "iris", iris_onnx)
    env = {**os.environ, "NBDEPLOY_DRAIN_SECONDS": "0.6"}
    proc = subprocess.Popen([sys.executable, "-m", "nbdeploy.cli", "serve", "--home", str(store.home), "--port", "0"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        port = _port(store, proc)
        body = httpx.Request("POST", f"http://127.0.0.1:{port}/v2/models/iris/infer",
                             json={"inputs": iris_inputs(X.head(1))})
        raw = (f"POST /v2/models/iris/infer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body.content)}\r\n\r\n").encode()
        in_flight = socket.create_connection(("127.0.0.1", port))
        in_flight.sendall(raw + body.content[:10])  # a request in flight: half its body sent
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            assert client.get("/v2/health/ready").status_code == 200
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.1)
            assert client.get("/v2/health/ready").status_code == 503  # readiness goes first
            assert client.post("/v2/models/iris/infer", json={"inputs": iris_inputs(X.head(1))}).status_code == 200
        in_flight.sendall(body.content[10:])
        answer = in_flight.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        in_flight.close()
        assert proc.wait(timeout=15) == 0
        assert store.server() is None
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_non_loopback_bind_needs_the_token_which_is_never_logged(tmp_path: Path, iris_onnx):
    store = Store(tmp_path / "home")
    add_version(store, "iris", iris_onnx)
    proc = subprocess.Popen([sys.executable, "-m", "nbdeploy.cli", "serve", "--home", str(store.home), "--port", "0",
                             "--host", "127.0.0.2", "--log-level", "info"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        port = _port(store, proc)
        token = (store.home / "server.token").read_text().strip()
        base = f"http://127.0.0.2:{port}"
        assert httpx.get(f"{base}/v2/health/ready").status_code == 200
        assert httpx.get(f"{base}/v2").status_code == 401
        assert httpx.get(f"{base}/v2", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=15)[0].decode()
        assert "server.token" in output and token not in output
        assert token not in (store.home / "server.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_and_server_files_are_owner_only(tmp_path: Path, iris_onnx, iris):
    X, _, _ = iris
    previous = os.umask(0o022)  # the usual umask: files would be world-readable
    try:
        store = Store(tmp_path / "home")
        add_version(store, "iris", iris_onnx)
        record = process.ensure_server(store)
        try:
            resp = httpx.post(f"{record.url}/v2/models/iris/infer", json={"inputs": iris_inputs(X.head(3))})
            assert resp.status_code == 200
        finally:
            assert process.stop_server(store) is True
        assert not process.pid_alive(record.pid)
    finally:
        os.umask(previous)
    home = store.home
    assert (home / "log.db").exists() and (home / "server.log").exists()
    dirs = [home, *(p for p in home.rglob("*") if p.is_dir())]
    files = [p for p in home.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"nbdeploy.db", "log.db", "server.log", "server.lock", "model.onnx", "model.json"}
    assert {p.relative_to(home).as_posix(): oct(_mode(p)) for p in dirs if _mode(p) != 0o700} == {}
    assert {p.relative_to(home).as_posix(): oct(_mode(p)) for p in files if _mode(p) != 0o600} == {}


@pytest.mark.parametrize("recorded", ["with its start time", "without a start time"])
def test_stop_server_never_signals_another_process_given_the_recorded_pid(tmp_path: Path, recorded):
    store = Store(tmp_path / "home")
    store.set_server(os.getpid(), "127.0.0.1", 9)  # a server that crashed without clearing its record ...
    bystander = subprocess.Popen(["sleep", "30"])  # ... and an unrelated process that got its PID
    try:
        with sqlite3.connect(store.db_path) as db:
            db.execute("UPDATE server SET pid = ?" + (", proc_start = NULL" if recorded != "with its start time"
                                                       else ""), (bystander.pid,))
        assert store.server().pid == bystander.pid
        assert process.stop_server(store, timeout=1) is False
        time.sleep(0.3)
        assert bystander.poll() is None, "stop_server signalled a process that is not the server"
        assert store.server() is None  # the stale record is cleared
    finally:
        bystander.kill()
        bystander.wait()


def test_a_stale_record_is_not_taken_for_a_running_server(tmp_path: Path):
    store = Store(tmp_path / "home")
    store.set_server(os.getpid(), "127.0.0.1", 9)
    assert process.recorded_server(store).pid == os.getpid()  # the recorded process itself
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        with sqlite3.connect(store.db_path) as db:
            db.execute("UPDATE server SET pid = ?", (bystander.pid,))
        assert process.recorded_server(store) is None and store.server() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_server_that_exited_is_gone_while_the_kernel_that_started_it_runs_on():
    # `nbdeploy stop` in a terminal while the notebook's kernel (the server's parent) still runs: the
    # exited server stays a zombie until the kernel reaps it, and must not be waited on for 15 s.
    kernel = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, time; server = subprocess.Popen(['true']); "
                               "print(server.pid, flush=True); time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(kernel.stdout.readline())
        deadline = time.monotonic() + 10
        while Path(f"/proc/{server_pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.02)
        assert not process.pid_alive(server_pid)
    finally:
        kernel.kill()
        kernel.wait()
