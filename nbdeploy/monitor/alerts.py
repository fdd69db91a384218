"""One alert level for a deployment, from quality, drift, errors and latency.

Each component is graded "OK"/"WARN"/"ALERT" against :class:`AlertThresholds` (a value
*reaching* a threshold counts); the deployment's level is the most severe component. A
component without data (None, or fewer than ``min_labelled`` labels) is "n/a" and never
raises the level; ``notes`` say why it was not judged.

Estimated quality (``estimated``, from :mod:`nbdeploy.monitor.estimate`) stands in for quality
while labels are missing: its component is graded like quality against the same held-out
baseline (accuracy drop; relative MAE increase), judged only over at least ``min_estimated``
predictions, and only when quality itself is not judged: realised quality from enough labels
decides. It appears among the components only for a version that can be estimated.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from nbdeploy.monitor.drift import DriftReport, worst

NOT_JUDGED = "n/a"
_MAX_DRIFT_REASONS = 5


@dataclass
class AlertThresholds:
    """Accuracy drop is absolute (0.95 -> 0.90 is 0.05); RMSE increase is relative (+10 %)."""

    accuracy_drop_warn: float = 0.05
    accuracy_drop_alert: float = 0.10
    rmse_increase_warn: float = 0.10
    rmse_increase_alert: float = 0.25
    error_rate_warn: float = 0.01
    error_rate_alert: float = 0.05
    p99_latency_ms_warn: float = 100
    p99_latency_ms_alert: float = 500
    min_labelled: int = 30
    mae_increase_warn: float = 0.10
    mae_increase_alert: float = 0.25
    min_estimated: int = 200


@dataclass
class AlertStatus:
    """The overall level, why, and each component's level ("n/a" when not judged)."""

    level: str = "OK"
    reasons: list[str] = field(default_factory=list)
    components: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _grade(value: float, warn: float, alert: float) -> str:
    tolerance = 1e-9  # so 0.95 - 0.85 "reaches" a 0.10 drop despite float rounding
    if value >= alert - tolerance:
        return "ALERT"
    if value >= warn - tolerance:
        return "WARN"
    return "OK"


def _increase(value: float, base: float) -> float:
    """The relative increase of an error (RMSE, MAE) over its baseline; from a baseline of 0, any error is infinite."""
    return (value - base) / base if base > 0 else (math.inf if value > 0 else 0.0)


def _quality(baseline: dict | None, quality: dict | None, th: AlertThresholds, status: AlertStatus) -> str:
    if baseline is None or quality is None:
        return NOT_JUDGED
    n = quality.get("n")
    if n is not None and n < th.min_labelled:
        status.notes.append(f"quality not judged: {n} labelled < {th.min_labelled}")
        return NOT_JUDGED
    if baseline.get("accuracy") is not None and quality.get("accuracy") is not None:
        base, cur = float(baseline["accuracy"]), float(quality["accuracy"])
        level = _grade(base - cur, th.accuracy_drop_warn, th.accuracy_drop_alert)
        if level != "OK":
            status.reasons.append(f"accuracy {cur:.3f} vs baseline {base:.3f} (drop {base - cur:.3f})")
        return level
    if baseline.get("rmse") is not None and quality.get("rmse") is not None:
        base, cur = float(baseline["rmse"]), float(quality["rmse"])
        increase = _increase(cur, base)
        level = _grade(increase, th.rmse_increase_warn, th.rmse_increase_alert)
        if level != "OK":
            status.reasons.append(f"RMSE {cur:.4g} vs baseline {base:.4g} (+{100 * increase:.0f}%)")
        return level
    status.notes.append("quality not judged: no accuracy or rmse in both baseline and window")
    return NOT_JUDGED


def _estimated(baseline: dict | None, estimated: dict, quality_level: str, th: AlertThresholds,
               status: AlertStatus) -> str:
    """Estimated quality against the baseline, when realised quality is not judged (see the module's rule)."""
    value, n, metric = estimated.get("value"), estimated.get("n") or 0, estimated.get("metric")
    if quality_level != NOT_JUDGED:
        return NOT_JUDGED  # labels decide
    if baseline is None or value is None or baseline.get(metric) is None:
        return NOT_JUDGED
    if n < th.min_estimated:
        status.notes.append(f"estimated quality not judged: {n} predictions < {th.min_estimated}")
        return NOT_JUDGED
    base, band = float(baseline[metric]), f"{estimated['low']:.3f}-{estimated['high']:.3f}"
    if metric == "accuracy":
        level = _grade(base - value, th.accuracy_drop_warn, th.accuracy_drop_alert)
        change = f"drop {base - value:.3f}"
    else:
        increase = _increase(value, base)
        level = _grade(increase, th.mae_increase_warn, th.mae_increase_alert)
        change = f"+{100 * increase:.0f}%"
    if level != "OK":
        status.reasons.append(f"estimated {metric} {value:.3f} (band {band}) vs baseline {base:.3f} ({change}), "
                              "before labels")
    return level


def _drift(drift: DriftReport | None, status: AlertStatus) -> str:
    if drift is None:
        return NOT_JUDGED
    flagged = [r for r in drift.rows if r.status != "OK"]
    for row in flagged[:_MAX_DRIFT_REASONS]:
        status.reasons.append(f"drift {row.status}: {row.feature} ({'; '.join(row.reasons)})")
    if len(flagged) > _MAX_DRIFT_REASONS:
        status.reasons.append(f"drift: {len(flagged) - _MAX_DRIFT_REASONS} more features")
    return drift.overall


def evaluate_alerts(
    *,
    baseline: dict | None = None,
    quality: dict | None = None,
    drift: DriftReport | None = None,
    error_rate: float | None = None,
    p99_latency_ms: float | None = None,
    thresholds: AlertThresholds | None = None,
    estimated: dict | None = None,
) -> AlertStatus:
    """Grade each component and combine them.

    ``baseline``/``quality``: held-out and current-window metrics from
    :mod:`nbdeploy.monitor.quality` (``accuracy`` for classifiers, ``rmse`` for regressors,
    ``n`` labelled rows in the window). ``error_rate`` is failed/total requests (0-1).
    ``estimated``: the monitor's estimate without labels (``metric``, ``value``, ``low``, ``high``, ``n``).
    """
    th = thresholds or AlertThresholds()
    status = AlertStatus()
    components = {
        "quality": _quality(baseline, quality, th, status),
        "drift": _drift(drift, status),
        "errors": NOT_JUDGED,
        "latency": NOT_JUDGED,
    }
    if error_rate is not None:
        components["errors"] = _grade(error_rate, th.error_rate_warn, th.error_rate_alert)
        if components["errors"] != "OK":
            status.reasons.append(f"error rate {100 * error_rate:.1f}%")
    if p99_latency_ms is not None:
        components["latency"] = _grade(p99_latency_ms, th.p99_latency_ms_warn, th.p99_latency_ms_alert)
        if components["latency"] != "OK":
            status.reasons.append(f"p99 latency {p99_latency_ms:.0f} ms")
    if estimated is not None:
        components["estimated"] = _estimated(baseline, estimated, components["quality"], th, status)
    status.components = components
    status.level = worst(*(level for level in components.values() if level != NOT_JUDGED))
    return status
