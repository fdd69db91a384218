"""Every model of a store at a glance, for the models panel: plain dicts, cheap enough to refresh every few seconds.

:class:`Overview` adds to each registry row (name, versions, aliases, status, as ``nbdeploy.models()`` lists
them) what has happened since: requests per minute over the last hour from the log's rollups, the latest
stored alert, and a running canary's progress. Its cost per refresh is one rollup query per model (at most
``window / BUCKET_SECONDS`` rows per version) and one alert query for the whole store; a model running a
canary (it has a ``canary`` alias) adds the canary's own figures, read as the server's guards read them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from nbdeploy.monitor.canary import canary_snapshot
from nbdeploy.store.alerts import alerts
from nbdeploy.store.batch import BUCKET_SECONDS
from nbdeploy.store.canary import RUNNING
from nbdeploy.store.reader import LogReader
from nbdeploy.store.registry import CANARY, Store

# An alert written a little after the moment it describes is still picked up by the next refresh.
_ALERT_LAG_SECONDS = 60.0
CANARY_KEYS = ("version", "production", "percent", "promote_after", "progress", "state", "started_at", "breach",
               "hold")


class Overview:
    """Rows of the models panel for one store; one instance per refreshing thread (it keeps a log reader)."""

    def __init__(self, store: Store, *, window: float = 3600.0, step: float = 60.0) -> None:
        self.store, self.window, self.step = store, float(window), float(step)
        self.log = LogReader(store.location)
        self._latest: dict[str, dict[str, Any]] = {}  # model -> its latest alert
        self._last_id = 0
        self._last_at: float | None = None
        self._metas: dict[str, dict[int, dict]] = {}  # model.json per model and version, for the canary figures

    def close(self) -> None:
        self.log.close()

    def rows(self, registry: list[dict[str, Any]], now: float | None = None) -> list[dict[str, Any]]:
        """Each registry row with ``traffic``, ``alert`` (latest stored alert or None), ``level`` and ``canary``."""
        now = time.time() if now is None else now
        self._read_alerts([r["name"] for r in registry])
        since = int((now - self.window - self.step) // BUCKET_SECONDS)  # the first step starts up to a step earlier
        out = []
        with self.log.consistent():
            for row in registry:
                name = row["name"]
                rollups = self.log.rollups(name, since)
                alert = self._latest.get(name)
                canary = self._canary(name) if CANARY in (row.get("aliases") or {}) else None
                out.append({**row, "traffic": self._traffic(rollups, now), "alert": alert,
                            "level": alert["level"] if alert else None, "canary": canary})
        return out

    def _read_alerts(self, names: list[str]) -> None:
        """The latest alert of every model: per model once, then only what was raised since, in one query."""
        read_at = time.time()
        if self._last_at is None:
            found = [a for name in names for a in alerts(self.store, name, limit=1)]
        else:
            found = [a for a in alerts(self.store, since=self._last_at - _ALERT_LAG_SECONDS) if a.id > self._last_id]
        for alert in sorted(found, key=lambda a: a.id):
            self._latest[alert.name] = {"at": alert.at, "level": alert.level, "reasons": list(alert.reasons),
                                        "source": alert.source}
            self._last_id = max(self._last_id, alert.id)
        self._last_at = read_at

    def _traffic(self, rollups: Any, now: float) -> dict[str, Any]:
        """Requests per ``step`` over the last ``window`` (every version; the oldest first), and their total."""
        n = max(round(self.window / self.step), 1)
        end = (now // self.step + 1) * self.step  # the current, unfinished step is the last point
        start = end - n * self.step
        if len(rollups):
            index = ((rollups.bucket * BUCKET_SECONDS - start) // self.step).astype(int)
            keep = (index >= 0) & (index < n)
            counts = np.bincount(index[keep], weights=(rollups.requests + rollups.dropped)[keep], minlength=n)
        else:
            counts = np.zeros(n)
        return {"start": float(start), "step": self.step, "requests": [int(c) for c in counts[:n]],
                "total": int(counts.sum())}

    def _canary(self, name: str) -> dict[str, Any] | None:
        """The running canary and its progress, as the server's guards count it (:mod:`nbdeploy.monitor.canary`)."""
        status = canary_snapshot(self.store, self.log, name, metas=self._metas.setdefault(name, {}))
        if status is None or status["state"] != RUNNING:
            return None
        return {key: status.get(key) for key in CANARY_KEYS}
