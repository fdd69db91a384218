"""A canary's two arms side by side, and the guards that judge them: pure NumPy over plain counts.

:func:`canary_status` is the one place the per-arm figures are computed: the server's guard thread
judges them (:mod:`nbdeploy.serve.canary`), the monitor snapshot shows them (``snap["canary"]``),
``/metrics`` exports them and :func:`nbdeploy.canary` returns them. The counts come from the
prediction log (:func:`log_arms`: every server worker's requests, from the rollups since the
10-second bucket the canary started in) or, with the log off, from one worker's own counters.

An arm counts every request its version answered while the canary ran: the canary's share of the
un-versioned traffic, and any request that named the version. Guards (all in ``guards=``):

- ``min_requests`` (50): canary requests before its error rate and estimated accuracy are judged;
- ``max_error_rate_increase`` (0.02): abort when the canary's error rate (4xx and 5xx answers) exceeds
  production's by more than this;
- ``min_latency_requests`` (200), ``p99_ratio`` (2.0) and ``p99_slack_ms`` (25.0): once both arms
  answered ``min_latency_requests``, abort when the canary's p99 latency exceeds ``production p99 *
  p99_ratio + p99_slack_ms``; ``max_p99_ms`` (None) adds an absolute ceiling. Fewer requests make the
  p99 their maximum: one pause of the machine would abort a sound canary;
- ``min_labels`` (30) and ``accuracy_tolerance`` (0.05): once the canary has ``min_labels`` labelled
  predictions, abort when its accuracy is below production's minus the tolerance (production's arm
  when it has ``min_labels`` labels too, else production's held-out accuracy);
- ``estimated_tolerance`` (0.05): the same on accuracy estimated before labels arrive (CBPE, from each
  version's ``estimation`` record), over the last ``estimate_window`` (500) predictions of each arm.

Accuracy guards apply to classifiers; a regressor's canary is guarded by errors and latency.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from nbdeploy.errors import InvalidInput, NotFound, did_you_mean
from nbdeploy.monitor.estimate import estimate_accuracy
from nbdeploy.monitor.metrics import percentile_ms
from nbdeploy.store.batch import BUCKET_SECONDS, LATENCY_EDGES_MS
from nbdeploy.store.canary import Canary, latest_canary
from nbdeploy.store.reader import LogReader

DEFAULT_GUARDS: dict[str, Any] = {
    "min_requests": 50,
    "max_error_rate_increase": 0.02,
    "min_latency_requests": 200,
    "p99_ratio": 2.0,
    "p99_slack_ms": 25.0,
    "max_p99_ms": None,
    "min_labels": 30,
    "accuracy_tolerance": 0.05,
    "estimated_tolerance": 0.05,
    "estimate_window": 500,
}
# whole numbers >= 1; the other guards are numbers >= 0
_COUNTS = ("min_requests", "min_latency_requests", "min_labels", "estimate_window")
CONTINUE, ABORT, PROMOTE = "continue", "abort", "promote"


def guard_thresholds(guards: dict[str, Any] | None = None) -> dict[str, Any]:
    """The effective guards: the defaults, overridden by ``guards``; unknown names and bad values refused."""
    effective = dict(DEFAULT_GUARDS)
    for name, value in (guards or {}).items():
        if name not in DEFAULT_GUARDS:
            raise InvalidInput(f"unknown canary guard {name!r}{did_you_mean(name, list(DEFAULT_GUARDS))}; "
                               f"guards: {', '.join(DEFAULT_GUARDS)}")
        if value is None and name == "max_p99_ms":
            effective[name] = None
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if name in _COUNTS:
            if not (number and float(value).is_integer() and value >= 1):
                raise InvalidInput(f"canary guard {name} must be a whole number >= 1, got {value!r}")
            value = int(value)
        elif not (number and value >= 0):
            raise InvalidInput(f"canary guard {name} must be a number >= 0, got {value!r}")
        effective[name] = value
    return effective


@dataclass
class ArmCounts:
    """What one arm's version answered while the canary ran."""

    version: int
    requests: int = 0
    errors: int = 0
    latency: np.ndarray | None = None  # histogram counts over ``edges_ms`` (see percentile_ms)
    edges_ms: np.ndarray = field(default_factory=lambda: LATENCY_EDGES_MS)
    labelled: int = 0
    correct: int = 0
    estimated: dict[str, Any] | None = None  # estimate_accuracy's {"value", "low", "high", "n"}
    baseline_accuracy: float | None = None  # held-out accuracy recorded with the version


