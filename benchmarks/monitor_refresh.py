"""How long a monitor refresh takes over a log of 1,000,000 predictions.

Fills a fresh log through the real writer path (``PredictionLog.write``, batches of 10,000
events: iris-shaped rows, one request per row, 100 requests/s over ~2.8 hours, the last hour
drifted, 10 % labelled through ``PredictionLog.feedback``), then times:

* ``snapshot``: :meth:`Monitor.snapshot` with its drift cache cleared each time, as under live
  traffic where every refresh sees new predictions (the worst case);
* ``widget``: :meth:`MonitorWidget.refresh`: snapshot plus chart PNG and HTML.

Median of 5 after one warm-up, on each store backend in turn: SQLite (``log.db`` in a temporary
directory) and PostgreSQL (a throwaway server started here from the Debian package, as the tests
do, on loopback). The fill rate is what one worker's log writer commits per second.

Run: ``.venv/bin/python benchmarks/monitor_refresh.py [N] [--backend sqlite|postgresql|both]``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from sklearn.datasets import load_iris

from nbdeploy.display.monitor import MonitorWidget
from nbdeploy.monitor import reference_profile
from nbdeploy.monitor.live import Monitor
from nbdeploy.store.events import PredictionEvent
from nbdeploy.store.log import PredictionLog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tests' throwaway PostgreSQL

RATE = 100.0  # requests per second of simulated time
BATCH = 10_000


def fill(home: str, n: int, now: float) -> dict:
    X, _ = load_iris(return_X_y=True, as_frame=True)
    profile = reference_profile(X)
    log = PredictionLog(home, profiles=lambda m, v: profile, start=False)
    rng = np.random.default_rng(0)
    names = list(X.columns)
    base = X.to_numpy()
    start = now - n / RATE
    write_s = 0.0
    for lo in range(0, n, BATCH):
        idx = np.arange(lo, min(lo + BATCH, n))
        rows = base[rng.integers(0, len(base), len(idx))] + rng.normal(0, 0.05, (len(idx), 4))
        rows[idx > n - 3600 * RATE, 2] += 1.0  # the last hour drifts on petal length
        labels = rng.integers(0, 3, len(idx))
        proba = rng.dirichlet(np.ones(3), len(idx)).astype(np.float32)
        events = [PredictionEvent(id=f"req-{i}", ts=start + i / RATE, model="iris", version=1,
                                  inputs={c: rows[j, k:k + 1] for k, c in enumerate(names)},
                                  outputs={"label": labels[j:j + 1], "probabilities": proba[j:j + 1]},
                                  latency_ms=float(rng.lognormal(0.3, 0.4)), status=200 if i % 500 else 500,
                                  error=None if i % 500 else "boom")
                  for j, i in enumerate(idx)]
        t0 = time.perf_counter()
        log.write(events)
        write_s += time.perf_counter() - t0
    labelled = [i for i in range(n) if i % 10 == 3 and i % 500]
    t0 = time.perf_counter()
    for lo in range(0, len(labelled), 5_000):
        items = [{"id": f"req-{i}", "label": int(rng.integers(0, 3)) if i % 4 else int(i % 3)}
                 for i in labelled[lo:lo + 5_000]]
        log.feedback("iris", items)
    feedback_s = time.perf_counter() - t0
    log.close()
    print(f"filled {n:,} predictions in {write_s:.1f} s ({n / write_s:,.0f} events/s through the writer), "
          f"{len(labelled):,} labels in {feedback_s:.1f} s; log {size_mb(home):.0f} MB")
    return profile


def size_mb(home: str) -> float:
    if "://" not in home:
        return os.path.getsize(f"{home}/log.db") / 1e6
    from nbdeploy.store.postgres import Session
    db = Session(home, "log")
    return sum(db.execute("SELECT pg_total_relation_size(?)", (t,)).fetchone()[0]
               for t in ("predictions", "feedback", "rollup", "feature_rollup")) / 1e6


@contextlib.contextmanager
def store(backend: str) -> Iterator[str]:
    """A fresh store's home on ``backend``: a temporary directory, or a database on a throwaway server."""
    from nbdeploy.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        if backend == "sqlite":
            yield tmp
            return
        import pgserver

        server = pgserver.PostgresServer()
        if not server.available():
            raise SystemExit(f"PostgreSQL: {server.reason}")
        server.start()
        os.environ["NBDEPLOY_LOCAL_DIR"] = tmp
        try:
            url = server.fresh_database()
            Store(url)  # creates the tables
            yield url
        finally:
            from nbdeploy.store import postgres
            postgres.close_pools()
            server.stop()


def timed(fn, repeat: int = 5) -> tuple[float, list[float]]:
    fn()  # warm-up: connection, imports, page cache
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times), times


def main(n: int = 1_000_000, backend: str = "sqlite") -> None:
    print(f"== {backend}")
    with store(backend) as home:
        profile = fill(home, n, time.time())
        if "://" in home:  # what autovacuum does within a minute of a bulk load (statistics for the planner)
            from nbdeploy.store.postgres import Session
            Session(home, "log").execute("ANALYZE")
        monitor = Monitor(home, "iris", version=1, task="classification", profile=profile,
                          baseline={"accuracy": 0.95}, classes=[0, 1, 2])

        def snapshot() -> None:
            monitor._drift_key = monitor._quality_key = None  # as if new predictions and labels had arrived
            monitor.snapshot()

        median, times = timed(snapshot)
        snap = monitor.snapshot()
        print(f"snapshot: median {median:.0f} ms over 5 ({', '.join(f'{t:.0f}' for t in times)}); "
              f"alert {snap['alert']['level']}, drifted {snap['drift']['drifted_features']}, "
              f"{snap['traffic']['requests']:,} requests in rollups, {len(snap['series']['t'])} chart points")
        widget = MonitorWidget(monitor, autostart=False)

        def refresh() -> None:
            monitor._drift_key = monitor._quality_key = None
            widget._series = None  # redraw the chart too
            widget.refresh()

        median, times = timed(refresh)
        print(f"widget refresh (snapshot + chart + HTML): median {median:.0f} ms over 5 "
              f"({', '.join(f'{t:.0f}' for t in times)})")
        widget.stop()
        monitor.close()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.platform()}; load average {os.getloadavg()[0]:.1f} (other work on the machine)")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    chosen = sys.argv[sys.argv.index("--backend") + 1] if "--backend" in sys.argv else "both"
    args = [a for a in args if a != chosen]
    for name in (["sqlite", "postgresql"] if chosen == "both" else [chosen]):
        main(int(args[0]) if args else 1_000_000, name)
