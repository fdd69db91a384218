"""The server's monitoring gauges: monitor snapshots in the Prometheus text format, for ``/metrics``.

Traffic counters (requests, latency histograms, dropped log events) are the server's own; these
are the monitoring gauges: alert level, quality against the baseline, labels, drift and inputs
outside the training data. Feature labels come from the reference profile, never from requests.

Light to import (standard library only): :class:`ServerMonitors` loads the monitor, which needs
pandas, SciPy and scikit-learn, on the first scrape, and leaves the gauges out where those are
not installed (a server bundle with minimal dependencies).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("nbdeploy.server")

LEVELS = {"OK": 0, "WARN": 1, "ALERT": 2}
FAMILIES = {
    "nbdeploy_monitor_alert_level": ("gauge", "Monitoring level per model: 0 OK, 1 WARN, 2 ALERT."),
    "nbdeploy_monitor_quality": ("gauge", "Quality of the last labelled predictions, by metric."),
    "nbdeploy_monitor_baseline": ("gauge", "Held-out quality recorded at training, by metric."),
    "nbdeploy_monitor_labelled": ("gauge", "Predictions with a ground-truth label (monitor history window)."),
    "nbdeploy_monitor_drift_psi": ("gauge", "Population stability index of a feature on recent predictions."),
    "nbdeploy_monitor_drift_level": ("gauge", "Drift level of a feature: 0 OK, 1 WARN, 2 ALERT."),
    "nbdeploy_monitor_inputs_out_of_range": ("gauge", "Values outside the training [min, max], per feature."),
    "nbdeploy_monitor_inputs_unseen": ("gauge", "Values in categories training never saw, per feature."),
}


def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _samples(snap: dict[str, Any]) -> Iterable[tuple[str, str, float]]:
    version = "" if snap["version"] is None else snap["version"]
    base = f'model="{_escape(snap["model"])}",version="{version}"'
    yield "nbdeploy_monitor_alert_level", base, LEVELS.get(snap["alert"]["level"], 0)
    quality = snap.get("quality") or {}
    for family, metrics in (("nbdeploy_monitor_quality", quality.get("current")),
                            ("nbdeploy_monitor_baseline", quality.get("baseline"))):
        for metric, value in sorted((metrics or {}).items()):
            if metric != "n" and isinstance(value, (int, float)) and not isinstance(value, bool):
                yield family, f'{base},metric="{_escape(metric)}"', value
    yield "nbdeploy_monitor_labelled", base, (snap.get("labels") or {}).get("labelled", 0)
    for row in (snap.get("drift") or {}).get("features", []):
        labels = f'{base},feature="{_escape(row["feature"])}"'
        if row.get("psi") is not None:
            yield "nbdeploy_monitor_drift_psi", labels, row["psi"]
        yield "nbdeploy_monitor_drift_level", labels, LEVELS.get(row["status"], 0)
    for feature, counts in sorted((snap.get("inputs") or {}).items()):
        labels = f'{base},feature="{_escape(feature)}"'
        yield "nbdeploy_monitor_inputs_out_of_range", labels, counts["out_of_range"]
        yield "nbdeploy_monitor_inputs_unseen", labels, counts["unseen"]


def prometheus_lines(snapshots: Iterable[dict[str, Any]]) -> list[str]:
    """``# HELP``/``# TYPE`` once per family, then one sample per model, metric and feature."""
    by_family: dict[str, list[str]] = {name: [] for name in FAMILIES}
    for snap in snapshots:
        for family, labels, value in _samples(snap):
            by_family[family].append(f"{family}{{{labels}}} {float(value):.6g}")
    out: list[str] = []
    for family, samples in by_family.items():
        if samples:
            kind, text = FAMILIES[family]
            out += [f"# HELP {family} {text}", f"# TYPE {family} {kind}", *samples]
    return out


class ServerMonitors:
    """The server's monitors, one per served model, kept between scrapes (so their caches are).

    The first scrape imports pandas, SciPy and scikit-learn (drift and quality): about a second
    and some memory the server otherwise does without.
    """

    def __init__(self, store: Any, **options: Any) -> None:
        self.store, self.options = store, options
        self.unavailable: str | None = None
        self._monitors: dict[str, Any] = {}

    def text(self, names: Iterable[str]) -> str:
        """Prometheus lines for ``names`` (blocking: call it from a thread pool)."""
        if self.unavailable:
            return ""
        try:
            from nbdeploy.monitor.live import Monitor
        except ImportError as exc:
            self.unavailable = f"monitoring gauges need pandas, SciPy and scikit-learn: {exc}"
            log.warning("%s; /metrics leaves them out", self.unavailable)
            return ""

        snapshots = []
        for name in names:
            monitor = self._monitors.get(name)
            if monitor is None:
                monitor = self._monitors[name] = Monitor(self.store.home, name, store=self.store, **self.options)
            try:
                snapshots.append(monitor.snapshot())
            except Exception:  # one model's monitor must not take /metrics down
                log.exception("cannot take the monitor snapshot of %s", name)
        lines = prometheus_lines(snapshots)
        return "\n".join(lines) + "\n" if lines else ""