def arm(counts: ArmCounts) -> dict[str, Any]:
    """One arm's figures (the ARM of :func:`canary_status`)."""
    p99 = None if counts.latency is None else percentile_ms(np.asarray(counts.latency), 0.99, counts.edges_ms)
    estimated = (counts.estimated or {}).get("value")
    return {"version": counts.version, "requests": int(counts.requests), "errors": int(counts.errors),
            "error_rate": counts.errors / counts.requests if counts.requests else None, "p99_ms": p99,
            "accuracy": counts.correct / counts.labelled if counts.labelled else None,
            "labelled": int(counts.labelled),
            "estimated_accuracy": None if estimated is None else float(estimated),
            "drift": None}  # both arms see one population (buckets are by client): drift is the monitor's, per model


def canary_status(canary: Canary, arms: dict[str, ArmCounts]) -> dict[str, Any]:
    """The canary's state, settings and both arms' figures, with its guards' verdict on them.

    ``verdict`` is ``continue``, ``abort`` (``breach`` says why) or ``promote`` (``promote_after`` reached
    within the guards, and the gate passed or had nothing to judge); ``hold`` says why a due promotion
    waits. A canary that has ended keeps its figures and says ``continue``.
    """
    production, candidate = arm(arms["production"]), arm(arms["canary"])
    guards = {**DEFAULT_GUARDS, **canary.guards}
    status: dict[str, Any] = {
        "version": canary.version, "production": canary.production, "percent": canary.percent,
        "state": canary.state, "reason": canary.reason, "started_at": canary.started_at,
        "ended_at": canary.ended_at, "key": canary.key, "promote_after": canary.promote_after,
        "progress": candidate["requests"], "gate": canary.gate, "guards": guards,
        "arms": {"production": production, "canary": candidate},
    }
    breach = _breach(guards, production, candidate, arms["production"], arms["canary"])
    hold = None
    verdict = CONTINUE
    if canary.running:
        if breach is not None:
            verdict = ABORT
        elif canary.promote_after is not None and candidate["requests"] >= canary.promote_after:
            if canary.promotable:
                verdict = PROMOTE
            else:
                hold = f"not promoted automatically: the promotion gate refused it ({canary.gate['reason']})"
    status.update(verdict=verdict, breach=breach, hold=hold, promotion=promotion_note(canary))
    return status


def promotion_note(canary: Canary) -> str:
    """What ``promote_after`` will do, and the promotion gate's word on it, in one sentence."""
    if canary.gate is None:
        gate = "nothing to gate on: the version has no labelled held-out rows"
    else:
        gate = f"promotion gate {'passed' if canary.gate.get('passed') else 'refused'}: {canary.gate.get('reason')}"
    if canary.promote_after is None:
        return f"no automatic promotion ({gate})"
    if not canary.promotable:
        return f"will not be promoted automatically ({gate}); promote it by hand if its figures convince you"
    return f"promoted after {canary.promote_after} canary requests within its guards ({gate})"


def _breach(guards: dict[str, Any], prod: dict[str, Any], cand: dict[str, Any], prod_counts: ArmCounts,
            cand_counts: ArmCounts) -> str | None:
    """The first guard the canary breaks, as a sentence with its figures; None while it keeps them all."""
    n = cand["requests"]
    if n >= guards["min_requests"]:
        prod_rate = prod["error_rate"] or 0.0
        if cand["error_rate"] > prod_rate + guards["max_error_rate_increase"]:
            return (f"error rate {cand['error_rate']:.1%} on {n} canary requests exceeds production's "
                    f"{prod_rate:.1%} by more than {guards['max_error_rate_increase']:.1%}")
    p99 = cand["p99_ms"]
    if p99 is not None and n >= guards["min_latency_requests"]:
        if guards["max_p99_ms"] is not None and p99 > guards["max_p99_ms"]:
            return f"p99 latency {p99:.1f} ms on {n} canary requests exceeds {guards['max_p99_ms']:.1f} ms"
        if prod["p99_ms"] is not None and prod["requests"] >= guards["min_latency_requests"]:
            limit = prod["p99_ms"] * guards["p99_ratio"] + guards["p99_slack_ms"]
            if p99 > limit:
                return (f"p99 latency {p99:.1f} ms on {n} canary requests exceeds production's "
                        f"{prod['p99_ms']:.1f} ms x {guards['p99_ratio']:g} + {guards['p99_slack_ms']:g} ms")
    if cand["accuracy"] is not None and cand["labelled"] >= guards["min_labels"]:
        if prod["accuracy"] is not None and prod["labelled"] >= guards["min_labels"]:
            reference, what = prod["accuracy"], f"production's {prod['accuracy']:.3f} on {prod['labelled']} labels"
        else:
            reference = prod_counts.baseline_accuracy
            what = None if reference is None else f"production's held-out {reference:.3f}"
        if reference is not None and cand["accuracy"] < reference - guards["accuracy_tolerance"]:
            return (f"accuracy {cand['accuracy']:.3f} on {cand['labelled']} labelled canary predictions is below "
                    f"{what} by more than {guards['accuracy_tolerance']:g}")
    estimated, reference = cand["estimated_accuracy"], prod["estimated_accuracy"]
    if estimated is not None and reference is not None and \
            (cand_counts.estimated or {}).get("n", 0) >= guards["min_requests"] and \
            (prod_counts.estimated or {}).get("n", 0) >= guards["min_requests"] and \
            estimated < reference - guards["estimated_tolerance"]:
        return (f"estimated accuracy {estimated:.3f} on {cand_counts.estimated['n']} canary predictions is below "
                f"production's {reference:.3f} by more than {guards['estimated_tolerance']:g}")
    return None


