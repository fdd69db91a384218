"""The server's traffic counters, and the Prometheus collector that shows them on ``/metrics``.

Per model version: requests by protocol and status, latency, and rows per ONNX Runtime call (the
batch size). Counting is plain Python on the request path (a dict increment, a bisect); the
collector turns the counters into metric families only when ``/metrics`` is scraped, and
``prometheus_client`` writes the text. Labels come only from versions the server actually serves,
never from request paths, so a client cannot grow the series without bound.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
CONTENT_TYPE = "text/plain; version=0.0.4"
"""The text exposition format that ``prometheus_client.generate_latest`` writes."""

Loaded = Iterable[tuple[str, int, bool]]
"""(model, version, batching) of every version loaded now."""


class Histogram:
    """Cumulative buckets are computed when scraped; observing is one bisect and three adds."""

    __slots__ = ("bounds", "count", "counts", "les", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.les = [f"{b:g}" for b in bounds]  # the `le` label values: 1, 2, 0.0001 (series names stay put)
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def buckets(self) -> list[tuple[str, int]]:
        """(le, cumulative count) per bound, then ``+Inf``."""
        out, running = [], 0
        for le, n in zip(self.les, self.counts, strict=False):
            running += n
            out.append((le, running))
        out.append(("+Inf", self.count))
        return out


class VersionStats:
    """Counters of one model version. Requests are counted on the event loop, batches on its worker."""

    __slots__ = ("batches", "latency", "requests")

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)  # (protocol, status) -> count
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batches = Histogram(BATCH_BUCKETS)

    def record(self, protocol: str, status: int, seconds: float) -> None:
        self.requests[protocol, status] += 1
        self.latency.observe(seconds)


class Metrics:
    """Every counter ``/metrics`` shows."""

    def __init__(self) -> None:
        self.versions: dict[tuple[str, int], VersionStats] = {}
        self.unresolved: defaultdict[tuple[str, int], int] = defaultdict(int)  # requests with no model
        self.rejected: defaultdict[str, int] = defaultdict(int)  # refused before routing, by reason

    def version(self, name: str, version: int) -> VersionStats:
        stats = self.versions.get((name, version))
        if stats is None:  # copy on write: /metrics may be iterating the dict on the event loop
            stats = VersionStats()
            self.versions = {**self.versions, (name, version): stats}
        return stats


class TrafficCollector(Collector):
    """:class:`Metrics` and what the server holds now, as metric families, read when scraped.

    Collect on the event loop, where requests are counted: the request counters are dicts that a
    request may grow while another thread iterates them.

    ``combine`` (a worker of ``nbdeploy serve --workers N``) adds the other workers' counters to this
    one's (:mod:`nbdeploy.serve.worker_metrics`): traffic and dropped events are then the server's
    sums, while what is loaded now stays this worker's own (every worker loads the same versions).
    """

    def __init__(self, metrics: Metrics, *, loaded: Callable[[], Loaded], load_failures: Callable[[], int],
                 dropped: Callable[[], int], log_health: Callable[[], dict | None] = lambda: None,
                 combine: Callable[[Metrics, int], tuple[Metrics, int]] | None = None) -> None:
        self.metrics = metrics
        self.loaded, self.load_failures, self.dropped = loaded, load_failures, dropped
        self.log_health = log_health
        self.combine = combine

    def collect(self) -> Iterator[Metric]:
        metrics, dropped = self.metrics, self.dropped()
        if self.combine is not None:
            metrics, dropped = self.combine(metrics, dropped)
        versions = sorted(metrics.versions.items())
        by_version = ["model", "version"]
        requests = CounterMetricFamily("nbdeploy_requests",
                                       "Inference requests by model, version, protocol and status.",
                                       labels=[*by_version, "protocol", "code"])
        errors = CounterMetricFamily("nbdeploy_request_errors", "Inference requests answered with a 4xx or 5xx status.",
                                     labels=by_version)
        latency = HistogramMetricFamily("nbdeploy_request_duration_seconds",
                                        "Inference request latency inside the server.", labels=by_version)
        batches = HistogramMetricFamily("nbdeploy_batch_rows", "Rows per ONNX Runtime call (the batch size).",
                                        labels=by_version)
        for (name, number), stats in versions:
            version = str(number)
            for (protocol, status), n in sorted(stats.requests.items()):
                requests.add_metric([name, version, protocol, str(status)], n)
            errors.add_metric([name, version], sum(n for (_, status), n in stats.requests.items() if status >= 400))
            latency.add_metric([name, version], stats.latency.buckets(), stats.latency.sum)
            batches.add_metric([name, version], stats.batches.buckets(), stats.batches.sum)
        # requests that named no served model count under empty labels: paths never become labels
        unresolved = sorted(metrics.unresolved.items())
        for (protocol, status), n in unresolved:
            requests.add_metric(["", "", protocol, str(status)], n)
        errors.add_metric(["", ""], sum(n for (_, status), n in unresolved if status >= 400))
        yield from (requests, errors, latency, batches)

        rejected = CounterMetricFamily("nbdeploy_rejected", "Requests refused before reaching a route, by reason.",
                                       labels=["reason"])
        for reason, n in sorted(metrics.rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected
        loaded = GaugeMetricFamily("nbdeploy_model_loaded", "Versions loaded now (1), with whether they batch.",
                                   labels=[*by_version, "batching"])
        for name, number, batching in self.loaded():
            loaded.add_metric([name, str(number), str(batching).lower()], 1)
        yield loaded
        yield GaugeMetricFamily("nbdeploy_model_load_failures", "Versions the server could not load.",
                                value=self.load_failures())
        yield CounterMetricFamily("nbdeploy_log_dropped", "Prediction events the log could not keep.",
                                  value=dropped)
        health = self.log_health()
        if health is not None:
            yield GaugeMetricFamily("nbdeploy_prediction_log_ok", "1 while the prediction log writes; 0 when it "
                                    "cannot (see /v2/health/ready).", value=int(health["ok"]))
            yield CounterMetricFamily("nbdeploy_prediction_log_recoveries",
                                      "Unreadable log.db files set aside for a fresh log.", value=health["recoveries"])
