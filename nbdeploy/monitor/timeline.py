"""The story of one model over time, as plain data: what happened to it (events) and how it served (series).

Events come from the store: versions registered (retrained and refused ones marked), moves of the
``production`` alias (deploys, promotions, rollbacks, canary promotions), shadows, canaries started
and ended, and alerts raised and cleared. Series come from the prediction log's rollups, binned
into at most ``points`` intervals of a nice width from the window's start to now: traffic, latency,
realised quality of whatever served (every version: what the endpoint's clients got), the share of
inputs outside what the model was trained on (a cheap drift signal), and the baseline of the
production version in force.

The window starts at the model's first deploy, or at ``since`` / ``window`` seconds back, and never
further back than ``max_seconds`` unless ``since`` asks for it. The cost is one pass over the
rollup rows in the window (the live monitor hands over the rows it has already read) plus the
model's events.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from nbdeploy.errors import InvalidInput, NotFound
from nbdeploy.monitor.live import NICE_WIDTHS
from nbdeploy.monitor.metrics import percentile_ms
from nbdeploy.store.alerts import Alert, alerts
from nbdeploy.store.batch import BUCKET_SECONDS
from nbdeploy.store.canary import canaries
from nbdeploy.store.labels import label_key
from nbdeploy.store.reader import LogReader, Rollups
from nbdeploy.store.registry import PRODUCTION, SHADOW, Store, version_states

DEPLOY_SECONDS = 120.0  # a version that becomes production this soon after it was registered was deployed
FINE_WIDTHS = (1, 2, 5)  # seconds: finer than the rollups' buckets, from the logged rows of a short window
FINE_ROWS = 5_000  # at most this many rows per version are read for them


@dataclass(frozen=True)
class Event:
    """One thing that happened to a model; ``label`` is short enough to mark a chart with."""

    at: float
    kind: str  # deploy | retrain | registered | refused | promote | rollback | shadow | canary | alert | recovery
    label: str
    version: int | None = None
    detail: str = ""
    level: str | None = None  # alerts: WARN, ALERT; recoveries: OK

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def baseline_of(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The held-out metrics a version is judged against (the gate's run), if it has any."""
    return meta.get("baseline") or (meta.get("metrics") or {}).get("metrics")


def production_moves(store: Store, name: str) -> list[tuple[float, int, str]]:
    """``(at, version, kind)`` of every move of ``name``'s production alias, oldest first."""
    return [(m["at"], m["version"], m["kind"]) for m in store.alias_history(name) if m["alias"] == PRODUCTION]


def events(store: Store, name: str, since: float | None = None, until: float | None = None) -> list[Event]:
    """Everything that happened to ``name`` between ``since`` and ``until``, oldest first."""
    found: list[Event] = []
    history = store.alias_history(name)
    became_production = {}
    for move in history:
        if move["alias"] == PRODUCTION and move["kind"] == "set":
            became_production.setdefault(move["version"], move["at"])
    deployed = set()
    for record in store.versions(name):
        v, meta = record.version, record.meta
        retrained = meta.get("retrained_from")
        live = record.created_at + DEPLOY_SECONDS >= became_production.get(v, math.inf)
        if live:
            deployed.add(v)  # one event for registering and serving it
        if record.status == "refused":
            found.append(Event(record.created_at, "refused", f"v{v} refused", v, _gate_detail(meta)))
        elif retrained is not None:
            found.append(Event(became_production[v] if live else record.created_at, "retrain",
                               f"retrain → v{v}" if live else f"retrain v{v} (not live)", v,
                               f"retrained from v{retrained}; {_gate_detail(meta)}".rstrip("; ")))
        elif live:
            found.append(Event(became_production[v], "deploy", f"deploy v{v}", v, _gate_detail(meta)))
        else:
            found.append(Event(record.created_at, "registered", f"v{v} registered", v, _gate_detail(meta)))
    first_set: set[int] = set()
    for move in history:
        v, kind, at = move["version"], move["kind"], move["at"]
        if move["alias"] == PRODUCTION:
            if kind == "rollback":
                found.append(Event(at, "rollback", f"rollback to v{v}", v))
            elif kind == "canary":
                continue  # the canary's own end ("canary v3 promoted") says it
            elif v in deployed and v not in first_set:
                first_set.add(v)  # the deploy event above stands for it
            else:
                found.append(Event(at, "promote", f"v{v} live", v))
        elif move["alias"] == SHADOW and v is not None:
            found.append(Event(at, "shadow", f"shadow v{v}", v))
    for c in canaries(store, name):
        found.append(Event(c.started_at, "canary", f"canary v{c.version} {c.percent:g}%", c.version,
                           f"v{c.version} gets {c.percent:g} % of the traffic, against v{c.production}"))
        if c.ended_at is not None:
            found.append(Event(float(c.ended_at), "canary", f"canary v{c.version} {c.state}", c.version,
                               c.reason or ""))
    found += [_alert_event(a) for a in alerts(store, name, since=None if since is None else since - 1e-6)]
    found.sort(key=lambda e: e.at)
    return [e for e in found if (since is None or e.at >= since) and (until is None or e.at <= until)]


