"""The server's monitoring gauges: monitor snapshots as Prometheus metric families, for ``/metrics``.

Traffic counters (requests, latency histograms, dropped log events) are the server's own (see
:mod:`nbdeploy.serve.metrics`); these are the monitoring gauges: alert level, quality against the
baseline, labels, drift and inputs outside the training data. Feature labels come from the
reference profile, never from requests.

Light to import: :class:`ServerMonitors` loads the monitor, which needs pandas, SciPy and
scikit-learn, on the first scrape, and leaves the gauges out where those are not installed (a
server bundle with minimal dependencies).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger("nbdeploy.server")

LEVELS = {"OK": 0, "WARN": 1, "ALERT": 2}
BY_MODEL = ("model", "version")
CANARY_FIGURES = {"requests": "requests answered since it started", "error_rate": "share of answers that were errors",
                  "p99_ms": "p99 latency in milliseconds", "accuracy": "accuracy on labelled predictions",
                  "labelled": "labelled predictions", "estimated_accuracy": "accuracy estimated before labels"}
FAMILIES = {  # name: (help, labels beyond model and version)
    "nbdeploy_monitor_alert_level": ("Monitoring level per model: 0 OK, 1 WARN, 2 ALERT.", ()),
    "nbdeploy_monitor_quality": ("Quality of the last labelled predictions, by metric.", ("metric",)),
    "nbdeploy_monitor_baseline": ("Held-out quality recorded at training, by metric.", ("metric",)),
    "nbdeploy_monitor_labelled": ("Predictions with a ground-truth label (monitor history window).", ()),
    # from the log, so they count every server and worker that logs into the store (nbdeploy_requests
    # is this process's own count): one figure for the whole deployment, however far it is scaled out
    "nbdeploy_monitor_requests": ("Requests logged by every server of the store (monitor history window).", ()),
    "nbdeploy_monitor_error_rate": ("Share of logged requests answered with an error, every server (recent).", ()),
    "nbdeploy_monitor_drift_psi": ("Population stability index of a feature on recent predictions.", ("feature",)),
    "nbdeploy_monitor_drift_level": ("Drift level of a feature: 0 OK, 1 WARN, 2 ALERT.", ("feature",)),
    "nbdeploy_monitor_inputs_out_of_range": ("Values outside the training [min, max], per feature.", ("feature",)),
    "nbdeploy_monitor_inputs_unseen": ("Values in categories training never saw, per feature.", ("feature",)),
    "nbdeploy_estimated_accuracy": ("Accuracy estimated without labels (CBPE) on the last predictions, with its "
                                    "95 % band (bound: value, low, high).", ("bound",)),
    "nbdeploy_estimated_mae": ("MAE estimated without labels (direct loss estimation) on the last predictions, "
                               "with its 95 % band (bound: value, low, high).", ("bound",)),
    **{f"nbdeploy_canary_{figure}": (f"A running canary's {text}, per arm (production, canary).", ("arm",))
       for figure, text in CANARY_FIGURES.items()},
}


def _samples(snap: dict[str, Any]) -> Iterator[tuple[str, list[str], float]]:
    """(family, label values, value) of one model's snapshot."""
    base = [str(snap["model"]), "" if snap["version"] is None else str(snap["version"])]
    yield "nbdeploy_monitor_alert_level", base, LEVELS.get(snap["alert"]["level"], 0)
    quality = snap.get("quality") or {}
    for family, metrics in (("nbdeploy_monitor_quality", quality.get("current")),
                            ("nbdeploy_monitor_baseline", quality.get("baseline"))):
        for metric, value in sorted((metrics or {}).items()):
            if metric != "n" and isinstance(value, (int, float)) and not isinstance(value, bool):
                yield family, [*base, str(metric)], value
    yield "nbdeploy_monitor_labelled", base, (snap.get("labels") or {}).get("labelled", 0)
    traffic = snap.get("traffic") or {}
    yield "nbdeploy_monitor_requests", base, traffic.get("requests", 0)
    if traffic.get("error_rate") is not None:
        yield "nbdeploy_monitor_error_rate", base, traffic["error_rate"]
    for row in (snap.get("drift") or {}).get("features", []):
        labels = [*base, str(row["feature"])]
        if row.get("psi") is not None:
            yield "nbdeploy_monitor_drift_psi", labels, row["psi"]
        yield "nbdeploy_monitor_drift_level", labels, LEVELS.get(row["status"], 0)
    estimated = snap.get("estimated") or {}
    if estimated.get("value") is not None:
        for bound in ("value", "low", "high"):
            yield f"nbdeploy_estimated_{estimated['metric']}", [*base, bound], estimated[bound]
    for feature, counts in sorted((snap.get("inputs") or {}).items()):
        labels = [*base, str(feature)]
        yield "nbdeploy_monitor_inputs_out_of_range", labels, counts["out_of_range"]
        yield "nbdeploy_monitor_inputs_unseen", labels, counts["unseen"]
    canary = snap.get("canary")
    if canary is not None and canary["state"] == "running":  # per arm, labelled by the arm's own version
        for role, figures in canary["arms"].items():
            for figure in CANARY_FIGURES:
                if figures.get(figure) is not None:
                    yield f"nbdeploy_canary_{figure}", [base[0], str(figures["version"]), role], figures[figure]


class MonitorGauges(Collector):
    """Monitor snapshots as gauge families; a family with no sample is left out."""

    def __init__(self, snapshots: Iterable[dict[str, Any]]) -> None:
        self.snapshots = list(snapshots)

    def collect(self) -> Iterator[Metric]:
        families = {name: GaugeMetricFamily(name, text, labels=[*BY_MODEL, *extra])
                    for name, (text, extra) in FAMILIES.items()}
        for snap in self.snapshots:
            for family, labels, value in _samples(snap):
                families[family].add_metric(labels, float(value))
        yield from (family for family in families.values() if family.samples)


def prometheus_text(snapshots: Iterable[dict[str, Any]]) -> str:
    """The gauges of ``snapshots`` in the text exposition format ("" when there are none)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MonitorGauges(snapshots))
    return generate_latest(registry).decode()


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
        return prometheus_text(self.snapshots(names))

    def snapshots(self, names: Iterable[str]) -> list[dict[str, Any]]:
        """One monitor snapshot per model of ``names`` (blocking); none when the monitor cannot load."""
        if self.unavailable:
            return []
        try:
            from nbdeploy.monitor.live import Monitor
        except ImportError as exc:
            self.unavailable = f"monitoring gauges need pandas, SciPy and scikit-learn: {exc}"
            log.warning("%s; /metrics leaves them out and the server judges no alerts", self.unavailable)
            return []

        snapshots = []
        for name in names:
            monitor = self._monitors.get(name)
            if monitor is None:
                monitor = self._monitors[name] = Monitor(self.store.location, name, store=self.store, **self.options)
            try:
                snapshots.append(monitor.snapshot())
            except Exception:  # one model's monitor must not take /metrics down
                log.exception("cannot take the monitor snapshot of %s", name)
        return snapshots
