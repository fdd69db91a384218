"""serve/feedback.py: the feedback endpoint, in-process and through a real process killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from nbdeploy.errors import NbdeployError
from nbdeploy.serve.feedback import feedback
from nbdeploy.serve.responses import error_headers, error_response
from nbdeploy.store.events import PredictionEvent
from nbdeploy.store.log import LogSettings, PredictionLog

URL = "/v2/models/m/feedback"
routes = [Route("/v2/models/{name}/feedback", feedback, methods=["POST"])]


def fill(home: Path, n: int) -> None:
    log = PredictionLog(home, start=False)
    log.write([PredictionEvent(id=f"p{i}", ts=time.time(), model="m", version=1, inputs={"x": np.array([1.0])},
                               outputs={"label": np.array([i % 3])}, latency_ms=1.0, status=200, error=None)
               for i in range(n)])
    log.close()


async def _error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NbdeployError)
    return error_response(exc.status, exc.message, error_headers(exc))


def app(log: PredictionLog | None) -> Starlette:
    application = Starlette(routes=routes, exception_handlers={NbdeployError: _error})
    application.state.log = log
    return application


@pytest.fixture
def client(tmp_path: Path):
    fill(tmp_path, 5)
    log = PredictionLog(tmp_path)
    with TestClient(app(log)) as c:
        yield c
    log.close()


def test_one_label_or_a_list(client: TestClient) -> None:
    r = client.post(URL, json={"id": "p0", "label": 0})
    assert r.status_code == 200 and r.json() == {"accepted": 1, "updated": 0, "unchanged": 0, "errors": []}
    r = client.post(URL, json=[{"id": "p1", "label": 1}, {"id": "p2", "label": "2"}, {"id": "p0", "label": 0}])
    assert r.status_code == 200 and r.json()["accepted"] == 3 and r.json()["unchanged"] == 1


def test_partial_success_is_207_with_errors_per_item(client: TestClient) -> None:
    r = client.post(URL, json=[{"id": "p0", "label": 0}, {"id": "zzz", "label": 1}])
    assert r.status_code == 207
    body = r.json()
    assert body["accepted"] == 1 and body["errors"][0]["index"] == 1 and body["errors"][0]["status"] == 404
    assert body["error"].startswith("1 of 2 labels not recorded: item 1: no logged prediction with id 'zzz'")


def test_nothing_recorded_is_a_4xx(client: TestClient) -> None:
    assert client.post(URL, json=[{"id": "zzz", "label": 1}]).status_code == 404
    assert client.post("/v2/models/other/feedback", json={"id": "p0", "label": 1}).status_code == 404
    r = client.post(URL, json={"id": "p0"})
    assert r.status_code == 400 and "'label' is missing" in r.json()["error"]
    r = client.post(URL, content=b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = client.post(URL, json=[])
    assert r.status_code == 400 and "non-empty list" in r.json()["error"]


def test_the_log_may_be_the_apps_event_sink(tmp_path: Path) -> None:
    from nbdeploy.store import Store
    from nbdeploy.store.log import open_sink

    store = Store(tmp_path)
    fill(store.home, 1)
    sink = open_sink(store)
    application = app(None)
    application.state.sink = sink
    with TestClient(application) as c:
        assert c.post(URL, json={"id": "p0", "label": 0}).json()["accepted"] == 1
    sink.close()


def test_a_server_without_a_log_says_so(tmp_path: Path) -> None:
    with TestClient(app(None)) as c:
        r = c.post(URL, json={"id": "p0", "label": 0})
    assert r.status_code == 503 and "no prediction log" in r.json()["error"]


SERVER = textwrap.dedent("""
    import socket, sys
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Route
    from nbdeploy.serve.feedback import feedback
    from nbdeploy.store.log import PredictionLog

    app = Starlette(routes=[Route("/v2/models/{name}/feedback", feedback, methods=["POST"])])
    app.state.log = PredictionLog(sys.argv[1])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
