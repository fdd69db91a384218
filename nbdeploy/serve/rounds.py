"""How the server's background rounds report a failed round: following the store, reading and judging
canaries, judging and sending alerts.

Each round runs again a moment later, so a failure is reported, never raised. Two kinds differ:

* the store's database is out of reach for now (a PostgreSQL restart or failover, a lost network):
  one line, at most once a minute per task, saying that it tries again; the next rounds pick up where
  it left off, and serving goes on from what the server holds;
* anything else is a bug: its traceback, every time.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

from nbdeploy.store import database

log = logging.getLogger("nbdeploy.server")
QUIET_S = 60.0  # one line a minute per task while the database stays out of reach

_last: dict[str, float] = {}
_lock = threading.Lock()


def failed(what: str) -> None:
    """Report the exception being handled as the failure of one round of ``what`` (call it in ``except``)."""
    exc = sys.exc_info()[1]
    if exc is None or not database.transient(exc):
        log.exception(what)
        return
    now = time.monotonic()
    with _lock:
        if now - _last.get(what, -QUIET_S) < QUIET_S:
            return
        _last[what] = now
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    log.warning("%s: the store's database is out of reach for now (%s); trying again", what, reason)
