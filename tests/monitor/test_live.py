"""monitor/live.py: snapshots of a model from a real log file, as the widget and /metrics use them."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nbdeploy.monitor import AlertThresholds, reference_profile
from nbdeploy.monitor.live import Monitor, percentile_ms
from nbdeploy.store import Store
from nbdeploy.store.events import PredictionEvent
from nbdeploy.store.log import LATENCY_EDGES_MS, N_LATENCY, PredictionLog

RNG = np.random.default_rng(0)
TRAIN = pd.DataFrame({"x": RNG.normal(0, 1, 500), "colour": RNG.choice(["red", "blue"], 500)})
PROFILE = reference_profile(TRAIN)


def classify(log: PredictionLog, n: int, *, start: float, shift: float = 0.0, colour: str | None = None,
             prefix: str = "p", version: int = 1, errors_every: int = 0, latency: float = 2.0) -> list[str]:
    ids = []
    for i in range(n):
        x = float(RNG.normal(shift, 1))
        c = colour or str(RNG.choice(["red", "blue"]))
        status = 500 if errors_every and i % errors_every == 0 else 200
        label = int(x > 0)
        outputs = {} if status != 200 else {"label": np.array([label]),
                                            "probabilities": np.array([[1 - 0.8 * label, 0.2 + 0.6 * label]])}
        log.put(PredictionEvent(id=f"{prefix}{i}", ts=start + i * 0.1, model="m", version=version,
                                inputs={"x": np.array([x]), "colour": np.array([c], dtype=object)},
                                outputs=outputs, latency_ms=latency, status=status,
                                error=None if status == 200 else "boom"))
        ids.append(f"{prefix}{i}")
    log.flush()
    return ids


@pytest.fixture
def home(store_home: str) -> str:
    """A store on each backend (a directory, then a PostgreSQL database), created."""
    Store(store_home)
    return store_home


@pytest.fixture
def log(home: str):
    log = PredictionLog(home, profiles=lambda m, v: PROFILE, start=False)
    yield log
    log.close()


def monitor(home: Path, **kw) -> Monitor:
    options = {"version": 1, "task": "classification", "profile": PROFILE, "baseline": {"accuracy": 0.9},
               "classes": [0, 1], **kw}
    return Monitor(home, "m", **options)


def test_an_empty_store_gives_an_empty_ok_snapshot(tmp_path: Path) -> None:
    snap = Monitor(tmp_path, "m").snapshot()
    assert snap["traffic"]["requests"] == 0 and snap["traffic"]["request_rate"] == 0.0
    assert snap["alert"]["level"] == "OK" and "nothing logged yet" in snap["notes"]
    assert not (tmp_path / "log.db").exists()  # reading never creates the log
    json.dumps(snap, allow_nan=False)


def test_traffic_rate_errors_and_latency(home: str, log: PredictionLog) -> None:
    now = time.time()
    classify(log, 600, start=now - 60, errors_every=10, latency=3.0)  # 10 requests/s for 60 s
    snap = monitor(home).snapshot(now=now)
    traffic = snap["traffic"]
    assert traffic["requests"] == 600 and traffic["errors"] == 60 and traffic["server_errors"] == 60
    assert traffic["error_rate"] == pytest.approx(0.1)
    assert 8 <= traffic["request_rate"] <= 12
    assert traffic["p50_ms"] == pytest.approx(3.0, rel=0.15) and traffic["p99_ms"] == pytest.approx(3.0, rel=0.15)
    assert traffic["mean_ms"] == pytest.approx(3.0)
    series = snap["series"]
    assert sum(series["requests"]) == 600 and len(series["t"]) == len(series["rate"]) <= 60
    assert snap["alert"]["components"]["errors"] == "ALERT"
    json.dumps(snap, allow_nan=False)


def test_percentiles_from_a_histogram() -> None:
    values = RNG.lognormal(1, 1, 10_000)
    hist = np.bincount(np.searchsorted(LATENCY_EDGES_MS, values, side="right"), minlength=N_LATENCY)
    for q in (0.5, 0.99):
        assert percentile_ms(hist, q) == pytest.approx(np.quantile(values, q), rel=0.08)
    assert percentile_ms(np.zeros(N_LATENCY), 0.5) is None


def test_quality_by_count_and_time_against_the_baseline(home: str, log: PredictionLog) -> None:
    now = time.time()
    ids = classify(log, 400, start=now - 100)
    # labels: the first 200 agree with the prediction, the last 200 are flipped half the time
    feedback = []
    for i, ident in enumerate(ids):
        predicted = log_label(log, ident)
        wrong = i >= 200 and i % 2 == 0
        feedback.append({"id": ident, "label": 1 - predicted if wrong else predicted})
    assert log.feedback("m", feedback)["accepted"] == 400
    snap = monitor(home, count_window=100).snapshot(now=now)
    quality = snap["quality"]
    assert quality["current"]["n"] == 100 and quality["current"]["accuracy"] == pytest.approx(0.5)
    assert quality["current"]["roc_auc"] is not None
    assert [w["accuracy"] for w in quality["by_count"]] == pytest.approx([1.0, 1.0, 0.5, 0.5])
    assert snap["labels"]["labelled"] == 400 and snap["labels"]["coverage"] == 1.0
    assert snap["labels"]["delay"]["n"] == 400 and snap["labels"]["delay"]["median"] > 0
    accuracy = [a for a in snap["series"]["accuracy"] if a is not None]
    assert accuracy[0] == 1.0 and min(accuracy) < 0.9
    assert snap["alert"]["level"] == "ALERT" and snap["alert"]["components"]["quality"] == "ALERT"
    assert any("accuracy 0.500 vs baseline 0.900" in r for r in snap["alert"]["reasons"])


def log_label(log: PredictionLog, ident: str) -> int:
    from nbdeploy.store.reader import LogReader

    with LogReader(log.location.text) as reader:
        return reader.predictions([ident])[ident].label


def test_regression_quality(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, start=False)
    now = time.time()
    for i in range(50):
        log.put(PredictionEvent(id=f"r{i}", ts=now - 50 + i, model="m", version=1, inputs={"input": np.ones((1, 2))},
                                outputs={"label": np.array([[10.0 + i]])}, latency_ms=1, status=200, error=None))
    log.flush()
    log.feedback("m", [{"id": f"r{i}", "label": 10.0 + i + (2 if i % 2 else -2)} for i in range(50)])
    snap = Monitor(tmp_path, "m", baseline={"rmse": 1.0}).snapshot(now=now)
    assert snap["task"] == "regression" and snap["version"] == 1  # guessed from the log
    assert snap["quality"]["current"]["rmse"] == pytest.approx(2.0)
    assert snap["quality"]["current"]["mae"] == pytest.approx(2.0)
    assert set(r for r in snap["series"]["rmse"] if r is not None) == {2.0}
    assert snap["alert"]["components"]["quality"] == "ALERT"
    assert "no reference profile" in snap["notes"][0]
    log.close()


def test_drift_out_of_range_and_unseen_inputs(home: str, log: PredictionLog) -> None:
    now = time.time()
    classify(log, 100, start=now - 30, shift=4.0, colour="green")
    mon = monitor(home)
    snap = mon.snapshot(now=now)
    assert snap["drift"]["overall"] == "ALERT" and set(snap["drift"]["drifted_features"]) == {"x", "colour"}
    assert snap["inputs"]["colour"]["unseen"] == 100
    assert snap["inputs"]["x"]["out_of_range"] > 30 and snap["inputs"]["x"]["rate"] > 0.3
    report = mon._drift
    mon.snapshot(now=now)
    assert mon._drift is report  # no new predictions: the drift report is reused
    classify(log, 1, start=now, prefix="new")
    mon.snapshot(now=now)
    assert mon._drift is not report


def test_dropped_events_show_in_the_snapshot(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, start=False, max_queue=5)
    classify(log, 8, start=time.time())
    snap = monitor(tmp_path).snapshot()
    assert snap["traffic"]["dropped"] == 3 and sum(snap["series"]["dropped"]) == 3
    log.close()


def test_the_alert_callback_runs_when_the_level_changes(home: str, log: PredictionLog) -> None:
    calls = []
    now = time.time()
    classify(log, 50, start=now - 10, latency=1.0)
    mon = monitor(home, thresholds=AlertThresholds(p99_latency_ms_warn=5, p99_latency_ms_alert=50),
                  on_alert=lambda status, snap: calls.append(status["level"]))
    mon.snapshot(now=now)
    assert calls == []
    classify(log, 400, start=now - 5, latency=20.0, prefix="slow")
    mon.snapshot(now=now)
    mon.snapshot(now=now)
    assert calls == ["WARN"]

    def broken(status: dict, snap: dict) -> None:
        raise RuntimeError("no pager")

    mon.on_alert, mon.level = broken, "OK"
    assert "on_alert callback raised RuntimeError: no pager" in mon.snapshot(now=now)["notes"]


def test_context_comes_from_the_store_production_version(home: str, log: PredictionLog) -> None:
    store = Store(home)
    for _ in range(2):
        store.register("m", b"onnx", {"task": "classification", "classes": [0, 1], "profile": PROFILE,
                                      "metrics": {"task": "classification", "metrics": {"accuracy": 0.99}}})
    store.set_alias("m", "production", 2)
    classify(log, 40, start=time.time() - 5, version=2)
    snap = Monitor(home, "m", store=store).snapshot()
    assert snap["version"] == 2 and snap["task"] == "classification"
    assert snap["quality"]["baseline"] == {"accuracy": 0.99} and snap["drift"]["n"] == 40



def test_without_production_the_latest_logged_version_may_be_deleted(home: str, log: PredictionLog) -> None:
    store = Store(home)
    store.register("m", b"onnx", {"task": "classification", "classes": [0, 1], "profile": PROFILE})
    classify(log, 20, start=time.time() - 5, version=2)  # logged by a version no longer in the store
    snap = Monitor(home, "m", store=store).snapshot()
    assert snap["version"] == 2 and snap["traffic"]["requests"] == 20


def gauges(text: str) -> dict[tuple[str, frozenset], float]:
    """Samples of a Prometheus text exposition, by name and label set (whatever the label order or number format)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, labels, value = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line).groups()
            out[(name, frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)))] = float(value)
    return out


