"""Refused requests in the server's log: the first at once, then one summary a minute per model.

So ``nbdeploy logs NAME`` shows why clients are being turned away, without a line per request
(a misconfigured client can send thousands a second).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger("nbdeploy.server")
SUMMARY_EVERY_S = 60.0


@dataclass
class _Pending:
    statuses: Counter[int] = field(default_factory=Counter)
    last: str = ""
    logged_at: float = float("-inf")


class RefusalLog:
    """Counts a model's refused requests and writes them to the log at most once a minute."""

    def __init__(self, every: float = SUMMARY_EVERY_S) -> None:
        self.every = every
        self._models: dict[str, _Pending] = {}

    def note(self, model: str, status: int, message: str) -> None:
        pending = self._models.setdefault(model, _Pending())
        pending.statuses[status] += 1
        pending.last = message
        now = time.monotonic()
        if now - pending.logged_at >= self.every:
            self._write(model, pending)
            pending.logged_at = now

    def flush(self) -> None:
        """Write what is counted and not yet logged (at shutdown)."""
        for model, pending in self._models.items():
            if pending.statuses:
                self._write(model, pending)

    @staticmethod
    def _write(model: str, pending: _Pending) -> None:
        total = sum(pending.statuses.values())
        counts = ", ".join(f"{status} ×{n}" for status, n in sorted(pending.statuses.items()))
        log.warning("%s: %d request%s refused (%s); last: %s", model, total, "" if total == 1 else "s", counts,
                    pending.last[:300])
        pending.statuses.clear()
