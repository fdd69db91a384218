"""Monitoring end to end: predictions logged by the real server, feedback, /metrics, the monitor."""

from __future__ import annotations

import time
import urllib.request
import uuid

import pytest

from nbdeploy.errors import NbdeployError

pytestmark = pytest.mark.server


def test_predict_ids_feedback_metrics_and_monitor(served, iris) -> None:
    X, y, _ = iris
    dep = served["deps"]["iris"]
    labels, ids = dep.predict(X.iloc[:5], return_ids=True)
    assert len(labels) == len(ids) == 5 and ids[1].endswith(":1")
    _, (single,) = dep.predict(X.iloc[:1], return_ids=True)
    assert ":" not in single
    assert uuid.UUID(single).version == 7 and uuid.UUID(ids[0].split(":")[0]).version == 7  # the server's keys
    assert dep.feedback(ids, y.iloc[:5])["accepted"] == 5
    assert dep.feedback(ids, y.iloc[:5].to_numpy())["unchanged"] == 5
    with pytest.raises(NbdeployError, match=r"1 of 2 labels were not recorded.*no logged prediction"):
        dep.feedback([single, "nope"], [0, 1])
    snap = dep.health()
    assert snap["traffic"]["requests"] == 2 and snap["labels"]["labelled"] == 6
    assert snap["drift"]["n"] == 6 and snap["version"] == 1 and snap["task"] == "classification"
    text = urllib.request.urlopen(f"{served['url']}/metrics").read().decode()
    assert 'nbdeploy_monitor_alert_level{model="iris",version="1"}' in text
    assert "nbdeploy_log_dropped_total 0" in text
    widget = dep.monitor(interval=0.05)
    deadline = time.monotonic() + 10
    while widget.refreshes < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    widget.stop()
    assert widget.refreshes >= 3 and "iris" in widget.static_bundle()["text/html"]