""")


def test_every_acknowledged_label_survives_sigkill(tmp_path: Path) -> None:
    n = 20_000
    fill(tmp_path, n)
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp_path)], stdout=subprocess.PIPE,
                            start_new_session=True)
    try:
        assert proc.stdout is not None
        url = f"http://127.0.0.1:{int(proc.stdout.readline())}{URL}"
        acked: dict[str, int] = {}
        failures: list[str] = []
        stop = threading.Event()

        def post(worker: int) -> None:
            # Each worker labels its own ids, 1 to 4 at a time, until the server dies.
            ids, pos, size = list(range(worker, n, 4)), 0, 1
            while not stop.is_set() and pos < len(ids):
                items = [{"id": f"p{j}", "label": j % 5} for j in ids[pos:pos + size]]
                pos, size = pos + size, size % 4 + 1
                request = urllib.request.Request(url, data=orjson.dumps(items), method="POST",
                                                 headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=10) as resp:
                        body = orjson.loads(resp.read())
                except (urllib.error.URLError, OSError, ConnectionError) as exc:
                    failures.append(repr(exc))
                    return
                assert body["accepted"] == len(items), body
                acked.update((item["id"], item["label"]) for item in items)

        workers = [threading.Thread(target=post, args=(w,)) for w in range(4)]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # wait for the server to answer
            try:
                urllib.request.urlopen(urllib.request.Request(url, data=b"[]", method="POST"), timeout=1)
            except urllib.error.HTTPError:
                break
            except OSError:
                time.sleep(0.05)
        for w in workers:
            w.start()
        assert wait(lambda: len(acked) >= 400, 30), "feedback did not flow"
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: requests are in flight
        proc.wait(10)
        for w in workers:
            w.join(15)
        stop.set()
        assert failures, "the kill should have cut requests off"
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    db = sqlite3.connect(tmp_path / "log.db")
    stored = dict(db.execute("SELECT id, label FROM feedback").fetchall())
    missing = {i for i in acked if stored.get(i) != acked[i]}
    assert not missing, f"{len(missing)} acknowledged labels lost, e.g. {sorted(missing)[:5]}"
    labelled = db.execute("SELECT SUM(labelled) FROM rollup").fetchone()[0]
    assert labelled == len(stored)  # labels and their rollup increments commit together


def wait(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_no_body_gets_a_500(client: TestClient) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=5),
                        st.sampled_from(["p0", "p1", "p0:0"]))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["id", "label", "x"]), inner, max_size=3), max_leaves=8)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(body=values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=40))
    def check(body: bytes) -> None:
        r = client.post(URL, content=body)
        assert r.status_code in (200, 207, 400, 404), (body, r.status_code, r.text)
        assert r.json().get("error") or r.status_code == 200

    check()


# -- ids: the server's keys, answered to the client --------------------------------------
def test_a_fixed_client_id_loses_no_prediction_and_each_is_labelled_by_its_key(make_client, store, iris) -> None:
    from serve_helpers import iris_inputs

    X, y, _ = iris
    log = PredictionLog(store.home)
    client = make_client(sink=log)
    answers = [client.post("/v2/models/iris/infer", json={"id": "1", "inputs": iris_inputs(X.iloc[[i]])})
               for i in range(5)]
    keys = [a.json()["parameters"]["prediction_id"] for a in answers]
    assert [a.json()["id"] for a in answers] == ["1"] * 5  # the client's id is echoed
    assert [a.headers["x-request-id"] for a in answers] == keys and len(set(keys)) == 5
    mlflow = client.post("/models/iris/invocations", json={"dataframe_records": X.head(2).to_dict(orient="records")})
    assert log.flush()
    with sqlite3.connect(log.path) as db:
        logged = db.execute("SELECT id, client_id FROM predictions WHERE model = 'iris' ORDER BY seq").fetchall()
    assert logged[:5] == [(k, "1") for k in keys]  # five requests, five rows: none dropped as a duplicate
    items = [{"id": k, "label": int(y.iloc[i])} for i, k in enumerate(keys)]
    items += [{"id": f"{mlflow.headers['x-request-id']}:1", "label": 0}]  # MLflow answers can be labelled too
    r = client.post("/v2/models/iris/feedback", json=items)
    assert r.status_code == 200 and r.json()["accepted"] == 6
    r = client.post("/v2/models/iris/feedback", json={"id": "1", "label": 0})
    assert r.status_code == 409 and "client id of 5 logged requests" in r.json()["error"]
    r = client.post("/v2/models/iris/infer", json={"id": "u", "inputs": iris_inputs(X.head(1))})
    assert client.post("/v2/models/iris/feedback", json={"id": "u", "label": 0}).json()["accepted"] == 1


def test_a_request_id_longer_than_256_characters_is_refused(make_client, iris) -> None:
    from serve_helpers import iris_inputs

    X, _, _ = iris
    client = make_client()
    r = client.post("/v2/models/iris/infer", json={"id": "x" * 257, "inputs": iris_inputs(X.head(1))})
    assert r.status_code == 400 and "'id' must be at most 256 characters" in r.json()["error"]
    assert client.post("/v2/models/iris/infer", json={"id": "x" * 256, "inputs": iris_inputs(X.head(1))}).is_success


def test_a_locked_log_answers_503_with_retry_after_never_a_bare_500(tmp_path: Path) -> None:
    fill(tmp_path, 1)
    log = PredictionLog(tmp_path, settings=LogSettings(feedback_timeout_s=0.3))
    holder = sqlite3.connect(tmp_path / "log.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing for a long time
    try:
        with TestClient(app(log)) as c:
            started = time.monotonic()
            r = c.post(URL, json={"id": "p0", "label": 0})
            assert time.monotonic() - started < 3
            assert r.status_code == 503 and r.headers["retry-after"] == "1" and "busy" in r.json()["error"]
            holder.execute("COMMIT")
            assert c.post(URL, json={"id": "p0", "label": 0}).status_code == 200
    finally:
        holder.close()
        log.close()


def test_the_logs_health_for_readiness_details(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from nbdeploy.serve.feedback import log_details

    (tmp_path / "log.db").write_bytes(b"not a database" * 100)
    log = PredictionLog(tmp_path, start=False)
    details = log_details(SimpleNamespace(log=log))["prediction_log"]
    assert details["ok"] and details["recoveries"] == 1 and details["recovered_from"].startswith("log.db.corrupt-")
    assert log_details(SimpleNamespace()) == {}  # a server without a log says nothing of one
    log.close()


def test_readiness_and_metrics_show_the_prediction_log(make_client, store) -> None:
    from serve_helpers import scrape

    from nbdeploy.store.log import PredictionLog

    (store.home / "log.db").write_bytes(b"not a database" * 100)
    client = make_client(sink=PredictionLog(store.home))
    ready = client.get("/v2/health/ready").json()
    assert ready["prediction_log"]["ok"] and ready["prediction_log"]["recoveries"] == 1
    got = scrape(client.get("/metrics").text)
    assert got("nbdeploy_prediction_log_ok") == 1 and got("nbdeploy_prediction_log_recoveries_total") == 1
