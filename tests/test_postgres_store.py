"""A store on PostgreSQL end to end: the plain Python API, and two servers (two machines) sharing one database.

Every server process here is a real ``nbdeploy serve``; "another machine" is another ``NBDEPLOY_LOCAL_DIR``
(each keeps its own server record, lock, log and model cache there), as on two hosts given one URL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest

import nbdeploy
from nbdeploy import client
from nbdeploy.errors import NbdeployError
from nbdeploy.serve.process import pid_alive
from nbdeploy.signature import Signature
from nbdeploy.store import Store
from nbdeploy.store.batch import row_ids

pytestmark = pytest.mark.server

PASSWORD = "s3cret"  # the throwaway server trusts every local connection: any password is accepted


@pytest.fixture
def url(postgres_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """The fresh database's URL with a password in it (messages must never show it), and this
    kernel's local directory for it in ``tmp_path/kernel``. The kernel (and the servers it starts) work
    in ``tmp_path``: a URL mistaken for a relative path would leave a ``postgresql:`` directory there."""
    parts = urlsplit(postgres_url)
    netloc = f"{parts.username}:{PASSWORD}@{parts.hostname}:{parts.port}"
    monkeypatch.setenv("NBDEPLOY_LOCAL_DIR", str(tmp_path / "kernel"))
    monkeypatch.chdir(tmp_path)
    yield urlunsplit(parts._replace(netloc=netloc))
    assert not list(tmp_path.rglob("postgresql:")), "a PostgreSQL URL was taken for a directory"


def _eventually(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """``check()`` once it returns something true (the log writers commit a little after they answer)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def _no_password(*texts: Any) -> None:
    for text in texts:
        assert PASSWORD not in str(text), f"the password is shown in {text!r}"


def test_the_python_api_end_to_end_on_a_postgres_store(url, iris, tmp_path):
    X, y, model = iris
    dep = nbdeploy.deploy(model, X, name="iris", home=url)
    try:
        assert dep.version == 1 and dep.status == "ready"
        store = Store(url)
        assert store.home == tmp_path / "kernel"  # this machine's files, apart from the shared database
        assert (store.home / "server.log").exists() and not (store.home / "log.db").exists()
        server = store.server()
        assert server is not None
        # the server was started with the store's URL, which holds a password: not on its command line
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert PASSWORD.encode() not in cmdline and b"serve" in cmdline

        np.testing.assert_array_equal(dep.predict(X), model.predict(X))
        _, ids = dep.predict(X.head(20), return_ids=True)
        assert dep.feedback(ids, y.head(20))["accepted"] == 20

        snap = _eventually(lambda: (s := dep.health())["traffic"]["requests"] >= 2 and s)
        assert snap, f"the monitor never saw the predictions: {dep.health()['traffic']}"
        assert snap["traffic"]["requests"] == 2 and snap["labels"]["labelled"] == 20
        assert snap["version"] == 1 and snap["task"] == "classification"

        again = nbdeploy.get("iris", home=url)  # a handle from the store's location reaches the same model
        assert again.home == url and again.url == dep.url
        assert [d.name for d in nbdeploy.deployments(url)] == ["iris"]

        exported = nbdeploy.export("iris", "triton", tmp_path / "triton", home=url)
        assert (exported / "iris" / "1" / "model.onnx").read_bytes() == store.resolve("iris").onnx_bytes()

        with pytest.raises(NbdeployError) as unknown:
            nbdeploy.get("irsi", home=url)
        _no_password(repr(dep), dep, nbdeploy.models(url), again, unknown.value, store.shown,
                     (store.home / "server.log").read_text())
    finally:
        dep.stop()  # the last model served: the server exits
    assert not pid_alive(server.pid) or _eventually(lambda: not pid_alive(server.pid), 20)
    assert Store(url).serving_models() == []


# -- two machines, one database -------------------------------------------------------------------------


