"""Soak: sustained traffic on one endpoint while versions are swapped, labels posted and the monitor read.

Several client threads call one model through the real server process (V2 with one fixed client
id, V2 without an id, V2 with an id each, MLflow), a swapper moves ``production`` to a new
version every few seconds, a labeller posts feedback by the prediction ids the server answered,
and a reader takes monitor snapshots and scrapes ``/metrics``. At the end, once the log's writer
caught up, every answered request must be logged or counted as dropped, and every answered row
logged unless its request was dropped. Figures: requests, rate, swaps, failures, logged vs
answered, dropped, the server's RSS (VmRSS).

Run: ``.venv/bin/python benchmarks/soak.py [SECONDS]`` (default 600); the test suite runs it for
30 s (tests/serve/test_soak.py).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import random
import sqlite3
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from nbdeploy.serve import process
from nbdeploy.store import PRODUCTION, Store

MODEL = "iris"
FIXED_ID = "1"  # what many V2 clients send with every request


@dataclass
class Figures:
    duration_s: float = 0.0
    requests: int = 0  # answered with 200
    rows: int = 0
    failures: list[str] = field(default_factory=list)
    fixed_id_requests: int = 0
    swaps: int = 0
    labels_sent: int = 0
    labels_accepted: int = 0
    monitor_reads: int = 0
    logged_requests: int = 0
    logged_rows: int = 0
    logged_fixed_id: int = 0
    dropped: int = 0
    rss_start_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_end_mb: float = 0.0

    @property
    def rate(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    def report(self) -> str:
        return (f"soak {self.duration_s:.0f} s: {self.requests:,} requests ({self.rate:,.0f}/s, {self.rows:,} rows; "
                f"{self.fixed_id_requests:,} with client id {FIXED_ID!r}), {self.swaps} swaps, "
                f"{len(self.failures)} failures; logged {self.logged_requests:,} requests / {self.logged_rows:,} rows "
                f"of {self.requests:,} / {self.rows:,} answered ({self.logged_fixed_id:,} under client id "
                f"{FIXED_ID!r}), {self.dropped} dropped; labels {self.labels_accepted:,} of {self.labels_sent:,} "
                f"accepted; {self.monitor_reads} monitor reads; server RSS {self.rss_start_mb:.0f} MB at start, "
                f"peak {self.rss_peak_mb:.0f} MB, {self.rss_end_mb:.0f} MB at the end")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def dropped_total(client: httpx.Client) -> int:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("nbdeploy_log_dropped_total "):
            return int(float(line.split()[1]))
    raise AssertionError("/metrics has no nbdeploy_log_dropped_total")


def log_db(store: Store) -> Any:
    """A connection to ``store``'s prediction log: ``log.db``, or the PostgreSQL database."""
    from nbdeploy.store import database

    return database.connect(store.where, "log") or contextlib.closing(sqlite3.connect(store.home / "log.db"))