def _alert_event(a: Alert) -> Event:
    if a.level == "OK":
        return Event(a.at, "recovery", "recovered", None, "; ".join(a.reasons), "OK")
    return Event(a.at, "alert", a.level, None, "; ".join(a.reasons), a.level)


def _gate_detail(meta: dict[str, Any]) -> str:
    gate = meta.get("gate") or {}
    return str(gate.get("reason") or ("not gated" if not meta.get("gated") else ""))


class Timeline:
    """Builds the timeline of ``name``; one per monitor (it caches what the store says of each version)."""

    def __init__(self, store: Store, name: str, *, since: float | str | datetime | None = None,
                 window: float | timedelta | None = None, points: int = 60, max_seconds: float = 86_400.0) -> None:
        self.store, self.name = store, name
        self.since = _epoch(since)
        self.window = window.total_seconds() if isinstance(window, timedelta) else window
        if self.window is not None and not float(self.window) > 0:
            raise InvalidInput(f"window must be a positive number of seconds, got {window!r}")
        self.points, self.max_seconds = points, max_seconds
        self._baselines: dict[int, dict[str, Any] | None] = {}

    def start(self, now: float) -> float:
        """Where the window starts: ``since``, else ``window`` seconds back, else the first deploy (bounded)."""
        if self.since is not None:
            return float(self.since)
        if self.window is not None:
            return now - float(self.window)
        moves = production_moves(self.store, self.name)
        first = moves[0][0] if moves else now
        return max(first, now - self.max_seconds)

    def build(self, log: LogReader, now: float | None = None, rollups: Rollups | None = None,
              read_from: int | None = None) -> dict[str, Any]:
        """The timeline up to ``now``. ``rollups``: the model's rows the caller has read from bucket ``read_from``
        on (used when they cover the window, else read again)."""
        now = time.time() if now is None else now
        start = min(self.start(now), now)
        first_bucket = int(start // BUCKET_SECONDS)
        if rollups is None or read_from is None or read_from > first_bucket:
            rollups = log.rollups(self.name, first_bucket)
        rollups = rollups.where(rollups.bucket >= first_bucket)
        span = now - start
        # A short window holds few 10-second buckets: when its rows are few too, bin them one by one, finer.
        fine = span / BUCKET_SECONDS < self.points and int(rollups.rows.sum()) <= FINE_ROWS
        widths = (*FINE_WIDTHS, *NICE_WIDTHS) if fine else NICE_WIDTHS
        width = next((w for w in widths if span / w <= self.points), NICE_WIDTHS[-1])
        first = int(start // width)
        n = int(now // width) - first + 1
        bins = self._fine(log, rollups, first, n, width, start) if fine else self._coarse(rollups, first, n, width)
        t = (np.arange(n) + first) * width
        elapsed = np.clip(np.minimum(now, t + width) - np.maximum(t, start), 1.0, width)
        moves = production_moves(self.store, self.name)
        version = [self._production_at(moves, min(float(x + width), now)) for x in t]
        baseline = [self._baseline(v) for v in version]
        series = {
            "t": t.astype(float).tolist(), "rows": bins["rows"].astype(int).tolist(),
            "rate": ((bins["rows"] + bins["dropped"]) / elapsed).tolist(),
            "error_rate": _ratio(bins["errors"], bins["requests"]), "p50_ms": bins["p50_ms"],
            "p99_ms": bins["p99_ms"], "labelled": bins["labelled"].astype(int).tolist(),
            "accuracy": _ratio(bins["correct"], bins["labelled"]), "mae": _ratio(bins["abs_err"], bins["err_n"]),
            "rmse": [math.sqrt(s / k) if k else None for s, k in zip(bins["sq_err"], bins["err_n"], strict=True)],
            "version": version, **self._inputs(log, start, now, max(width, BUCKET_SECONDS)),
            **{f"baseline_{m}": [None if b is None else b.get(m) for b in baseline]
               for m in ("accuracy", "rmse", "mae")}}
        return {"model": self.name, "start": start, "end": now, "width": width, "fine": fine, "series": series,
                "events": [e.to_dict() for e in events(self.store, self.name, start, now)]}

    @staticmethod
    def _coarse(r: Rollups, first: int, n: int, width: float) -> dict[str, Any]:
        """Per interval, from the rollups (intervals are whole buckets)."""
        index = (r.bucket * BUCKET_SECONDS // width).astype(int) - first
        bins = {name: np.bincount(index, weights=getattr(r, name), minlength=n)[:n]
                for name in ("requests", "rows", "errors", "dropped", "labelled", "correct", "err_n", "abs_err",
                             "sq_err")}
        h = np.zeros((n, r.latency.shape[1]), np.int64)
        np.add.at(h, index, r.latency)
        return {**bins, "p50_ms": [percentile_ms(row, 0.5) for row in h],
                "p99_ms": [percentile_ms(row, 0.99) for row in h]}

    def _fine(self, log: LogReader, r: Rollups, first: int, n: int, width: float, start: float) -> dict[str, Any]:
        """Per interval, from the logged rows themselves (at most ``FINE_ROWS`` per version)."""
        # the rollups count each version's rows in the window's buckets: read that many, newest first
        counts = {int(v): int(r.rows[r.version == v].sum()) for v in np.unique(r.version)}
        rows = [row for v, k in counts.items() if k for row in log.recent_answers(self.name, v, min(k, FINE_ROWS))
                if row[0] >= start]
        ts = np.array([row[0] for row in rows], dtype=float)
        index = np.clip((ts // width).astype(int) - first, 0, n - 1)
        failed = np.array([row[1] != 200 for row in rows], dtype=float)
        labelled = np.array([bool(row[5]) and row[1] == 200 for row in rows])
        correct = np.array([ok and label_key(row[3]) == label_key(row[4]) for ok, row in zip(labelled, rows,
                                                                                                strict=True)])
        numeric = np.array([ok and _real(row[3]) and _number(row[4]) for ok, row in zip(labelled, rows, strict=True)])
        err = np.array([float(row[3]) - float(row[4]) if ok else 0.0 for ok, row in zip(numeric, rows, strict=True)])

        def total(values: np.ndarray) -> np.ndarray:
            return np.bincount(index, weights=values, minlength=n)[:n] if len(rows) else np.zeros(n)

        ones = np.ones(len(rows))
        latency = np.array([row[2] for row in rows], dtype=float)
        p50, p99 = [], []
        for i in range(n):
            mine = latency[index == i]
            p50.append(float(np.percentile(mine, 50)) if len(mine) else None)
            p99.append(float(np.percentile(mine, 99)) if len(mine) else None)
        dropped = np.bincount(np.clip((r.bucket * BUCKET_SECONDS // width).astype(int) - first, 0, n - 1),
                              weights=r.dropped, minlength=n)[:n] if len(r) else np.zeros(n)
        return {"requests": total(ones), "rows": total(ones), "errors": total(failed), "dropped": dropped,
                "labelled": total(labelled.astype(float)), "correct": total(correct.astype(float)),
                "err_n": total(numeric.astype(float)), "abs_err": total(np.abs(err)), "sq_err": total(err ** 2),
                "p50_ms": p50, "p99_ms": p99}

    def _inputs(self, log: LogReader, start: float, now: float, width: float) -> dict[str, Any]:
        """Per interval of ``width`` (whole buckets), the share of inputs outside what training saw (out of
        range or unseen) in the feature where it is largest, and that feature: one drifting feature among
        many would vanish in an average."""
        first = int(start // width)
        n = int(now // width) - first + 1
        counts: dict[tuple[int, str], list[int]] = {}
        for bucket, feature, c in log.input_totals(self.name, int(start // BUCKET_SECONDS)):
            slot = int(bucket * BUCKET_SECONDS // width) - first
            if 0 <= slot < n:
                total = counts.setdefault((slot, feature), [0, 0])
                total[0] += c.n - c.missing
                total[1] += c.out_of_range + c.unseen
        outside: list[float | None] = [None] * n
        worst: list[str | None] = [None] * n
        for (slot, feature), (judged, out) in counts.items():
            share = out / judged if judged else None
            if share is not None and (outside[slot] is None or share > outside[slot]):
                outside[slot], worst[slot] = share, feature
        return {"outside_t": ((np.arange(n) + first) * width).astype(float).tolist(), "outside_width": width,
                "outside": outside, "outside_feature": worst}

    @staticmethod
    def _production_at(moves: list[tuple[float, int, str]], at: float) -> int | None:
        """The production version at ``at``; before the first move, the first (nothing else could serve)."""
        current = moves[0][1] if moves else None
        for when, version, _ in moves:
            if when > at:
                break
            current = version
        return current

    def _baseline(self, version: int | None) -> dict[str, Any] | None:
        if version is None:
            return None
        if version not in self._baselines:
            try:
                self._baselines[version] = baseline_of(self.store.version(self.name, version).meta)
            except NotFound:  # deleted since (delete, prune): the alias history still names it
                self._baselines[version] = None
        return self._baselines[version]


def _epoch(value: float | str | datetime | None) -> float | None:
    """Seconds since the epoch from a number, a datetime (naive: local time) or an ISO 8601 string."""
    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidInput(f"since must be a time such as '2026-12-04 09:30' (ISO 8601), got {value!r}") from None
    if isinstance(value, datetime):
        return value.timestamp()
    raise InvalidInput(f"since must be a time (seconds since the epoch, a datetime or ISO 8601), got {value!r}")


def history(store: Store, name: str, log: LogReader, *, since: float | str | datetime | None = None,
            now: float | None = None, points: int = 90) -> dict[str, Any]:
    """Everything a report of ``name`` shows, as plain data: its versions (metrics, fidelity, gate decisions,
    where each came from), aliases, the timeline since its first deploy (or ``since``), alerts and canaries."""
    store.require_model(name)
    now = time.time() if now is None else now
    aliases = store.aliases(name)
    by_version: dict[int, list[str]] = {}
    for alias, v in sorted(aliases.items()):
        by_version.setdefault(v, []).append(alias)
    served = {v for _, v, _ in production_moves(store, name)}
    records = store.versions(name)
    states = version_states(records, aliases, name in store.serving_models())
    versions = []
    for record in records:
        meta = record.meta
        origin = ("retrained" if meta.get("retrained_from") is not None else
                  "deployed" if record.version in served else record.status)  # registered, never served; refused
        versions.append({
            "version": record.version, "created_at": record.created_at, "status": record.status,
            "state": states[record.version],
            "aliases": by_version.get(record.version, []), "task": meta.get("task"), "origin": origin,
            "served": record.version in served, "retrained_from": meta.get("retrained_from"),
            "precision": meta.get("precision"),
            "metrics": baseline_of(meta) or {}, "fidelity": meta.get("fidelity") or {},
            "gated": bool(meta.get("gated")), "gate": meta.get("gate")})
    first = production_moves(store, name)
    start = _epoch(since) if since is not None else (first[0][0] if first else None)
    timeline = Timeline(store, name, since=start, points=points, max_seconds=math.inf).build(log, now)
    return {"name": name, "generated_at": now, "aliases": aliases, "serving": name in store.serving_models(),
            "task": next((v["task"] for v in reversed(versions) if v["task"]), None), "versions": versions,
            "timeline": timeline, "alerts": [a.to_dict() for a in alerts(store, name)],
            "canaries": [c.to_dict() for c in canaries(store, name)]}


def _ratio(a: np.ndarray, b: np.ndarray) -> list[float | None]:
    return [float(x / y) if y else None for x, y in zip(a, b, strict=True)]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _real(value: Any) -> bool:
    """A regressor's prediction (a float); a classifier's labels are ints or strings."""
    return isinstance(value, float) and math.isfinite(value)
