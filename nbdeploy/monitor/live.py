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
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from nbdeploy.errors import NotFound
from nbdeploy.monitor.alerts import AlertThresholds, evaluate_alerts
from nbdeploy.monitor.canary import canary_snapshot
from nbdeploy.monitor.drift import DriftThresholds, feature_drift
from nbdeploy.monitor.estimate import estimated_quality
from nbdeploy.monitor.metrics import percentile_ms  # one home: the canary's arms use it too
from nbdeploy.monitor.quality import classification_quality, label_delay, regression_quality
from nbdeploy.store import database
from nbdeploy.store.batch import BUCKET_SECONDS
from nbdeploy.store.labels import label_key, label_keys
from nbdeploy.store.reader import LabelledPredictions, LogReader, Rollups
from nbdeploy.store.registry import PRODUCTION

if TYPE_CHECKING:  # built by the caller: the timeline reads this module's chart widths
    from nbdeploy.monitor.timeline import Timeline

EARLIER_ESTIMATES = 3  # earlier production versions whose estimate a timeline keeps (each reads its own windows)
NICE_WIDTHS = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def _ratio(a: float, b: float) -> float | None:
    return float(a) / float(b) if b else None


class Monitor:
    """Snapshots of ``model`` from the log of the store at ``home`` (its location: a directory, whose
    ``log.db`` holds the log, or a PostgreSQL URL); safe to call from any thread."""

    def __init__(self, home: str | Path, model: str, *, version: int | None = None, task: str | None = None,
                 baseline: dict | None = None, profile: dict | None = None, classes: list | None = None,
                 store: Any = None, thresholds: AlertThresholds | None = None,
                 drift_thresholds: DriftThresholds | None = None, recent_seconds: float = 300.0,
                 history_seconds: float = 86_400.0, count_window: int = 500, count_windows: int = 10,
                 drift_sample: int = 2_000, chart_points: int = 60,
                 on_alert: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
                 timeline: Timeline | None = None) -> None:
        self.log = LogReader(home)
        self.timeline = timeline  # when given, snapshots carry the model's events and series (``timeline``)
        self.path = self.log.path
        # which store this monitors (a kernel keeps one live view per store and model): its location
        # text, the same for every handle on it whether it is a directory or a URL
        self.location = database.locate(home).text
        self.model, self.store, self.on_alert = model, store, on_alert
        self._given = {"version": version, "task": task, "baseline": baseline, "profile": profile, "classes": classes}
        self.thresholds, self.drift_thresholds = thresholds, drift_thresholds
        self.recent_seconds, self.history_seconds = recent_seconds, history_seconds
        self.count_window, self.count_windows = count_window, count_windows
        self.drift_sample, self.chart_points = drift_sample, chart_points
        self._lock = threading.Lock()
        self._meta: dict[int, dict] = {}
        self._drift_key: tuple | None = None
        self._drift: Any = None
        self._quality_key: tuple | None = None
        self._quality_cache: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
        self.level: str | None = None

    # -- context ---------------------------------------------------------------------------
    def _context(self) -> dict[str, Any]:
        ctx = dict(self._given)
        if ctx["version"] is None and self.store is not None:
            ctx["version"] = self.store.aliases(self.model).get("production")
        if ctx["version"] is None:
            ctx["version"] = self.log.latest_version(self.model)
        version = ctx["version"]
        if self.store is not None and version is not None:
            if version not in self._meta:
                try:
                    self._meta[version] = self.store.version(self.model, version).meta
                except NotFound:  # the log's latest version, deleted since (delete, prune)
                    self._meta[version] = {}
            meta = self._meta[version]
            baseline = meta.get("baseline") or (meta.get("metrics") or {}).get("metrics")  # the gate's held-out run
            for key, value in (("task", meta.get("task")), ("classes", meta.get("classes")),
                               ("profile", meta.get("profile")), ("baseline", baseline)):
                ctx[key] = value if ctx[key] is None else ctx[key]
        return ctx

    def close(self) -> None:
        with self._lock:
            self.log.close()

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
        since = int((now - self.history_seconds) // BUCKET_SECONDS)
        with self.log.consistent():  # one state of the log across the queries
            ctx = self._context()
            logged = self.log.exists()
            if not logged:
                notes.append("nothing logged yet")
            notes += [detail for _, detail in self.log.incidents(now - self.history_seconds)]  # e.g. a file set aside
            rollups = self.log.rollups(self.model, since)
            labelled = self.log.labelled(self.model, ctx["version"], self.count_window * self.count_windows)
            drift = self._drift_report(ctx, notes) if logged else None
            inputs = {feature: {"n": n, "missing": m, "out_of_range": o, "unseen": u, "rate": _ratio(o + u, n - m)}
                      for feature, (n, m, o, u) in self.log.input_counts(self.model, ctx["version"], since).items()}
            shadow = self._shadow()
            story = None if self.timeline is None else self.timeline.build(self.log, now, rollups, since)
        snap: dict[str, Any] = {"model": self.model, "version": ctx["version"], "task": ctx["task"], "at": now,
                                "recent_seconds": self.recent_seconds}
        snap.update(self._traffic(rollups, ctx, now))
        snap["quality"], snap["labels"]["delay"] = self._quality(labelled, ctx)
        snap["estimated"] = estimated_quality(self.log, self.model, ctx["version"], self._meta.get(ctx["version"]),
                                              window=self.count_window, windows=self.count_windows, notes=notes)
        if story is not None and self.store is not None:
            story["estimated_before"] = self._estimated_before(story, ctx["version"])
        snap["task"] = snap["task"] or snap["quality"]["task"]
        snap["drift"], snap["inputs"], snap["notes"], snap["shadow"] = drift, inputs, notes, shadow
        # the running (else the latest) canary's arms side by side, as its guards judge them
        snap["canary"] = None if self.store is None else canary_snapshot(self.store, self.log, self.model,
                                                                         metas=self._meta, now=now)
        status = evaluate_alerts(baseline=ctx["baseline"], quality=snap["quality"]["current"],
                                 drift=self._drift if drift is not None else None,
                                 error_rate=snap["traffic"]["error_rate"], p99_latency_ms=snap["traffic"]["p99_ms"],
                                 thresholds=self.thresholds, estimated=snap["estimated"])
        snap["alert"] = status.to_dict()
        if story is not None:
            snap["timeline"] = story
        return _plain(snap)

    def _estimated_before(self, story: dict[str, Any], current: int | None) -> list[dict[str, Any]]:
        """The estimate's windows of the versions production served earlier in the timeline (the last few), so a
        chart keeps showing how the estimate moved before a retrain or a promotion; each point names its version."""
        moves = [m["version"] for m in self.store.alias_history(self.model) if m["alias"] == PRODUCTION]
        earlier = [v for v in dict.fromkeys(reversed(moves)) if v not in (None, current)]
        points: list[dict[str, Any]] = []
        for version in earlier[:EARLIER_ESTIMATES]:
            if version not in self._meta:
                try:
                    self._meta[version] = self.store.version(self.model, version).meta
                except NotFound:  # deleted since: nothing to estimate with
                    continue
            estimate = estimated_quality(self.log, self.model, version, self._meta[version], window=self.count_window,
                                         windows=self.count_windows, notes=[])
            if estimate is not None:
                points += [{**p, "version": version, "metric": estimate["metric"]} for p in estimate["series"]
                           if p["t"] >= story["start"]]
        return sorted(points, key=lambda p: p["t"])

    def _shadow(self) -> dict[str, Any] | None:
        """How often the shadow version's answers agree with production's (its latest version only)."""
        answers = self.log.shadow_answers(self.model, self.drift_sample)
        if not answers:
            return None
        version = answers[0].version
        answers = [a for a in answers if a.version == version]
        answered = [a for a in answers if a.status == 200]
        same = sum(label_key(a.label) == label_key(a.production_label) for a in answered)
        return {"version": version, "n": len(answers), "errors": len(answers) - len(answered),
                "agreement": same / len(answered) if answered else None}

    def _traffic(self, rollups: Rollups, ctx: dict, now: float) -> dict[str, Any]:
        r = rollups.where(rollups.bucket >= (now - self.recent_seconds) // BUCKET_SECONDS)  # the recent buckets
        span = min(self.recent_seconds, now - r.bucket[0] * BUCKET_SECONDS) if len(r) else self.recent_seconds
        requests, errors = r.requests.sum(), r.errors.sum()
        h = r.latency.sum(axis=0)
        traffic = {
            "requests": int(rollups.requests.sum()), "rows": int(rollups.rows.sum()),
            "errors": int(rollups.errors.sum()), "dropped": int(rollups.dropped.sum()),
            "recent_requests": int(requests),
            "request_rate": (requests + r.dropped.sum()) / max(span, 1.0) if len(r) else 0.0,
            "error_rate": _ratio(errors, requests), "server_errors": int(r.server_errors.sum()),
            "mean_ms": _ratio(r.latency_sum.sum(), requests), "p50_ms": percentile_ms(h, 0.5),
            "p99_ms": percentile_ms(h, 0.99)}
        mine = rollups.where(rollups.version == _version(ctx))
        labels = {"labelled": int(mine.labelled.sum()), "coverage": _ratio(mine.labelled.sum(), mine.rows.sum())}
        return {"traffic": traffic, "labels": labels, "series": self._series(rollups, ctx, now)}

    def _series(self, r: Rollups, ctx: dict, now: float) -> dict[str, Any]:
        """Traffic (every version) and quality (``version``) per chart interval: a nice width giving at most
        ``chart_points`` intervals from the first bucket to ``now``."""
        if not len(r):
            return {"width": BUCKET_SECONDS, "t": []}
        start = r.bucket[0] * BUCKET_SECONDS
        width = next((w for w in NICE_WIDTHS if (now - start) / w <= self.chart_points), NICE_WIDTHS[-1])
        first = int(start // width)
        index = (r.bucket * BUCKET_SECONDS // width).astype(int) - first
        n = int(max(index.max(), (now // width) - first)) + 1
        mine = r.version == _version(ctx)

        def total(values: np.ndarray, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
            return np.bincount(index[rows], weights=values[rows], minlength=n)

        requests, errors, dropped = total(r.requests), total(r.errors), total(r.dropped)
        labelled, correct = total(r.labelled, mine), total(r.correct, mine)
        err_n, abs_err, sq_err = total(r.err_n, mine), total(r.abs_err, mine), total(r.sq_err, mine)
        h = np.zeros((n, r.latency.shape[1]), np.int64)
        np.add.at(h, index, r.latency)
        t = (np.arange(n) + first) * width
        elapsed = np.clip(now - t, 1.0, width)
        return {
            "width": width, "t": t.tolist(), "requests": requests.astype(int).tolist(),
            "rate": ((requests + dropped) / elapsed).tolist(), "dropped": dropped.astype(int).tolist(),
            "error_rate": [_ratio(e, q) for e, q in zip(errors, requests, strict=True)],
            "p50_ms": [percentile_ms(row, 0.5) for row in h], "p99_ms": [percentile_ms(row, 0.99) for row in h],
            "labelled": labelled.astype(int).tolist(),
            "accuracy": [_ratio(c, k) for c, k in zip(correct, labelled, strict=True)],
            "mae": [_ratio(a, k) for a, k in zip(abs_err, err_n, strict=True)],
            "rmse": [math.sqrt(s / k) if k else None for s, k in zip(sq_err, err_n, strict=True)]}

    def _quality(self, rows: LabelledPredictions, ctx: dict) -> tuple[dict[str, Any], dict[str, Any]]:
        """Quality of the last ``count_window`` labels, per count window, and the label delay (cached)."""
        key = (ctx["version"], ctx["task"], str(ctx["baseline"]), hash(rows))
        if key != self._quality_key:
            self._quality_cache, self._quality_key = self._compute_quality(rows, ctx), key
        quality, delay = self._quality_cache
        return {**quality, "by_count": list(quality["by_count"])}, dict(delay)

    def _compute_quality(self, rows: LabelledPredictions, ctx: dict) -> tuple[dict[str, Any], dict[str, Any]]:
        task = ctx["task"] or _guess_task(rows.predicted)
        delay = label_delay(rows.pred_ts, rows.feedback_ts)
        quality: dict[str, Any] = {"baseline": ctx["baseline"], "current": None, "by_count": [], "task": task}
        w = self.count_window
        if task == "classification":
            true, pred = label_keys(rows.label), label_keys(rows.predicted)
            kept = [i for i, (t, p) in enumerate(zip(true, pred, strict=True)) if t is not None and p is not None]
            y_true = np.array([true[i] for i in kept], dtype=object)
            y_pred = np.array([pred[i] for i in kept], dtype=object)
            scores = {"accuracy": (y_true == y_pred).astype(float)}
        else:
            kept = [i for i, (t, p) in enumerate(zip(rows.label, rows.predicted, strict=True))
                    if _number(t) and _number(p)]
            y_true = np.array([float(rows.label[i]) for i in kept])
            y_pred = np.array([float(rows.predicted[i]) for i in kept])
            scores = {"abs": np.abs(y_pred - y_true), "sq": (y_pred - y_true) ** 2}
        if not kept:
            return quality, delay
        if task == "classification":
            proba = rows.probabilities(kept[-w:])
            same = all(p is not None for p in proba) and len({len(p) for p in proba}) == 1
            classes = [label_key(c) for c in ctx["classes"]] if ctx["classes"] else None
            quality["current"] = classification_quality(y_true[-w:], y_pred[-w:], np.array(proba) if same else None,
                                                        classes)
        else:
            quality["current"] = regression_quality(y_true[-w:], y_pred[-w:])
        ts = np.array([rows.pred_ts[i] for i in kept])
        for start in range(len(kept) % w if len(kept) >= w else 0, len(kept), w):
            part = slice(start, start + w)
            window = {"window_start": float(ts[part][0]), "window_end": float(ts[part][-1]), "n": len(ts[part])}
            if task == "classification":
                window["accuracy"] = float(scores["accuracy"][part].mean())
            else:
                window["mae"] = float(scores["abs"][part].mean())
                window["rmse"] = float(np.sqrt(scores["sq"][part].mean()))
            quality["by_count"].append(window)
        return quality, delay

    def _drift_report(self, ctx: dict, notes: list[str]) -> dict[str, Any] | None:
        """Drift of the last ``drift_sample`` inputs, recomputed only when newer predictions arrived."""
        if not ctx["profile"]:
            notes.append(f"no reference profile for version {ctx['version']}: drift not computed")
            return None
        key = (ctx["version"], self.log.latest_prediction(self.model, ctx["version"]))
        if key != self._drift_key:
            records = self.log.recent_inputs(self.model, ctx["version"], self.drift_sample)
            frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
            self._drift, self._drift_key = feature_drift(ctx["profile"], frame, self.drift_thresholds), key
        return self._drift.to_dict()


def _version(ctx: dict) -> int:
    """The monitored version, or -1 (no version) so that comparisons select nothing."""
    return ctx["version"] if ctx["version"] is not None else -1


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


def _guess_task(predicted: tuple[Any, ...]) -> str:
    """Without the store's word: float predictions are a regressor's, ints and strings a classifier's."""
    return "regression" if predicted and all(isinstance(p, float) for p in predicted) else "classification"
