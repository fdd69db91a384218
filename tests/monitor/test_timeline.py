"""monitor/timeline.py: a model's events and series over time, from a real store and a real log file."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nbdeploy.errors import InvalidInput
from nbdeploy.monitor import reference_profile
from nbdeploy.monitor.live import Monitor
from nbdeploy.monitor.timeline import Timeline, events
from nbdeploy.store import Store
from nbdeploy.store.alerts import record_alert
from nbdeploy.store.canary import end_canary, start_canary
from nbdeploy.store.events import PredictionEvent
from nbdeploy.store.log import PredictionLog
from nbdeploy.store.reader import LogReader

RNG = np.random.default_rng(0)
PROFILE = reference_profile(pd.DataFrame({"x": RNG.normal(0, 1, 500)}))
META = {"task": "classification", "classes": [0, 1], "profile": PROFILE}


def version(store: Store, accuracy: float, **meta) -> int:
    return store.register("m", b"onnx", {**META, "metrics": {"metrics": {"accuracy": accuracy}}, **meta})


def traffic(log: PredictionLog, n: int, *, start: float, shift: float, wrong: float, prefix: str,
            version: int = 1) -> None:
    """``n`` predictions a second apart from ``start``, labelled; a share ``wrong`` of them mistaken."""
    for i in range(n):
        log.put(PredictionEvent(id=f"{prefix}{i}", ts=start + i, model="m", version=version,
                                inputs={"x": np.array([float(RNG.normal(shift, 1))])},
                                outputs={"label": np.array([1])}, latency_ms=2.0, status=200, error=None))
    log.flush()
    log.feedback("m", [{"id": f"{prefix}{i}", "label": int(i < n * (1 - wrong))} for i in range(n)])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path)


def test_a_deploy_then_nothing_else_is_one_event(store: Store) -> None:
    store.set_alias("m", "production", version(store, 0.95))
    found = events(store, "m")
    assert [(e.kind, e.label) for e in found] == [("deploy", "deploy v1")]


def test_every_kind_of_event_in_order(store: Store) -> None:
    store.set_alias("m", "production", version(store, 0.95))
    record_alert(store, "m", "ALERT", ["accuracy 0.80 is 0.15 below the baseline 0.95"], "monitor")
    store.set_alias("m", "production", version(store, 0.97, retrained_from=1))
    record_alert(store, "m", "OK", [], "monitor")
    store.set_alias("m", "production", 1, kind="rollback")
    third = version(store, 0.99)
    store.set_serving("m", True)
    start_canary(store, "m", third, 10)
    end_canary(store, "m", "promoted", "100 requests within the guards")
    store.register("m", b"onnx", {**META, "gate": {"reason": "challenger accuracy 0.5 < 0.95"}}, status="refused")
    found = events(store, "m")
    assert [e.label for e in found] == [
        "deploy v1", "ALERT", "retrain → v2", "recovered", "rollback to v1", "v3 registered",
        "canary v3 10%", "canary v3 promoted", "v4 refused"]
    assert found[1].detail.startswith("accuracy 0.80") and found[1].level == "ALERT"
    assert "retrained from v1" in found[2].detail
    assert "0.5 < 0.95" in found[-1].detail
    assert next(e.label for e in events(store, "m", since=found[4].at)) == "rollback to v1"


def test_series_follow_quality_baseline_and_inputs_through_a_retrain(tmp_path: Path, store: Store) -> None:
    now = time.time()
    store.set_alias("m", "production", version(store, 0.95))
    log = PredictionLog(tmp_path, profiles=lambda m, v: PROFILE, start=False)
    traffic(log, 60, start=now - 600, shift=0.0, wrong=0.05, prefix="a")  # as trained
    traffic(log, 60, start=now - 400, shift=6.0, wrong=0.40, prefix="b")  # the world moved
    log.close()
    timeline = Timeline(store, "m", since=now - 660, points=30)
    with LogReader(tmp_path) as reader:
        story = timeline.build(reader)  # now: after the deploy
    s = story["series"]
    assert story["width"] == 30 and len(s["t"]) == len(s["accuracy"]) == len(s["rate"])
    accuracy = [a for a in s["accuracy"] if a is not None]
    assert accuracy[0] == pytest.approx(1.0) and min(accuracy) < 0.7  # the fall shows
    outside = [o for o in s["outside"] if o is not None]
    assert outside[0] < 0.1 and outside[-1] > 0.9  # the inputs moved away from training
    assert {f for f in s["outside_feature"] if f is not None} == {"x"}
    assert sum(s["rows"]) == 120 and set(s["baseline_accuracy"]) == {0.95}
    assert s["version"][-1] == 1 and s["t"][0] <= now - 660 < s["t"][0] + 30
    assert [e["label"] for e in story["events"]] == ["deploy v1"]


def test_the_window_starts_at_the_first_deploy_or_where_asked(tmp_path: Path, store: Store) -> None:
    store.set_alias("m", "production", version(store, 0.9))
    deployed = store.alias_history("m")[0]["at"]
    now = deployed + 3600
    with LogReader(tmp_path) as reader:
        assert Timeline(store, "m").build(reader, now)["start"] == deployed
        assert Timeline(store, "m", window=600).build(reader, now)["start"] == now - 600
        assert Timeline(store, "m", since="2026-01-02T03:04:05+00:00").start(now) == 1767323045.0
        assert Timeline(store, "m", max_seconds=60).start(now) == now - 60  # bounded unless asked
    with pytest.raises(InvalidInput, match="window must be a positive"):
        Timeline(store, "m", window=0)
    with pytest.raises(InvalidInput, match="ISO 8601"):
        Timeline(store, "m", since="yesterday")


def test_a_monitor_with_a_timeline_carries_it_in_its_snapshots(tmp_path: Path, store: Store) -> None:
    store.set_alias("m", "production", version(store, 0.95))
    log = PredictionLog(tmp_path, profiles=lambda m, v: PROFILE, start=False)
    traffic(log, 40, start=time.time() - 50, shift=0.0, wrong=0.5, prefix="a")
    log.close()
    record_alert(store, "m", "ALERT", ["accuracy 0.500 vs baseline 0.950"], "monitor")  # as the server does
    monitor = Monitor(tmp_path, "m", store=store, timeline=Timeline(store, "m", window=120))
    snap = monitor.snapshot()
    assert snap["alert"]["level"] == "ALERT" and sum(snap["timeline"]["series"]["rows"]) == 40
    assert [e["label"] for e in snap["timeline"]["events"]] == ["deploy v1", "ALERT"]
    assert "timeline" not in Monitor(tmp_path, "m", store=store).snapshot()  # /metrics does not pay for it
