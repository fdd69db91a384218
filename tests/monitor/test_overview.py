"""monitor/overview.py: what the models panel shows of each model, from the registry rows, the log and the store."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from nbdeploy.monitor.overview import Overview
from nbdeploy.store import Store
from nbdeploy.store.alerts import record_alert
from nbdeploy.store.canary import end_canary, start_canary
from nbdeploy.store.events import PredictionEvent
from nbdeploy.store.log import PredictionLog

NOW = 1_800_000_000.0  # on a minute boundary


def log_requests(home: Path, model: str, version: int, times: list[float], status: int = 200) -> None:
    log = PredictionLog(home, start=False)
    for i, ts in enumerate(times):
        log.put(PredictionEvent(id=f"{model}-{version}-{ts}-{i}", ts=ts, model=model, version=version,
                                inputs={"x": np.array([1.0])}, outputs={"label": np.array([1])}, latency_ms=1.0,
                                status=status, error=None if status == 200 else "failed"))
    log.flush()
    log.close()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path)
    for name in ("a", "b"):
        store.register(name, b"one", {})
        store.register(name, b"two", {})
        store.set_alias(name, "production", 2)
        store.set_serving(name, True)
    return store


def registry(store: Store) -> list[dict]:
    return [{"name": n, "aliases": store.aliases(n), "status": "ready"} for n in store.model_names()]


def test_requests_per_minute_over_the_last_hour(store: Store) -> None:
    # 3 requests in the minute before, 5 in the current minute, 2 from two hours ago (outside the window)
    log_requests(store.home, "a", 2, [NOW - 30] * 3 + [NOW + 5] * 5 + [NOW - 7200] * 2)
    log_requests(store.home, "a", 1, [NOW + 10])  # every version is the endpoint's traffic
    rows = {r["name"]: r for r in Overview(store).rows(registry(store), now=NOW + 30)}
    traffic = rows["a"]["traffic"]
    assert len(traffic["requests"]) == 60 and traffic["step"] == 60
    assert traffic["requests"][-1] == 6 and traffic["requests"][-2] == 3 and traffic["total"] == 9
    assert traffic["start"] == NOW + 60 - 3600
    assert rows["b"]["traffic"]["total"] == 0 and rows["b"]["traffic"]["requests"] == [0] * 60


def test_the_latest_alert_and_only_new_ones_afterwards(store: Store) -> None:
    record_alert(store, "a", "WARN", ["p99 latency 150 ms"], "monitor")
    record_alert(store, "a", "ALERT", ["accuracy 0.61 vs baseline 0.95"], "monitor")
    overview = Overview(store)
    rows = {r["name"]: r for r in overview.rows(registry(store))}
    assert rows["a"]["level"] == "ALERT" and rows["a"]["alert"]["reasons"] == ["accuracy 0.61 vs baseline 0.95"]
    assert rows["a"]["alert"]["source"] == "monitor"
    assert rows["b"]["alert"] is None and rows["b"]["level"] is None
    record_alert(store, "a", "OK", [], "monitor")  # recovered
    record_alert(store, "b", "WARN", ["error rate 2 %"], "canary")
    rows = {r["name"]: r for r in overview.rows(registry(store))}
    assert rows["a"]["level"] == "OK" and rows["b"]["level"] == "WARN" and rows["b"]["alert"]["source"] == "canary"


def test_a_running_canary_and_its_progress(store: Store) -> None:
    store.register("b", b"three", {})
    canary = start_canary(store, "b", 3, 10, promote_after=50)
    start = canary.started_at
    log_requests(store.home, "b", 3, [start + 1] * 7)
    log_requests(store.home, "b", 3, [start + 2] * 2, status=500)  # answered with an error: counted, as the guards do
    log_requests(store.home, "b", 2, [start + 1] * 20)  # production's share is not
    rows = {r["name"]: r for r in Overview(store).rows(registry(store), now=start + 30)}
    assert rows["a"]["canary"] is None
    assert rows["b"]["canary"] == {"version": 3, "production": 2, "percent": 10.0, "promote_after": 50,
                                   "state": "running", "started_at": start, "progress": 9, "breach": None,
                                   "hold": None}
    # hours later, the requests it answered before the hour shown still count
    later = Overview(store, window=600).rows(registry(store), now=start + 7200)
    assert later[1]["canary"]["progress"] == 9 and later[1]["traffic"]["total"] == 0
    end_canary(store, "b", "stopped")
    assert Overview(store).rows(registry(store))[1]["canary"] is None  # an ended canary is not shown


def test_the_rows_keep_what_the_registry_said(store: Store) -> None:
    given = [{"name": "a", "aliases": {"production": 2}, "status": "stopped", "versions": [1, 2], "url": None}]
    (row,) = Overview(store).rows(given)
    assert {k: row[k] for k in given[0]} == given[0]


def test_an_empty_store_and_no_log(tmp_path: Path) -> None:
    overview = Overview(Store(tmp_path))
    assert overview.rows([]) == []
    assert not (tmp_path / "log.db").exists()  # reading never creates the log
    overview.close()


def test_cost_is_bounded_by_the_window(store: Store) -> None:
    times = list(np.arange(NOW - 86_400, NOW, 30.0))  # a day of traffic, one request every 30 s
    log_requests(store.home, "a", 2, times)
    started = time.perf_counter()
    (row, _) = Overview(store).rows(registry(store), now=NOW - 1)
    assert row["traffic"]["total"] == 120  # the last hour only
    assert time.perf_counter() - started < 2.0