def make_store(home: Path | str) -> tuple[Store, Any]:
    """A store serving a logistic regression on iris (converted as deploy() does, without its gate)."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from nbdeploy.convert.conversion import to_onnx
    from nbdeploy.signature import from_sample

    X, y = load_iris(return_X_y=True, as_frame=True)
    conv = to_onnx(LogisticRegression(max_iter=500).fit(X, y), from_sample(X))
    store = Store(home)
    version = store.register(MODEL, conv.onnx_bytes, {"task": conv.task, "classes": conv.classes,
                                                      "outputs": conv.outputs, "signature": conv.signature.to_dict()})
    store.set_alias(MODEL, PRODUCTION, version)
    store.set_serving(MODEL, True)
    return store, X


class Soak:
    def __init__(self, store: Store, X: Any, url: str, pid: int, swap_every: float) -> None:
        self.store, self.X, self.url, self.pid, self.swap_every = store, X, url, pid, swap_every
        self.figures = Figures()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.to_label: deque[tuple[str, int, list[Any]]] = deque(maxlen=5_000)  # (key, rows, labels answered)

    # -- traffic -------------------------------------------------------------------------
    def v2(self, rows: Any, request_id: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"inputs": [{"name": c, "datatype": "FP64", "shape": [len(rows), 1],
                                            "data": rows[c].tolist()} for c in rows.columns],
                                "outputs": [{"name": "label"}]}
        if request_id is not None:
            body["id"] = request_id
        return body

    def client(self, kind: str, seed: int) -> None:
        rng = random.Random(seed)
        counter = itertools.count()
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self.stop.is_set():
                n = rng.choice((1, 1, 1, 2, 5)) if kind != "rows" else rng.randint(1, 40)
                rows = self.X.sample(n, random_state=rng.randrange(1 << 30))
                try:
                    if kind == "mlflow":
                        r = http.post(f"/models/{MODEL}/invocations",
                                      json={"dataframe_records": rows.to_dict(orient="records")})
                        labels = r.json()["predictions"] if r.status_code == 200 else None
                    else:
                        request_id = {"fixed": FIXED_ID, "none": None}.get(kind, f"{kind}-{seed}-{next(counter)}")
                        r = http.post(f"/v2/models/{MODEL}/infer", json=self.v2(rows, request_id))
                        labels = r.json()["outputs"][0]["data"] if r.status_code == 200 else None
                except httpx.HTTPError as exc:
                    self.fail(f"{kind}: {exc!r}")
                    continue
                if r.status_code != 200:
                    self.fail(f"{kind}: {r.status_code} {r.text[:200]}")
                    continue
                with self.lock:
                    self.figures.requests += 1
                    self.figures.rows += n
                    self.figures.fixed_id_requests += kind == "fixed"
                self.to_label.append((r.headers["x-request-id"], n, labels))

    def fail(self, what: str) -> None:
        with self.lock:
            self.figures.failures.append(what)

    # -- the rest of the day ---------------------------------------------------------------
    def swapper(self) -> None:
        record = self.store.version(MODEL, 1)
        while not self.stop.wait(self.swap_every):
            try:
                version = self.store.register(MODEL, record.onnx_bytes(), record.meta)
                self.store.set_alias(MODEL, PRODUCTION, version)
                process.wait_applied(self.store, self.store.generation(), timeout=30)
                self.figures.swaps += 1
            except Exception as exc:
                self.fail(f"swap: {exc!r}")

    def labeller(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self.stop.wait(0.2):
                items = []
                while self.to_label and len(items) < 200:
                    key, n, labels = self.to_label.popleft()
                    ids = [key] if n == 1 else [f"{key}:{i}" for i in range(n)]
                    items += [{"id": i, "label": label} for i, label in zip(ids, labels, strict=True)]
                if not items:
                    continue
                r = http.post(f"/v2/models/{MODEL}/feedback", json=items)
                self.figures.labels_sent += len(items)
                if r.status_code != 200:
                    self.fail(f"feedback: {r.status_code} {r.text[:200]}")
                else:
                    self.figures.labels_accepted += r.json()["accepted"]

    def reader(self) -> None:
        from nbdeploy.monitor.live import Monitor

        monitor = Monitor(self.store.location, MODEL, store=self.store)
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self.stop.wait(1.0):
                try:
                    monitor.snapshot()
                    if http.get("/metrics").status_code != 200:
                        self.fail("/metrics did not answer 200")
                    self.figures.monitor_reads += 1
                except Exception as exc:
                    self.fail(f"monitor: {exc!r}")

    def sampler(self) -> None:
        while not self.stop.wait(0.1):
            self.figures.rss_peak_mb = max(self.figures.rss_peak_mb, rss_mb(self.pid))

    # -- the run -------------------------------------------------------------------------
    def run(self, seconds: float) -> Figures:
        f = self.figures
        f.rss_start_mb = f.rss_peak_mb = rss_mb(self.pid)
        kinds = ["fixed", "none", "mlflow", "rows", "fixed", "unique"]
        threads = [threading.Thread(target=self.client, args=(k, i)) for i, k in enumerate(kinds)]
        threads += [threading.Thread(target=t) for t in (self.swapper, self.labeller, self.reader, self.sampler)]
        started = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(seconds)
        self.stop.set()
        for t in threads:
            t.join(60)
        f.duration_s = time.monotonic() - started
        self.settle()
        return f

    def settle(self, timeout: float = 60.0) -> None:
        """Wait for the writer to catch up, then read what was logged and dropped."""
        f = self.figures
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while True:
                db = log_db(self.store)
                with db if isinstance(db, contextlib.closing) else contextlib.nullcontext(db) as db:
                    f.logged_requests = db.execute("SELECT COALESCE(SUM(requests), 0) FROM rollup WHERE model = ?",
                                                   (MODEL,)).fetchone()[0]
                    f.logged_rows = db.execute("SELECT COUNT(*) FROM predictions WHERE model = ?",
                                               (MODEL,)).fetchone()[0]
                    f.logged_fixed_id = db.execute("SELECT COUNT(*) FROM predictions WHERE client_id = ?",
                                                   (FIXED_ID,)).fetchone()[0]
                f.dropped = dropped_total(http)
                if f.logged_requests + f.dropped >= f.requests or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            f.rss_end_mb = rss_mb(self.pid)


def run(seconds: float, home: Path | str | None = None, swap_every: float = 3.0) -> Figures:
    """A soak of ``seconds`` against a fresh store at ``home`` (a directory or a PostgreSQL URL; a
    temporary directory by default)."""
    with tempfile.TemporaryDirectory() as tmp:
        store, X = make_store(home or tmp)
        record = process.ensure_server(store)
        try:
            return Soak(store, X, record.url, record.pid, swap_every).run(seconds)
        finally:
            process.stop_server(store)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("seconds", nargs="?", type=float, default=600.0)
    parser.add_argument("--swap-every", type=float, default=3.0)
    args = parser.parse_args()
    figures = run(args.seconds, swap_every=args.swap_every)
    print(figures.report())
    for failure in figures.failures[:10]:
        print("  failure:", failure)


if __name__ == "__main__":
    main()
