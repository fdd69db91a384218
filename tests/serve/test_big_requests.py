"""Large legal requests through the real server process: logged (or counted), in bounded memory."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from serve_helpers import add_version, scrape

from nbdeploy.serve import process
from nbdeploy.store import Store

pytestmark = pytest.mark.server
ROWS = 200_000  # about 4 MB of JSON: just under the default body limit
PEAK_MB, SETTLED_MB = 600, 400  # before the writer encoded in parts: 1.7 GB after one request, 3.4 GB after three


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def body(columns: list[str], seed: int) -> bytes:
    values = np.round(np.random.default_rng(seed).uniform(0, 8, (ROWS, len(columns))), 2)
    return orjson.dumps({"inputs": [{"name": c, "datatype": "FP64", "shape": [ROWS, 1], "data": values[:, i].copy()}
                                    for i, c in enumerate(columns)]}, option=orjson.OPT_SERIALIZE_NUMPY)


def test_large_requests_are_logged_in_bounded_memory(tmp_path: Path, iris, iris_onnx) -> None:
    X, _, _ = iris
    store = Store(tmp_path / "home")
    add_version(store, "iris", iris_onnx)
    record = process.ensure_server(store)
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb(record.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        start_mb = rss_mb(record.pid)
        requests = 3
        with httpx.Client(base_url=record.url, timeout=60) as client:
            for i in range(requests):
                payload = body(list(X.columns), i)
                assert 3_500_000 < len(payload) < 4 * 1024 * 1024
                r = client.post("/v2/models/iris/infer", content=payload, headers={"Content-Type": "application/json"})
                assert r.status_code == 200, r.text[:200]
            deadline = time.monotonic() + 120
            while True:  # until the writer caught up: every answered row logged or counted as dropped
                with sqlite3.connect(store.home / "log.db") as db:
                    logged = db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
                dropped = scrape(client.get("/metrics").text)("nbdeploy_log_dropped_total")
                if logged + dropped * ROWS >= requests * ROWS or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            time.sleep(0.5)  # the writer hands freed memory back once it is idle
            settled = rss_mb(record.pid)
    finally:
        stop.set()
        sampler.join()
        process.stop_server(store)
    print(f"\nserver RSS: {start_mb:.0f} MB at start, peak {peak[0]:.0f} MB, {settled:.0f} MB after "
          f"{requests} requests of {ROWS:,} rows; logged {logged:,} rows, dropped {dropped:.0f} requests")
    assert logged + dropped * ROWS == requests * ROWS
    assert logged >= ROWS  # the log keeps up with one such request at least
    assert peak[0] < PEAK_MB and settled < SETTLED_MB