def _serve(url: str, local: Path) -> subprocess.Popen:
    """``nbdeploy serve --home URL`` as a machine whose local directory is ``local`` (and its working
    directory: two machines share nothing on disk)."""
    env = {**os.environ, "NBDEPLOY_LOCAL_DIR": str(local)}
    local.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "nbdeploy.cli", "serve", "--home", url, "--port", "0"],
                            env=env, cwd=local, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _started(store: Store, proc: subprocess.Popen, timeout: float = 60.0) -> str:
    """The base URL of ``proc``, read from its record in ``store``'s local directory, once it serves
    what the store holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = store.server()
        if record is not None and record.pid == proc.pid and record.applied >= store.generation():
            return record.url
        if proc.poll() is not None:
            raise AssertionError(f"the server exited at start-up: {proc.stderr and proc.stderr.read()[-3000:]!r}")
        time.sleep(0.05)
    raise AssertionError("the server did not start")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def two_servers(url: str, iris: Any, tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str, Signature]]:
    """``iris`` deployed, then served by two ``nbdeploy serve`` processes on "two machines" sharing ``url``
    (the kernel's own server stopped); yields their base URLs and the model's signature."""
    X, _, model = iris
    nbdeploy.deploy(model, X, name="iris", home=url)
    nbdeploy.shutdown(url)  # this kernel's machine serves nothing: the two below do
    stores = {}
    for machine in ("a", "b"):  # a Store's local directory is fixed when it is opened
        monkeypatch.setenv("NBDEPLOY_LOCAL_DIR", str(tmp_path / machine))
        stores[machine] = Store(url)
    monkeypatch.setenv("NBDEPLOY_LOCAL_DIR", str(tmp_path / "kernel"))
    procs = []
    try:
        for machine in ("a", "b"):
            procs.append(_serve(url, tmp_path / machine))
        urls = [_started(stores[m], p) for m, p in zip(("a", "b"), procs, strict=True)]
        meta = Store(url).resolve("iris").meta
        yield urls[0], urls[1], Signature.from_dict(meta["signature"])
    finally:
        for proc in procs:
            _stop(proc)


def _predict(base: str, signature: Signature, X: Any) -> tuple[np.ndarray, list[str]]:
    answer = client.post_json(f"{base}/v2/models/iris/infer",
                              {"inputs": client.v2_inputs(signature, X), "outputs": [{"name": "label"}]})
    return client.outputs_by_name(answer)["label"], row_ids(client.prediction_key(answer), len(X))


def _feedback(base: str, ids: list[str], labels: Any) -> dict[str, Any]:
    items = [{"id": i, "label": int(v)} for i, v in zip(ids, labels, strict=True)]
    return client.post_json(f"{base}/v2/models/iris/feedback", items)


def test_two_servers_on_one_database_log_to_one_monitor(two_servers, url, iris):
    a, b, signature = two_servers
    assert a != b
    X, y, model = iris
    labels_a, ids_a = _predict(a, signature, X.iloc[:10])
    labels_b, ids_b = _predict(b, signature, X.iloc[10:25])
    np.testing.assert_array_equal(labels_a, model.predict(X.iloc[:10]))
    np.testing.assert_array_equal(labels_b, model.predict(X.iloc[10:25]))

    dep = nbdeploy.get("iris", home=url)  # the kernel: it runs no server, it reads the shared log
    seen = _eventually(lambda: dep.health()["traffic"]["requests"] >= 2)
    assert seen, f"the monitor does not see both servers' predictions: {dep.health()['traffic']}"

    # each server takes labels for its own predictions and for the other's
    first = _feedback(a, ids_a[:5] + ids_b[:5], list(y.iloc[:5]) + list(y.iloc[10:15]))
    second = _feedback(b, ids_b[5:] + ids_a[5:], list(y.iloc[15:25]) + list(y.iloc[5:10]))
    assert first["errors"] == [] and second["errors"] == []
    assert first["accepted"] == 10 and second["accepted"] == 15

    snap = _eventually(lambda: (s := dep.health())["labels"]["labelled"] >= 25 and s)
    assert snap, f"the monitor does not see every label: {dep.health()['labels']}"
    assert snap["traffic"]["requests"] == 2 and snap["labels"]["labelled"] == 25
    assert snap["drift"]["n"] == 25 and snap["version"] == 1

    # either server's /metrics: its own request counter, and the store's figures for every server
    for base, own in ((a, 1), (b, 1)):
        text = urllib.request.urlopen(f"{base}/metrics", timeout=30).read().decode()
        assert _sample(text, "nbdeploy_monitor_requests") == 2
        assert _sample(text, "nbdeploy_monitor_labelled") == 25
        assert _sample(text, "nbdeploy_requests_total") == own


def _sample(text: str, family: str) -> float:
    """The value of ``family``'s sample for iris (the first, when it has several label sets)."""
    for line in text.splitlines():
        if line.startswith(family + "{") and 'model="iris"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {family} sample for iris in:\n{text[:2000]}")


def test_workers_are_told_the_url_out_of_sight_and_share_the_log(url, iris, monkeypatch):
    X, y, model = iris
    monkeypatch.setenv("NBDEPLOY_WORKERS", "2")  # the server the deploy starts supervises two workers
    dep = nbdeploy.deploy(model, X, name="iris", home=url)
    try:
        store = Store(url)
        workers = _eventually(lambda: len(store.workers()) == 2 and list(store.workers()))
        assert workers, f"the two workers did not start: {store.workers()}"
        for pid in [store.server().pid, *workers]:  # a process's arguments are anyone's to read: no password
            assert PASSWORD.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        ids = []
        for start in range(0, 40, 4):  # several requests, so both workers are likely to answer some
            labels, some = dep.predict(X.iloc[start:start + 4], return_ids=True)
            np.testing.assert_array_equal(labels, model.predict(X.iloc[start:start + 4]))
            ids += some
        assert dep.feedback(ids, y.iloc[:40])["accepted"] == 40
        snap = _eventually(lambda: (s := dep.health())["labels"]["labelled"] >= 40 and s)
        assert snap and snap["traffic"]["requests"] == 10 and snap["labels"]["labelled"] == 40
    finally:
        nbdeploy.shutdown(url)


@pytest.fixture
def own_database(postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    """A PostgreSQL server of the test's own (it is stopped or restarted: not the session's shared one) and
    a store's URL on it; the store's server is shut down and the database brought back afterwards."""
    import pgserver

    own = pgserver.PostgresServer()
    own.start()
    monkeypatch.setenv("NBDEPLOY_LOCAL_DIR", str(tmp_path / "local"))
    home = own.fresh_database()
    try:
        yield own, home
    finally:
        if own.running and not own.up():
            own.resume()
        nbdeploy.shutdown(home)
        own.stop()


def test_a_database_restart_under_a_running_server_loses_no_prediction_or_label(own_database, iris):
    """A maintenance restart or failover of PostgreSQL while the server serves: the pool reconnects, the
    writer retries, and every prediction and label reaches the log."""
    X, y, model = iris
    own, home = own_database
    dep = nbdeploy.deploy(model, X, name="iris", home=home)
    for start in range(0, 20, 2):
        dep.predict(X.iloc[start:start + 2])
    own.restart()
    for start in range(20, 60, 2):
        np.testing.assert_array_equal(dep.predict(X.iloc[start:start + 2]), model.predict(X.iloc[start:start + 2]))
    _, ids = dep.predict(X.head(3), return_ids=True)
    assert dep.feedback(ids, y.head(3))["accepted"] == 3
    snap = _eventually(lambda: (s := dep.health())["traffic"]["requests"] >= 31 and s)
    assert snap, dep.health()["traffic"]
    assert snap["traffic"]["requests"] == 31 and snap["traffic"]["dropped"] == 0
    assert snap["labels"]["labelled"] == 3


def test_while_the_database_is_down_answers_go_on_and_labels_get_a_quick_503(own_database, iris):
    """An outage of the store's database: the server answers from the versions it holds; a label gets
    503 with Retry-After within seconds (and the kernel a one-line error); once the database is back,
    labels are taken again."""
    X, y, model = iris
    own, home = own_database
    dep = nbdeploy.deploy(model, X, name="iris", home=home)
    base = dep.url.split("/v2/")[0]
    signature = Signature.from_dict(Store(home).resolve("iris").meta["signature"])
    _, ids = _predict(base, signature, X.head(3))
    own.halt()
    labels, _ = _predict(base, signature, X.iloc[3:9])
    np.testing.assert_array_equal(labels, model.predict(X.iloc[3:9]))
    started = time.monotonic()
    request = urllib.request.Request(f"{base}/v2/models/iris/feedback", method="POST",
                                     data=json.dumps([{"id": ids[0], "label": int(y.iloc[0])}]).encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=60)
    assert answer.value.code == 503 and answer.value.headers["Retry-After"]
    assert time.monotonic() - started < 15, "a label waited far longer than the pool's wait"
    started = time.monotonic()
    with pytest.raises(NbdeployError, match="out of reach") as exc:
        dep.feedback(ids, y.head(3))
    assert time.monotonic() - started < 15 and PASSWORD not in str(exc.value)
    own.resume()
    deadline, result = time.monotonic() + 30, None
    while result is None:  # sent again once the database is back, as a client told 503 + Retry-After does
        try:
            result = _feedback(base, ids, y.head(3))
        except NbdeployError:
            assert time.monotonic() < deadline, "labels are still refused 30 s after the database came back"
            time.sleep(1)
    assert result["accepted"] == 3