# -- the counts, from the prediction log -----------------------------------------------------
def log_arms(reader: LogReader, canary: Canary, meta: Callable[[int], dict[str, Any]]) -> dict[str, ArmCounts]:
    """Both arms' counts from the log's rollups (every worker's requests), from the 10-second bucket the
    canary started in to the one it ended in; estimated accuracy from each arm's last predictions.
    ``meta(version)`` is the version's ``model.json``."""
    first = int(canary.started_at // BUCKET_SECONDS)
    last = None if canary.ended_at is None else int(canary.ended_at // BUCKET_SECONDS)
    with reader.consistent():
        rollups = reader.rollups(canary.name, first)
        arms = {}
        for role, version in (("production", canary.production), ("canary", canary.version)):
            mine = rollups.version == version
            if last is not None:
                mine &= rollups.bucket <= last
            r = rollups.where(mine)
            info = meta(version)
            arms[role] = ArmCounts(
                version=version, requests=int(r.requests.sum()), errors=int(r.errors.sum()),
                latency=r.latency.sum(axis=0) if len(r) else None, labelled=int(r.labelled.sum()),
                correct=int(r.correct.sum()), baseline_accuracy=held_out_accuracy(info),
                estimated=_estimated(reader, canary, version, info))
    return arms


def held_out_accuracy(meta: dict[str, Any]) -> float | None:
    value = (meta.get("baseline") or (meta.get("metrics") or {}).get("metrics") or {}).get("accuracy")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _estimated(reader: LogReader, canary: Canary, version: int, meta: dict[str, Any]) -> dict[str, Any] | None:
    """Accuracy estimated (CBPE) over the version's last predictions since the canary started; None when the
    version has no classifier estimation record or no probabilities were logged."""
    estimation = meta.get("estimation")
    if not estimation or estimation.get("method") != "cbpe":
        return None
    limit = int({**DEFAULT_GUARDS, **canary.guards}["estimate_window"])
    recent = reader.recent_predictions(canary.name, version, limit)
    end = math.inf if canary.ended_at is None else canary.ended_at
    raw = [p for t, p in zip(recent.ts, recent.proba_json, strict=True) if canary.started_at <= t <= end and p]
    if not raw:
        return None
    try:
        return estimate_accuracy(np.array(orjson.loads(b"[" + b",".join(raw) + b"]"), dtype=float), estimation)
    except (ValueError, KeyError, TypeError):  # probabilities that do not fit the record: no estimate
        return None


def canary_snapshot(store: Any, reader: LogReader, name: str, *, metas: dict[int, dict] | None = None,
                    now: float | None = None) -> dict[str, Any] | None:
    """The status of ``name``'s running canary, else of its most recent one; None if it never had one.
    ``metas`` caches ``model.json`` per version between calls (stored versions never change)."""
    canary = latest_canary(store, name)
    if canary is None:
        return None
    metas = {} if metas is None else metas

    def meta(version: int) -> dict[str, Any]:
        if version not in metas:
            try:
                metas[version] = store.version(name, version).meta
            except NotFound:  # deleted since (delete, prune): its logged predictions went with it
                return {}
        return metas[version]

    status = canary_status(canary, log_arms(reader, canary, meta))
    status["at"] = time.time() if now is None else now
    return status