def sample(name: str, **labels: str) -> tuple[str, frozenset]:
    return name, frozenset({"model": "m", "version": "1", **labels}.items())


def test_snapshots_render_as_prometheus_gauges(home: str, log: PredictionLog) -> None:
    from nbdeploy.serve.monitoring import ServerMonitors

    store = Store(home)
    store.register("m", b"onnx", {"task": "classification", "classes": [0, 1], "profile": PROFILE,
                                  "baseline": {"accuracy": 0.9}})
    ids = classify(log, 60, start=time.time() - 10, shift=4.0, colour="green")
    log.feedback("m", [{"id": i, "label": 0} for i in ids])
    text = ServerMonitors(store, version=1).text(["m"])
    assert text.count("# TYPE nbdeploy_monitor_alert_level gauge") == 1
    found = gauges(text)
    assert found[sample("nbdeploy_monitor_alert_level")] == 2
    assert found[sample("nbdeploy_monitor_baseline", metric="accuracy")] == 0.9
    assert found[sample("nbdeploy_monitor_labelled")] == 60
    assert found[sample("nbdeploy_monitor_inputs_unseen", feature="colour")] == 60
    assert found[sample("nbdeploy_monitor_drift_level", feature="x")] == 2
    assert sample("nbdeploy_monitor_quality", metric="accuracy") in found
    assert ServerMonitors(store).text([]) == ""


