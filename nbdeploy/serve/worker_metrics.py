"""``/metrics`` of ``nbdeploy serve --workers N`` sums every worker's traffic counters.

The kernel hands each connection (a scrape too) to whichever worker accepts it, and each worker
counts only what it answered. So every worker of a supervised server writes its counters to
``<store home>/metrics/<pid>.json`` (about once a second, and whenever it answers ``/metrics``),
and the worker answering ``/metrics`` adds every other file in that directory to its own counters.

- Files of workers that died stay, and keep counting: a worker the supervisor restarts must not
  take its predecessor's requests out of the sum, or Prometheus sees the total drop (a reset).
  The supervisor empties the directory when a server starts (:func:`clear`), so a new server
  starts from zero, as a single-process server does.
- The answering worker writes its own file before it reads the others. A scrape then reports the
  sum of the files as they are at that moment, and each file only grows, so successive scrapes
  never go down whichever worker answers (without that write, a worker could report a total that
  includes live counts its sibling's next answer would only see a second later, as a drop).
- Everything runs on the event loop, where the request counters change: no dict is iterated while
  a request grows it, and no older snapshot can replace a newer one.
- One machine only: the directory is local (``store.home``, also for a PostgreSQL store), as the
  workers of one server are.

A single-process server does none of this: no files, no cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nbdeploy.serve.metrics import Histogram, Metrics
from nbdeploy.store.files import private_dir, write_private

log = logging.getLogger("nbdeploy.server")
INTERVAL = 1.0  # seconds between a worker's snapshots: how stale a sibling's counts can be in a scrape
FORMAT = 1

Snapshot = dict[str, Any]
"""A worker's counters as JSON: see :func:`snapshot`."""


def directory(home: Path) -> Path:
    """Where the workers of the server on store ``home`` keep their counters."""
    return home / "metrics"


def clear(home: Path) -> Path:
    """Empty (creating it owner-only) the snapshot directory: a new server starts counting from zero."""
    folder = private_dir(directory(home))
    for entry in os.scandir(folder):
        if entry.name.endswith((".json", ".tmp")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
    return folder


def _histogram(h: Histogram) -> dict[str, Any]:
    counts = list(h.counts)  # batch sizes are observed on a batcher thread: one copy, then consistent
    return {"counts": counts, "sum": h.sum, "count": sum(counts)}


def snapshot(metrics: Metrics, dropped: int = 0) -> Snapshot:
    """The counters of ``metrics`` (and the prediction events this worker could not log) as plain JSON data."""
    return {
        "format": FORMAT,
        "versions": [[name, number, {"requests": [[p, s, n] for (p, s), n in stats.requests.items()],
                                     "latency": _histogram(stats.latency), "batches": _histogram(stats.batches)}]
                     for (name, number), stats in metrics.versions.items()],
        "unresolved": [[p, s, n] for (p, s), n in metrics.unresolved.items()],
        "rejected": dict(metrics.rejected),
        "dropped": dropped,
    }


def _add_histogram(into: Histogram, data: dict[str, Any]) -> None:
    counts = data["counts"]
    if len(counts) != len(into.counts):  # other bounds (another nbdeploy version): buckets would not line up
        return
    into.counts = [a + b for a, b in zip(into.counts, counts, strict=True)]
    into.sum += data["sum"]
    into.count += data["count"]


def add(into: Metrics, snap: Snapshot) -> int:
    """Add the counters of ``snap`` to ``into`` (bucket by bucket for histograms); returns its dropped count."""
    for name, number, stats in snap.get("versions", ()):
        target = into.version(name, number)
        for protocol, status, n in stats["requests"]:
            target.requests[protocol, status] += n
        _add_histogram(target.latency, stats["latency"])
        _add_histogram(target.batches, stats["batches"])
    for protocol, status, n in snap.get("unresolved", ()):
        into.unresolved[protocol, status] += n
    for reason, n in snap.get("rejected", {}).items():
        into.rejected[reason] += n
    return int(snap.get("dropped", 0))


def merge(snapshots: list[Snapshot]) -> tuple[Metrics, int]:
    """The sum of ``snapshots``: a fresh :class:`Metrics` (for rendering) and the total dropped count."""
    total, dropped = Metrics(), 0
    for snap in snapshots:
        dropped += add(total, snap)
    return total, dropped


class WorkerMetrics:
    """One worker's side: write its own snapshot, and sum it with its siblings' when scraped."""

    def __init__(self, folder: Path, pid: int | None = None) -> None:
        self.folder = private_dir(folder)
        pid = os.getpid() if pid is None else pid
        self.path = folder / f"{pid}.json"
        n = 1
        while self.path.exists():  # a pid reused within one server's life: keep the dead worker's file
            self.path = folder / f"{pid}-{n}.json"
            n += 1
        self._last: Snapshot | None = None

    def write(self, snap: Snapshot) -> None:
        """Replace this worker's file with ``snap`` atomically (a reader sees the old file or the new one)."""
        if snap == self._last:
            return  # idle: nothing new to tell the siblings
        tmp = self.path.with_name(f"{self.path.stem}.{threading.get_ident()}.tmp")
        write_private(tmp, json.dumps(snap, separators=(",", ":")).encode())
        os.replace(tmp, self.path)
        self._last = snap

    def others(self) -> list[Snapshot]:
        """Every other worker's last snapshot, dead workers' included; an unreadable file is skipped."""
        out = []
        for entry in os.scandir(self.folder):
            if not entry.name.endswith(".json") or entry.name == self.path.name:
                continue
            try:
                with open(entry.path, "rb") as fh:
                    out.append(json.loads(fh.read()))
            except (OSError, ValueError) as exc:  # removed meanwhile (a new server clearing), or not ours
                log.debug("skipping worker metrics %s: %s", entry.path, exc)
        return out

    def combine(self, metrics: Metrics, dropped: int) -> tuple[Metrics, int]:
        """This worker's counters plus its siblings': what ``/metrics`` shows (:class:`TrafficCollector`)."""
        own = snapshot(metrics, dropped)
        try:
            self.write(own)  # first, so the next scrape, whoever answers it, counts at least this much
        except OSError as exc:
            log.warning("cannot write worker metrics %s: %s", self.path, exc)
        return merge([own, *self.others()])

    async def publish(self, metrics: Metrics, dropped: Callable[[], int], interval: float = INTERVAL) -> None:
        """Write this worker's snapshot every ``interval`` seconds until cancelled, then once more."""
        try:
            while True:
                await asyncio.sleep(interval)
                self._publish(metrics, dropped)
        finally:
            self._publish(metrics, dropped)  # at shutdown: the requests answered while draining count too

    def _publish(self, metrics: Metrics, dropped: Callable[[], int]) -> None:
        try:
            self.write(snapshot(metrics, dropped()))
        except Exception as exc:  # a full disk must not stop the worker serving
            log.warning("cannot write worker metrics %s: %s", self.path, exc)
