"""A live view of one model from the prediction log: :meth:`Monitor.snapshot` -> a plain dict.

The widget and ``/metrics`` render the same snapshot. Its cost is bounded however long the log
grows: traffic, latency and quality-over-time come from the rollups the log writer keeps per
``BUCKET_SECONDS`` (O(buckets) rows over ``history_seconds``); quality by count and label delay
from the last ``count_window * count_windows`` labelled predictions; drift from the inputs of
the last ``drift_sample`` predictions (recomputed only when new predictions arrived).

Traffic figures cover every version of the model (the endpoint); quality, drift and input
checks cover ``version`` (default: the store's ``production`` version), judged against its
``baseline`` held-out metrics and reference ``profile`` (``model.json`` keys, or arguments).
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from nbdeploy.monitor.alerts import AlertThresholds, evaluate_alerts
from nbdeploy.monitor.drift import DriftThresholds, feature_drift
from nbdeploy.monitor.quality import classification_quality, label_delay, regression_quality
from nbdeploy.store.log import BUCKET_SECONDS, LATENCY_EDGES_MS, LOG_FILE, N_LATENCY, label_key

NICE_WIDTHS = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
_COLS = "version, bucket, requests, rows, errors, server_errors, dropped, latency_sum, labelled, correct, " \
        "err_n, abs_err, sq_err, latency"


def percentile_ms(hist: np.ndarray, q: float) -> float | None:
    """The ``q`` quantile (0-1) of a latency histogram over ``LATENCY_EDGES_MS``, log-interpolated."""
    total = int(hist.sum())
    if total == 0:
        return None
    target = q * total
    cum = np.cumsum(hist)
    i = int(np.searchsorted(cum, max(target, 1e-9)))
    if i == 0:
        return float(LATENCY_EDGES_MS[0])
    if i >= len(LATENCY_EDGES_MS):
        return float(LATENCY_EDGES_MS[-1])
    lo, hi = LATENCY_EDGES_MS[i - 1], LATENCY_EDGES_MS[i]
    frac = (target - cum[i - 1]) / hist[i]
    return float(lo * (hi / lo) ** min(max(frac, 0.0), 1.0))


def _ratio(a: float, b: float) -> float | None:
    return float(a) / float(b) if b else None


class Monitor:
    """Snapshots of ``model`` from the log in ``home`` (``home/log.db``); safe to call from any thread."""

    def __init__(self, home: str | Path, model: str, *, version: int | None = None, task: str | None = None,
                 baseline: dict | None = None, profile: dict | None = None, classes: list | None = None,
                 store: Any = None, thresholds: AlertThresholds | None = None,
                 drift_thresholds: DriftThresholds | None = None, recent_seconds: float = 300.0,
                 history_seconds: float = 86_400.0, count_window: int = 500, count_windows: int = 10,
                 drift_sample: int = 2_000, chart_points: int = 60,
                 on_alert: Callable[[dict[str, Any], dict[str, Any]], None] | None = None) -> None:
        self.path = Path(home) / LOG_FILE
        self.model, self.store, self.on_alert = model, store, on_alert
        self._given = {"version": version, "task": task, "baseline": baseline, "profile": profile, "classes": classes}
        self.thresholds, self.drift_thresholds = thresholds, drift_thresholds
        self.recent_seconds, self.history_seconds = recent_seconds, history_seconds
        self.count_window, self.count_windows = count_window, count_windows
        self.drift_sample, self.chart_points = drift_sample, chart_points
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._meta: dict[int, dict] = {}
        self._drift_key: tuple | None = None
        self._drift: Any = None
        self._quality_key: tuple | None = None
        self._quality_cache: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
        self.level: str | None = None

    # -- context ---------------------------------------------------------------------------
    def _context(self, db: sqlite3.Connection | None) -> dict[str, Any]:
        ctx = dict(self._given)
        if ctx["version"] is None and self.store is not None:
            ctx["version"] = self.store.aliases(self.model).get("production")
        if ctx["version"] is None and db is not None:
            row = db.execute("SELECT MAX(version) FROM rollup WHERE model = ?", (self.model,)).fetchone()
            ctx["version"] = row[0]
        version = ctx["version"]
        if self.store is not None and version is not None:
            if version not in self._meta:
                self._meta[version] = self.store.version(self.model, version).meta
            meta = self._meta[version]
            baseline = meta.get("baseline") or (meta.get("metrics") or {}).get("metrics")  # the gate's held-out run
            for key, value in (("task", meta.get("task")), ("classes", meta.get("classes")),
                               ("profile", meta.get("profile")), ("baseline", baseline)):
                ctx[key] = value if ctx[key] is None else ctx[key]
        return ctx

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is None and self.path.exists():
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA query_only=1")
        return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- the snapshot ----------------------------------------------------------------------
    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """Everything the widget and ``/metrics`` show, as JSON-ready values (None when undefined).

        Calls ``on_alert(alert, snapshot)`` when the level differs from the previous snapshot's.
        """
        started = time.perf_counter()
        with self._lock:
            snap = self._snapshot(time.time() if now is None else now)
            snap["refresh_ms"] = 1000 * (time.perf_counter() - started)
            changed = snap["alert"]["level"] != (self.level or "OK")
            self.level = snap["alert"]["level"]
        if changed and self.on_alert is not None:
            try:
                self.on_alert(snap["alert"], snap)
            except Exception as exc:  # the user's callback must not stop the monitor; say it failed
                snap["notes"].append(f"on_alert callback raised {type(exc).__name__}: {exc}")
        return snap

    def _snapshot(self, now: float) -> dict[str, Any]:
        notes: list[str] = []
        db = self._connect()
        ctx = self._context(db)
        rollups = np.zeros((0, 13)), np.zeros((0, N_LATENCY), np.int64)
        labelled: list[tuple[Any, ...]] = []
        drift, inputs, shadow = None, {}, None
        if db is None:
            notes.append("nothing logged yet")
        else:
            db.execute("BEGIN")  # one consistent read across the queries
            try:
                rollups = self._rollups(db, now)
                labelled = self._labelled(db, ctx)
                drift = self._drift_report(db, ctx, notes)
                inputs = self._inputs(db, ctx, now)
                shadow = self._shadow(db)
            finally:
                db.execute("COMMIT")
        snap: dict[str, Any] = {"model": self.model, "version": ctx["version"], "task": ctx["task"], "at": now,
                                "recent_seconds": self.recent_seconds}
        snap.update(self._traffic(*rollups, ctx, now))
        snap["quality"], snap["labels"]["delay"] = self._quality(labelled, ctx)
        snap["task"] = snap["task"] or snap["quality"]["task"]
        snap["drift"], snap["inputs"], snap["notes"], snap["shadow"] = drift, inputs, notes, shadow
        status = evaluate_alerts(baseline=ctx["baseline"], quality=snap["quality"]["current"],
                                 drift=self._drift if drift is not None else None,
                                 error_rate=snap["traffic"]["error_rate"], p99_latency_ms=snap["traffic"]["p99_ms"],
                                 thresholds=self.thresholds)
        snap["alert"] = status.to_dict()
        return _plain(snap)

    def _shadow(self, db: sqlite3.Connection) -> dict[str, Any] | None:
        """How often the shadow version's answers (``<model>@shadow``) agree with production's."""
        rows = db.execute(
            "SELECT s.version, s.label, p.label, s.status FROM predictions s JOIN predictions p "
            "ON p.id = substr(s.id, 8) WHERE s.model = ? ORDER BY s.seq DESC LIMIT ?",
            (f"{self.model}@shadow", self.drift_sample)).fetchall()
        if not rows:
            return None
        version = rows[0][0]
        rows = [r for r in rows if r[0] == version]
        answered = [r for r in rows if r[3] == 200]
        same = sum(label_key(r[1]) == label_key(r[2]) for r in answered)
        return {"version": version, "n": len(rows), "errors": len(rows) - len(answered),
                "agreement": same / len(answered) if answered else None}

    def _rollups(self, db: sqlite3.Connection, now: float) -> tuple[np.ndarray, np.ndarray]:
        first = int((now - self.history_seconds) // BUCKET_SECONDS)
        rows = db.execute(f"SELECT {_COLS} FROM rollup WHERE model = ? AND bucket >= ? ORDER BY bucket",
                          (self.model, first)).fetchall()
        values = np.array([r[:13] for r in rows], dtype=float).reshape(-1, 13)
        empty = bytes(8 * N_LATENCY)
        hist = np.frombuffer(b"".join(r[13] or empty for r in rows), np.int64).reshape(-1, N_LATENCY)
        return values, hist

    def _traffic(self, v: np.ndarray, hist: np.ndarray, ctx: dict, now: float) -> dict[str, Any]:
        recent = v[:, 1] >= (now - self.recent_seconds) // BUCKET_SECONDS
        r = v[recent]
        span = min(self.recent_seconds, now - r[0, 1] * BUCKET_SECONDS) if len(r) else self.recent_seconds
        requests, errors = r[:, 2].sum(), r[:, 4].sum()
        h = hist[recent].sum(axis=0)
        traffic = {
            "requests": int(v[:, 2].sum()), "rows": int(v[:, 3].sum()), "errors": int(v[:, 4].sum()),
            "dropped": int(v[:, 6].sum()), "recent_requests": int(requests),
            "request_rate": (requests + r[:, 6].sum()) / max(span, 1.0) if len(r) else 0.0,
            "error_rate": _ratio(errors, requests), "server_errors": int(r[:, 5].sum()),
            "mean_ms": _ratio(r[:, 7].sum(), requests), "p50_ms": percentile_ms(h, 0.5),
            "p99_ms": percentile_ms(h, 0.99)}
        mine = v[v[:, 0] == (ctx["version"] if ctx["version"] is not None else -1)]
        labels = {"labelled": int(mine[:, 8].sum()), "coverage": _ratio(mine[:, 8].sum(), mine[:, 3].sum())}
        return {"traffic": traffic, "labels": labels, "series": self._series(v, hist, ctx, now)}

    def _series(self, v: np.ndarray, hist: np.ndarray, ctx: dict, now: float) -> dict[str, Any]:
        if not len(v):
            return {"width": BUCKET_SECONDS, "t": []}
        start = v[0, 1] * BUCKET_SECONDS
        width = next((w for w in NICE_WIDTHS if (now - start) / w <= self.chart_points), NICE_WIDTHS[-1])
        first = int(start // width)
        index = (v[:, 1] * BUCKET_SECONDS // width).astype(int) - first
        n = int(max(index.max(), (now // width) - first)) + 1
        sums = np.zeros((n, 13))
        np.add.at(sums, index, v)
        mine = v[:, 0] == (ctx["version"] if ctx["version"] is not None else -1)
        q = np.zeros((n, 13))
        np.add.at(q, index[mine], v[mine])
        h = np.zeros((n, N_LATENCY), np.int64)
        np.add.at(h, index, hist)
        t = (np.arange(n) + first) * width
        elapsed = np.clip(now - t, 1.0, width)
        series: dict[str, Any] = {
            "width": width, "t": t.tolist(), "requests": sums[:, 2].astype(int).tolist(),
            "rate": ((sums[:, 2] + sums[:, 6]) / elapsed).tolist(), "dropped": sums[:, 6].astype(int).tolist(),
            "error_rate": [_ratio(e, r) for e, r in zip(sums[:, 4], sums[:, 2], strict=True)],
            "p50_ms": [percentile_ms(row, 0.5) for row in h], "p99_ms": [percentile_ms(row, 0.99) for row in h],
            "labelled": q[:, 8].astype(int).tolist(),
            "accuracy": [_ratio(c, n_) for c, n_ in zip(q[:, 9], q[:, 8], strict=True)],
            "mae": [_ratio(a, n_) for a, n_ in zip(q[:, 11], q[:, 10], strict=True)],
            "rmse": [math.sqrt(s / n_) if n_ else None for s, n_ in zip(q[:, 12], q[:, 10], strict=True)]}
        return series

    def _labelled(self, db: sqlite3.Connection, ctx: dict) -> list[tuple[Any, ...]]:
        """(prediction time, feedback time, label, predicted, proba) of the last labelled predictions."""
        return db.execute(
            "SELECT f.pred_ts, f.ts, f.label, p.label, p.proba FROM feedback f JOIN predictions p "
            "ON p.seq = f.pred_seq WHERE f.model = ? AND f.version = ? ORDER BY f.pred_seq DESC LIMIT ?",
            (self.model, ctx["version"], self.count_window * self.count_windows)).fetchall()[::-1]

    def _quality(self, rows: list[tuple[Any, ...]], ctx: dict) -> tuple[dict[str, Any], dict[str, Any]]:
        """Quality of the last ``count_window`` labels, per count window, and the label delay (cached)."""
        key = (ctx["version"], ctx["task"], str(ctx["baseline"]), hash(tuple(rows)))
        if key != self._quality_key:
            self._quality_cache, self._quality_key = self._compute_quality(rows, ctx), key
        quality, delay = self._quality_cache
        return {**quality, "by_count": list(quality["by_count"])}, dict(delay)

    def _compute_quality(self, rows: list[tuple[Any, ...]], ctx: dict) -> tuple[dict[str, Any], dict[str, Any]]:
        task = ctx["task"] or _guess_task([r[3] for r in rows])
        delay = label_delay([r[0] for r in rows], [r[1] for r in rows])
        quality: dict[str, Any] = {"baseline": ctx["baseline"], "current": None, "by_count": [], "task": task}
        w = self.count_window
        if task == "classification":
            rows = [r for r in rows if label_key(r[2]) is not None and label_key(r[3]) is not None]
            y_true = np.array([label_key(r[2]) for r in rows], dtype=object)
            y_pred = np.array([label_key(r[3]) for r in rows], dtype=object)
            scores = {"accuracy": (y_true == y_pred).astype(float)}
        else:
            rows = [r for r in rows if _number(r[2]) and _number(r[3])]
            y_true = np.array([float(r[2]) for r in rows])
            y_pred = np.array([float(r[3]) for r in rows])
            scores = {"abs": np.abs(y_pred - y_true), "sq": (y_pred - y_true) ** 2}
        if not rows:
            return quality, delay
        if task == "classification":
            proba = [orjson.loads(r[4]) if r[4] is not None else None for r in rows[-w:]]
            same = all(p is not None for p in proba) and len({len(p) for p in proba}) == 1
            classes = [label_key(c) for c in ctx["classes"]] if ctx["classes"] else None
            quality["current"] = classification_quality(y_true[-w:], y_pred[-w:], np.array(proba) if same else None,
                                                        classes)
        else:
            quality["current"] = regression_quality(y_true[-w:], y_pred[-w:])
        ts = np.array([r[0] for r in rows])
        for start in range(len(rows) % w if len(rows) >= w else 0, len(rows), w):
            part = slice(start, start + w)
            window = {"window_start": float(ts[part][0]), "window_end": float(ts[part][-1]), "n": len(ts[part])}
            if task == "classification":
                window["accuracy"] = float(scores["accuracy"][part].mean())
            else:
                window["mae"] = float(scores["abs"][part].mean())
                window["rmse"] = float(np.sqrt(scores["sq"][part].mean()))
            quality["by_count"].append(window)
        return quality, delay

    def _drift_report(self, db: sqlite3.Connection, ctx: dict, notes: list[str]) -> dict[str, Any] | None:
        if not ctx["profile"]:
            notes.append(f"no reference profile for version {ctx['version']}: drift not computed")
            return None
        rows = db.execute("SELECT seq, inputs FROM predictions WHERE model = ? AND version = ? AND status = 200 "
                          "ORDER BY seq DESC LIMIT ?", (self.model, ctx["version"], self.drift_sample)).fetchall()
        key = (ctx["version"], rows[0][0] if rows else None, len(rows))
        if key != self._drift_key:
            names_row = db.execute("SELECT names FROM columns WHERE model = ? AND version = ?",
                                   (self.model, ctx["version"])).fetchone()
            names = orjson.loads(names_row[0]) if names_row else []
            values = orjson.loads(b"[" + b",".join(r[1] for r in rows if r[1]) + b"]")
            records = [dict(zip(names, x, strict=False)) if isinstance(x, list) else x for x in values]
            frame = pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=names)
            self._drift, self._drift_key = feature_drift(ctx["profile"], frame, self.drift_thresholds), key
        return self._drift.to_dict()

    def _inputs(self, db: sqlite3.Connection, ctx: dict, now: float) -> dict[str, dict[str, Any]]:
        """Per feature, over ``history_seconds``: values seen, missing, out of training range, unseen."""
        first = int((now - self.history_seconds) // BUCKET_SECONDS)
        rows = db.execute("SELECT feature, SUM(n), SUM(missing), SUM(out_of_range), SUM(unseen) FROM feature_rollup "
                          "WHERE model = ? AND version = ? AND bucket >= ? GROUP BY feature",
                          (self.model, ctx["version"], first)).fetchall()
        return {f: {"n": n, "missing": m, "out_of_range": o, "unseen": u, "rate": _ratio(o + u, n - m)}
                for f, n, m, o, u in rows}


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars as Python numbers, NaN as None."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _guess_task(predicted: list[Any]) -> str:
    """Without the store's word: float predictions are a regressor's, ints and strings a classifier's."""
    return "regression" if predicted and all(isinstance(p, float) for p in predicted) else "classification"
