"""Prometheus metrics, hand-rolled: a few counters and histograms and the text exposition format.

Per model version: requests by protocol and status, latency, and rows per ONNX Runtime call (the
batch size). Labels come only from versions the server actually serves, never from request paths,
so a client cannot grow the series without bound.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Histogram:
    """Cumulative buckets are computed when rendering; observing is one bisect and three adds."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str) -> Iterable[str]:
        running = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            yield f'{name}_bucket{{{labels},le="{bound:g}"}} {running}'
        yield f'{name}_bucket{{{labels},le="+Inf"}} {self.count}'
        yield f"{name}_sum{{{labels}}} {self.sum:.6f}"
        yield f"{name}_count{{{labels}}} {self.count}"


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


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Everything ``/metrics`` shows."""

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

    def render(self, *, dropped: int, served: Iterable[tuple[str, int, bool]], load_failures: int) -> str:
        """The text exposition format. ``served`` is (model, version, batching) for what is loaded now."""
        out = [
            "# HELP nbdeploy_requests_total Inference requests by model, version, protocol and status.",
            "# TYPE nbdeploy_requests_total counter",
        ]
        for (name, version), stats in sorted(self.versions.items()):
            base = f'model="{_escape(name)}",version="{version}"'
            for (protocol, status), n in sorted(stats.requests.items()):
                out.append(f'nbdeploy_requests_total{{{base},protocol="{protocol}",code="{status}"}} {n}')
        for (protocol, status), n in sorted(self.unresolved.items()):
            out.append(f'nbdeploy_requests_total{{model="",version="",protocol="{protocol}",code="{status}"}} {n}')
        out += ["# HELP nbdeploy_request_errors_total Inference requests answered with a 4xx or 5xx status.",
                "# TYPE nbdeploy_request_errors_total counter"]
        for (name, version), stats in sorted(self.versions.items()):
            errors = sum(n for (_, status), n in stats.requests.items() if status >= 400)
            out.append(f'nbdeploy_request_errors_total{{model="{_escape(name)}",version="{version}"}} {errors}')
        errors = sum(n for (_, status), n in self.unresolved.items() if status >= 400)
        out.append(f'nbdeploy_request_errors_total{{model="",version=""}} {errors}')
        out += ["# HELP nbdeploy_request_duration_seconds Inference request latency inside the server.",
                "# TYPE nbdeploy_request_duration_seconds histogram"]
        for (name, version), stats in sorted(self.versions.items()):
            out += stats.latency.lines("nbdeploy_request_duration_seconds",
                                       f'model="{_escape(name)}",version="{version}"')
        out += ["# HELP nbdeploy_batch_rows Rows per ONNX Runtime call (the batch size).",
                "# TYPE nbdeploy_batch_rows histogram"]
        for (name, version), stats in sorted(self.versions.items()):
            out += stats.batches.lines("nbdeploy_batch_rows", f'model="{_escape(name)}",version="{version}"')
        out += ["# HELP nbdeploy_rejected_total Requests refused before reaching a route, by reason.",
                "# TYPE nbdeploy_rejected_total counter"]
        out += [f'nbdeploy_rejected_total{{reason="{r}"}} {n}' for r, n in sorted(self.rejected.items())]
        out += ["# HELP nbdeploy_model_loaded Versions loaded now (1), with whether they batch.",
                "# TYPE nbdeploy_model_loaded gauge"]
        out += [f'nbdeploy_model_loaded{{model="{_escape(n)}",version="{v}",batching="{str(b).lower()}"}} 1'
                for n, v, b in served]
        out += ["# HELP nbdeploy_model_load_failures Versions the server could not load.",
                "# TYPE nbdeploy_model_load_failures gauge", f"nbdeploy_model_load_failures {load_failures}",
                "# HELP nbdeploy_log_dropped_total Prediction events the log could not keep.",
                "# TYPE nbdeploy_log_dropped_total counter", f"nbdeploy_log_dropped_total {dropped}"]
        return "\n".join(out) + "\n"
