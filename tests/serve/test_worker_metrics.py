"""``/metrics`` of ``nbdeploy serve --workers N`` is the sum over the server's workers (serve/worker_metrics.py)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry
from serve_helpers import add_version, iris_inputs, scrape, start_server, stop_server

from nbdeploy.serve import worker_metrics
from nbdeploy.serve.metrics import Metrics, TrafficCollector
from nbdeploy.serve.worker_metrics import WorkerMetrics, merge, snapshot
from nbdeploy.store import Store


def _traffic(requests: int, *, latency: float = 0.002, rows: int = 1, status: int = 200) -> Metrics:
    metrics = Metrics()
    stats = metrics.version("iris", 1)
    for _ in range(requests):
        stats.record("v2", status, latency)
        stats.batches.observe(rows)
    metrics.unresolved["v2", 404] += 1
    metrics.rejected["body_too_large"] += 2
    return metrics


def _render(metrics: Metrics, workers: WorkerMetrics | None, dropped: int = 0):
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TrafficCollector(metrics, loaded=lambda: [("iris", 1, False)], load_failures=lambda: 0,
                                       dropped=lambda: dropped, combine=workers.combine if workers else None))
    return scrape(generate_latest(registry).decode())


def _write(folder: Path, name: str, metrics: Metrics, dropped: int = 0) -> None:
    (folder / name).write_text(json.dumps(snapshot(metrics, dropped)))


def test_a_scrape_sums_live_counters_and_other_workers_files(tmp_path: Path):
    folder = worker_metrics.clear(tmp_path)
    _write(folder, "101.json", _traffic(3, latency=0.02, rows=8), dropped=4)
    _write(folder, "102.json", _traffic(5, status=503))
    own = WorkerMetrics(folder, pid=100)
    s = _render(_traffic(2), own, dropped=1)

    by_version = {"model": "iris", "version": "1"}
    assert s("nbdeploy_requests_total", **by_version, protocol="v2", code="200") == 5
    assert s("nbdeploy_requests_total", **by_version, protocol="v2", code="503") == 5
    assert s("nbdeploy_request_errors_total", **by_version) == 5
    assert s("nbdeploy_requests_total", model="", version="", protocol="v2", code="404") == 3
    assert s("nbdeploy_rejected_total", reason="body_too_large") == 6
    assert s("nbdeploy_log_dropped_total") == 5
    # histograms add bucket by bucket, and their sums add
    assert s("nbdeploy_request_duration_seconds_count", **by_version) == 10
    assert s("nbdeploy_request_duration_seconds_bucket", **by_version, le="0.0025") == 7
    assert s("nbdeploy_request_duration_seconds_bucket", **by_version, le="0.025") == 10
    assert s("nbdeploy_request_duration_seconds_sum", **by_version) == pytest.approx(7 * 0.002 + 3 * 0.02)
    assert s("nbdeploy_batch_rows_bucket", **by_version, le="1") == 7
    assert s("nbdeploy_batch_rows_bucket", **by_version, le="8") == 10
    assert s("nbdeploy_batch_rows_sum", **by_version) == 7 + 24
    # what is loaded now is this worker's own: every worker loads the same versions
    assert s("nbdeploy_model_loaded", **by_version, batching="false") == 1


def test_histograms_merge_bucket_by_bucket():
    a, b = _traffic(0), _traffic(0)
    for seconds in (0.0001, 0.003, 0.7):
        a.version("iris", 1).latency.observe(seconds)
    for seconds in (0.003, 5.0):
        b.version("iris", 1).latency.observe(seconds)
    total, _ = merge([snapshot(a), snapshot(b)])
    latency = total.versions["iris", 1].latency
    expected = [x + y for x, y in zip(a.versions["iris", 1].latency.counts, b.versions["iris", 1].latency.counts,
                                      strict=True)]
    assert latency.counts == expected and latency.count == 5
    assert latency.sum == pytest.approx(0.0001 + 0.003 + 0.7 + 0.003 + 5.0)
    assert dict(latency.buckets())["+Inf"] == 5 and dict(latency.buckets())["2.5"] == 4


def test_a_dead_workers_counts_stay_in_the_sum(tmp_path: Path):
    folder = worker_metrics.clear(tmp_path)
    dead = WorkerMetrics(folder, pid=200)
    dead.write(snapshot(_traffic(7)))  # then the worker dies; the supervisor starts another
    alive = WorkerMetrics(folder, pid=201)
    s = _render(_traffic(1), alive)
    assert s("nbdeploy_requests_total", model="iris", version="1", protocol="v2", code="200") == 8
    # a new worker given the dead one's pid keeps the dead worker's file
    reused = WorkerMetrics(folder, pid=200)
    assert reused.path != dead.path
    s = _render(_traffic(2), reused)
    assert s("nbdeploy_requests_total", model="iris", version="1", protocol="v2", code="200") == 7 + 1 + 2
    # a new server starts from zero
    worker_metrics.clear(tmp_path)
    assert list(folder.iterdir()) == []


def test_successive_scrapes_never_go_down_whichever_worker_answers(tmp_path: Path):
    folder = worker_metrics.clear(tmp_path)
    a_metrics, b_metrics = _traffic(0), _traffic(0)
    a, b = WorkerMetrics(folder, pid=1), WorkerMetrics(folder, pid=2)
    b.write(snapshot(b_metrics))
    seen = []
    for i in range(6):
        a_metrics.version("iris", 1).record("v2", 200, 0.001)  # counted, not yet in a's periodic snapshot
        b_metrics.version("iris", 1).record("v2", 200, 0.001)
        answering, live = (a, a_metrics) if i % 2 else (b, b_metrics)
        seen.append(_render(live, answering)("nbdeploy_requests_total", model="iris", version="1", protocol="v2",
                                             code="200"))
    assert seen == sorted(seen) == [1, 3, 5, 7, 9, 11]  # b's 6th request reaches a's answer with b's next snapshot


def test_the_snapshot_file_is_owner_only_and_written_when_it_changes(tmp_path: Path):
    folder = worker_metrics.clear(tmp_path)
    assert folder.stat().st_mode & 0o777 == 0o700
    workers = WorkerMetrics(folder, pid=5)
    metrics = _traffic(1)
    workers.write(snapshot(metrics))
    assert workers.path.stat().st_mode & 0o777 == 0o600
    before = workers.path.stat().st_ino
    workers.write(snapshot(metrics))  # idle: no write
    assert workers.path.stat().st_ino == before
    assert [p.name for p in folder.iterdir()] == ["5.json"]  # no temporary file left


def test_a_single_process_server_writes_no_files(client, store: Store):
    assert client.get("/metrics").status_code == 200
    assert not worker_metrics.directory(store.home).exists()


@pytest.mark.server
def test_two_workers_report_the_same_totals(tmp_path: Path, iris_onnx, iris):
    X, _, _ = iris
    store = Store(tmp_path / "home")
    add_version(store, "iris", iris_onnx)
    stale = worker_metrics.clear(store.home) / "999.json"
    _write(stale.parent, stale.name, _traffic(50))  # a previous server's counts: gone when this one starts
    proc = start_server(store, workers=2)
    try:
        assert not stale.exists()
        url = store.server().url
        body = {"inputs": iris_inputs(X.head(1))}
        fresh = httpx.Limits(max_keepalive_connections=0)  # each request on a new connection: both workers answer
        with httpx.Client(base_url=url, timeout=10, limits=fresh) as client:
            codes = [client.post("/v2/models/iris/infer", json=body).status_code for _ in range(200)]
            assert codes == [200] * 200
            time.sleep(1.5)  # each worker has written its snapshot since
            files = {p.name for p in worker_metrics.directory(store.home).glob("*.json")}
            assert files == {f"{pid}.json" for pid in store.workers()}
            totals = []
            for _ in range(8):
                s = scrape(client.get("/metrics").text)
                totals.append((s("nbdeploy_requests_total", model="iris", version="1", protocol="v2", code="200"),
                               s("nbdeploy_request_duration_seconds_count", model="iris", version="1")))
        assert totals == [(200, 200)] * 8
    finally:
        stop_server(proc)
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in worker_metrics.directory(store.home).iterdir())
    assert os.stat(worker_metrics.directory(store.home)).st_mode & 0o777 == 0o700
