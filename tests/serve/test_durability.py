"""Acknowledged labels survive SIGKILL of the real server in the middle of concurrent feedback."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import threading
import time

import httpx
import pytest
from serve_helpers import add_version, iris_inputs

from nbdeploy.serve import process
from nbdeploy.store import Store
from nbdeploy.store.postgres import Session

pytestmark = pytest.mark.server
TRIALS = 10
ROWS = 400  # predictions labelled per trial, by four clients, one to four labels per request


def stored_labels(store: Store) -> dict[str, int]:
    """What the log holds, read on a connection of its own (SQLite's file, or the PostgreSQL database)."""
    if store.where.is_postgres:
        return {r[0]: r[1] for r in Session(store.location, "log").execute("SELECT id, label FROM feedback")}
    with sqlite3.connect(store.home / "log.db") as db:
        return dict(db.execute("SELECT id, label FROM feedback").fetchall())


def label_until_killed(url: str, ids: list[str], acked: dict[str, int], errors: list[str]) -> None:
    """Post labels for ``ids``, 1 to 4 per request, recording what the server acknowledged with 200."""
    pos, size = 0, 1
    with httpx.Client(base_url=url, timeout=10) as client:
        while pos < len(ids):
            items = [{"id": i, "label": hash(i) % 3} for i in ids[pos:pos + size]]
            pos, size = pos + size, size % 4 + 1
            try:
                r = client.post("/v2/models/iris/feedback", json=items)
            except httpx.TransportError:
                return  # the server is gone: this request was never acknowledged
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text[:200]}")
                return
            acked.update((item["id"], item["label"]) for item in items)


def test_no_acknowledged_label_is_lost_to_sigkill(store_home: str, iris, iris_onnx) -> None:
    X, _, _ = iris
    store = Store(store_home)
    add_version(store, "iris", iris_onnx)
    rng = random.Random(0)
    acked: dict[str, int] = {}
    errors: list[str] = []
    lost: set[str] = set()
    for trial in range(TRIALS + 1):
        record = process.ensure_server(store)  # after a kill: a restart on the same log
        stored = stored_labels(store) if trial else {}
        lost |= {i for i, label in acked.items() if stored.get(i) != label}
        if trial == TRIALS:
            process.stop_server(store)
            break
        rows = X.sample(ROWS, replace=True, random_state=trial)
        r = httpx.post(f"{record.url}/v2/models/iris/infer", json={"inputs": iris_inputs(rows)}, timeout=30)
        assert r.status_code == 200
        ids = [f"{r.headers['x-request-id']}:{i}" for i in range(ROWS)]
        mine: list[dict[str, int]] = [{} for _ in range(4)]
        clients = [threading.Thread(target=label_until_killed, args=(record.url, ids[w::4], mine[w], errors))
                   for w in range(4)]
        for c in clients:
            c.start()
        deadline = time.monotonic() + 20
        while sum(map(len, mine)) < 20 and time.monotonic() < deadline:  # labels are flowing
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(record.pid, signal.SIGKILL)  # mid-stream: requests in flight, transactions open
        for c in clients:
            c.join(30)
        assert not any(c.is_alive() for c in clients)
        while process.pid_alive(record.pid):
            time.sleep(0.01)
        for m in mine:
            acked.update(m)
    print(f"\n{TRIALS} SIGKILL trials: {len(acked):,} labels acknowledged, {len(lost)} lost")
    assert not errors, errors[:3]
    assert len(acked) >= 20 * TRIALS
    assert not lost, f"{len(lost)} acknowledged labels lost, e.g. {sorted(lost)[:5]}"