def test_server_monitors_render_every_served_model(home: str, log: PredictionLog) -> None:
    from nbdeploy.serve.monitoring import ServerMonitors

    store = Store(home)
    store.register("m", b"onnx", {"task": "classification", "classes": [0, 1], "profile": PROFILE})
    store.set_alias("m", "production", 1)
    classify(log, 40, start=time.time() - 5)
    monitors = ServerMonitors(store)
    found = gauges(monitors.text(["m", "unknown"]))
    assert found[sample("nbdeploy_monitor_alert_level")] == 0
    assert found[sample("nbdeploy_monitor_drift_level", feature="x")] == 0
    assert monitors.text([]) == ""


def test_server_monitors_leave_the_gauges_out_without_pandas(tmp_path: Path, monkeypatch) -> None:
    import sys

    from nbdeploy.serve.monitoring import ServerMonitors

    monkeypatch.setitem(sys.modules, "nbdeploy.monitor.live", None)
    monitors = ServerMonitors(Store(tmp_path))
    assert monitors.text(["m"]) == "" and "need pandas" in monitors.unavailable


def test_nothing_logged_yet_computes_no_drift(tmp_path: Path) -> None:
    snap = monitor(tmp_path).snapshot()
    assert snap["notes"] == ["nothing logged yet"] and snap["drift"] is None and snap["inputs"] == {}
    assert snap["shadow"] is None and snap["quality"]["current"] is None and snap["series"]["t"] == []
