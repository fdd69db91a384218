"""Alerts judged by the server and POSTed to webhooks: a real receiver on 127.0.0.1, a real server process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_helpers import BASE_URL, TestClient, add_version, iris_inputs, start_server, stop_server

import nbdeploy
from nbdeploy.errors import InvalidInput
from nbdeploy.serve.alerting import Alerting
from nbdeploy.serve.app import create_app
from nbdeploy.serve.config import ServeConfig
from nbdeploy.serve.webhooks import Deliverer, DeliveryPolicy
from nbdeploy.store import Store
from nbdeploy.store.alerts import DELIVERY_ATTEMPTS, alerts, record_alert, set_webhook

SERVER = ("http://127.0.0.1:8000", None)


class Receiver:
    """A webhook receiver: answers each POST with the next of ``statuses`` (200 once they run out; 0 hangs up
    without an answer), after ``delay`` seconds; keeps every POST it got."""

    def __init__(self, statuses: tuple[int, ...] = (), delay: float = 0.0) -> None:
        self.statuses, self.delay = list(statuses), delay
        self.posts: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.posts.append({"status": status, "body": body, "type": self.headers["Content-Type"]})
                time.sleep(receiver.delay)
                if status == 0:
                    self.close_connection = True
                    return
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/secret"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def received(self) -> list[dict[str, Any]]:
        """The bodies it accepted (answered 2xx)."""
        return [p["body"] for p in self.posts if 200 <= p["status"] < 300]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(*statuses: int, delay: float = 0.0) -> Receiver:
        made.append(Receiver(statuses, delay))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "home")
    for name in ("churn", "fraud"):
        store.register(name, b"not read here", {"task": "classification"})
        store.set_serving(name, True)
    return store


def test_an_alert_is_posted_as_the_documented_json(store, receiver):
    hook = receiver()
    set_webhook(store, "churn", hook.url)
    raised = record_alert(store, "churn", "ALERT", ["error rate 12.5%"], source="monitor", detail={"version": 3})
    assert Deliverer(store, server_urls=lambda: SERVER).deliver() == 1
    [post] = hook.posts
    assert post["type"] == "application/json"
    body = post["body"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body.pop("time"))
    assert body == {
        "model": "churn", "level": "ALERT", "reasons": ["error rate 12.5%"], "source": "monitor",
        "timestamp": raised.at, "version": 3, "id": raised.id, "server": "http://127.0.0.1:8000",
        "links": {"model": "http://127.0.0.1:8000/v2/models/churn", "metrics": "http://127.0.0.1:8000/metrics"},
        "text": "nbdeploy: churn is ALERT: error rate 12.5%",
        "alerts": [{"id": raised.id, "level": "ALERT", "reasons": ["error rate 12.5%"], "source": "monitor",
                    "time": body["alerts"][0]["time"]}],
        "more": 0,
    }
    [row] = alerts(store, "churn")
    assert (row.delivery, row.attempts) == ("sent", 1)
    assert Deliverer(store).deliver() == 0  # sent once


def test_a_failing_receiver_gets_the_alert_once_after_retries_with_backoff(store, receiver):
    hook = receiver(500, 503)
    set_webhook(store, "churn", hook.url)
    record_alert(store, "churn", "WARN", ["p99 latency 140 ms"], source="monitor")
    deliverer = Deliverer(store, DeliveryPolicy(backoff_s=2.0, min_gap_s=0.0))
    assert deliverer.deliver(now=0.0) == 1  # HTTP 500; the next try waits 2 s
    assert deliverer.deliver(now=1.9) == 0
    [row] = alerts(store, "churn")
    assert (row.delivery, row.attempts, row.last_error) == ("retrying", 1, "HTTP 500 Internal Server Error")
    assert deliverer.deliver(now=2.0) == 1  # HTTP 503; then 4 s
    assert deliverer.deliver(now=5.9) == 0
    assert deliverer.deliver(now=6.0) == 1  # accepted
    assert deliverer.deliver(now=100.0) == 0
    assert [p["status"] for p in hook.posts] == [500, 503, 200]
    assert len(hook.received) == 1 and hook.received[0]["reasons"] == ["p99 latency 140 ms"]
    [row] = alerts(store, "churn")
    assert (row.delivery, row.attempts, row.last_error) == ("sent", 3, None)


def test_an_alert_is_given_up_after_the_last_attempt(store, receiver):
    hook = receiver(*[500] * 10)
    set_webhook(store, "churn", hook.url)
    record_alert(store, "churn", "ALERT", ["drift ALERT: tenure"], source="monitor")
    deliverer = Deliverer(store, DeliveryPolicy(backoff_s=1.0, min_gap_s=0.0))
    for now in range(0, 100):
        deliverer.deliver(now=float(now))
    assert len(hook.posts) == DELIVERY_ATTEMPTS
    [row] = alerts(store, "churn")
    assert (row.delivery, row.attempts) == ("failed", DELIVERY_ATTEMPTS)


def test_alerts_inside_the_rate_limit_go_together_in_the_next_post(store, receiver):
    hook, other = receiver(), receiver()
    set_webhook(store, "churn", hook.url)
    set_webhook(store, "fraud", other.url)
    deliverer = Deliverer(store, DeliveryPolicy(min_gap_s=10.0))
    record_alert(store, "churn", "WARN", ["error rate 2.0%"], source="monitor")
    assert deliverer.deliver(now=100.0) == 1
    record_alert(store, "churn", "ALERT", ["error rate 8.0%"], source="monitor")
    record_alert(store, "churn", "OK", ["back to OK from ALERT"], source="monitor")
    record_alert(store, "fraud", "ALERT", ["canary error rate 9%"], source="canary")
    assert deliverer.deliver(now=105.0) == 1  # fraud's first: the limit is per model
    assert len(hook.posts) == 1 and len(other.posts) == 1
    assert deliverer.deliver(now=110.0) == 1
    latest = hook.posts[-1]["body"]
    assert latest["level"] == "OK" and [a["level"] for a in latest["alerts"]] == ["ALERT", "OK"]
    assert all(a.delivery == "sent" for a in alerts(store, "churn"))


def test_a_slow_or_redirecting_receiver_is_a_failure_that_does_not_hold_the_sender(store, receiver):
    store.register("spam", b"not read here", {"task": "classification"})
    slow, moved, rude = receiver(delay=3.0), receiver(302), receiver(0)
    for name, hook in (("churn", slow), ("fraud", moved), ("spam", rude)):
        set_webhook(store, name, hook.url)
        record_alert(store, name, "ALERT", ["x"], source="monitor")
    assert Deliverer(store, DeliveryPolicy(timeout_s=0.3)).deliver() == 3
    errors = {a.name: a.last_error for a in alerts(store)}
    assert errors == {"churn": "no answer within 0.3 s", "fraud": "HTTP 302 Found",
                      "spam": "RemoteDisconnected: Remote end closed connection without response"}


def test_with_the_webhook_cleared_nothing_is_sent(store, receiver):
    hook = receiver()
    set_webhook(store, "churn", hook.url)
    set_webhook(store, "churn", None)
    record_alert(store, "churn", "ALERT", ["x"], source="monitor")
    assert Deliverer(store).deliver() == 0 and hook.posts == []
    assert alerts(store, "churn")[0].delivery == ""


def test_only_the_live_worker_with_the_lowest_pid_judges(store):
    assert Alerting(store, 1.0).is_judge()  # one process: it judges, whatever stale rows say
    store.add_worker(os.getpid())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.add_worker(dead.pid)
    assert Alerting(store, 1.0, workers=True).is_judge()  # the dead worker does not count
    store.add_worker(1)  # alive, and lower
    assert not Alerting(store, 1.0, workers=True).is_judge()
    assert Alerting(store, 1.0).is_judge()


def test_the_server_judges_until_it_stops_unless_the_interval_is_zero(store):
    def alerting_threads() -> set[str]:
        return {t.name for t in threading.enumerate() if t.name.startswith("nbdeploy-alert-")}

    with TestClient(create_app(store, config=ServeConfig(alert_interval=0)), base_url=BASE_URL):
        assert alerting_threads() == set()
    with TestClient(create_app(store, config=ServeConfig(alert_interval=5)), base_url=BASE_URL):
        assert alerting_threads() == {"nbdeploy-alert-judge", "nbdeploy-alert-sender"}
    assert alerting_threads() == set()  # stopped with the server
    with pytest.raises(InvalidInput, match="alert_interval must be a non-negative number"):
        ServeConfig(alert_interval=-1)


# -- a real server process judging on its own -----------------------------------------------------------------
@pytest.fixture
def two_workers(tmp_path: Path, iris_onnx) -> Iterator[Store]:
    """``nbdeploy serve --workers 2`` on a store serving iris, judging every 0.3 s."""
    store = Store(tmp_path / "served")
    add_version(store, "iris", iris_onnx)
    proc = start_server(store, workers=2, stderr=subprocess.DEVNULL, NBDEPLOY_ALERT_INTERVAL="0.3")
    try:
        yield store
    finally:
        stop_server(proc)


@pytest.mark.server
def test_the_server_records_and_posts_a_rising_level_once_then_records_the_recovery(two_workers, iris, receiver):
    store, home = two_workers, str(two_workers.home)
    X = iris[0]
    hook = receiver()
    assert nbdeploy.alerts("iris", webhook=hook.url, home=home).webhook == f"{hook.url.rsplit('/', 2)[0]}/…"
    server = store.server().url
    url = f"{server}/v2/models/iris/infer"
    with httpx.Client(timeout=10) as client:
        bad = {"inputs": [{"name": X.columns[0], "datatype": "FP32", "shape": [1, 1], "data": ["x"]}]}
        assert client.post(url, json=bad).status_code == 400  # counted as an error of iris
        _wait(lambda: hook.received, "the ALERT to be posted")
        time.sleep(1.5)  # time enough for a second judge or sender to do it again, were there one
        [body] = hook.received
        assert (body["model"], body["level"], body["source"], body["version"]) == ("iris", "ALERT", "monitor", 1)
        assert "error rate 100.0%" in body["reasons"]
        assert body["server"] == server and body["links"]["metrics"] == f"{server}/metrics"
        history = nbdeploy.alerts("iris", webhook=None, home=home)  # stop sending
        assert [(r["level"], r["delivery"]) for r in history.rows] == [("ALERT", "sent")]  # recorded once

        for i in X.sample(frac=1.0, random_state=0).index:  # every training row once: no drift, 1 error in 151
            assert client.post(url, json={"inputs": iris_inputs(X.loc[[i]])}).status_code == 200
        _wait(lambda: nbdeploy.alerts("iris", home=home).level == "OK", "the recovery to be recorded")
    rows = nbdeploy.alerts("iris", home=home).rows
    assert rows[-1]["reasons"][0].startswith("back to OK from") and rows[-1]["source"] == "monitor"
    time.sleep(1.5)  # the sender looks every second
    assert len(hook.posts) == 1 and all(r["delivery"] == "" for r in rows[1:])


def _wait(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
