"""Canary rollouts in the server: which requests the canary answers, and the guard that ends it.

**Routing.** An un-versioned inference request of a model with a running canary goes to the
canary's version for ``percent`` % of requests, decided by a request key: the value of the header
the canary was started with (``key=``), else of ``X-Client-ID``; a request with neither is sent at
random. The decision hashes the model name and the key with BLAKE2b, never Python's ``hash()``, so
every worker and every restart sends a key the same way, and raising the share keeps the keys that
had the canary already. The peer address is not a key: on one machine, and behind a proxy, every
client shares it. Requests that name a version (``/versions/N``) are never rerouted.

The routes come from the store's running canaries, read before each sync of the runtime; a request
goes to the canary only while the runtime also serves the ``canary`` alias at that version, so the
moment a canary ends (one store transaction removes row and alias) requests fall back to production.
With no canary running the request path costs one dict lookup.

**Guards.** A daemon thread per server process (every ``GUARD_SECONDS``) judges each running canary
of the models it serves with :func:`nbdeploy.monitor.canary.canary_status`: from the prediction log
(every worker's requests) or, with the log off, from this process's own counters since it first saw
the canary (each worker then judges its own share). A breach ends the canary as ``aborted`` and
records an ``ALERT``; ``promote_after`` requests within the guards (and a gate that passed or had
nothing to judge) end it as ``promoted``. When production moves while it runs (a deploy, promotion or
rollback) there is no production arm left to compare with: the canary ends as ``stopped``, saying so.
Ending is conditional in the store, so with several workers one of them records the outcome and its
alert.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nbdeploy.serve import rounds
from nbdeploy.serve.metrics import VersionStats
from nbdeploy.serve.runtime import Runtime
from nbdeploy.store import PRODUCTION, Store
from nbdeploy.store.alerts import record_alert
from nbdeploy.store.canary import ABORTED, PROMOTED, STOPPED, Canary, end_canary, running_canaries
from nbdeploy.store.registry import CANARY

if TYPE_CHECKING:
    from nbdeploy.monitor.canary import ArmCounts

log = logging.getLogger("nbdeploy.server")
CLIENT_HEADER = "X-Client-ID"  # the client id that keys a canary started without key=
GUARD_SECONDS = 0.5


def bucket(name: str, key: bytes) -> float:
    """Where ``key`` falls for model ``name``, in [0, 100): stable across processes, restarts and machines."""
    digest = hashlib.blake2b(name.encode() + b"\0" + key, digest_size=8).digest()
    return int.from_bytes(digest, "big") * 100.0 / 2**64


def to_canary(name: str, key: bytes | None, percent: float) -> bool:
    """Whether a request keyed ``key`` (None or empty: no key, so at random) goes to ``name``'s canary."""
    if not key:
        return random.random() * 100.0 < percent
    return bucket(name, key) < percent


@dataclass(frozen=True)
class Route:
    version: int
    percent: float
    header: bytes  # lower-case, as ASGI gives header names


class CanaryRouter:
    """The running canaries' routes; :meth:`refresh` reads them from the store (the store follower calls it)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.routes: dict[str, Route] = {}

    def refresh(self) -> None:
        try:
            running = running_canaries(self.store)
        except Exception:  # keep the routes it has: a failed read must not stop the store follower's sync
            rounds.failed("cannot read the running canaries")
            return
        routes = {c.name: Route(c.version, c.percent, (c.key or CLIENT_HEADER).lower().encode("latin-1"))
                  for c in running}
        if routes != self.routes:
            self.routes = routes  # one assignment: requests read either table whole

    def version_for(self, name: str, scope: dict[str, Any], runtime: Runtime) -> str | None:
        """The canary's version (as a path segment) when this un-versioned request goes to it, else None."""
        route = self.routes.get(name)
        if route is None:
            return None
        served = runtime.models().get(name)
        if served is None or served.aliases.get(CANARY) != route.version or route.version not in served.versions:
            return None  # the runtime has not loaded it yet, or the canary just ended: production answers
        key = next((value for header, value in scope["headers"] if header == route.header), None)
        return str(route.version) if to_canary(name, key, route.percent) else None


class CanaryGuard:
    """The thread that judges running canaries and ends them (see the module's docstring)."""

    def __init__(self, store: Store, runtime: Runtime, *, logged: bool, interval: float = GUARD_SECONDS,
                 on_end: Callable[[], None] | None = None) -> None:
        self.store, self.runtime, self.logged, self.interval = store, runtime, logged, interval
        # called after this guard ended a canary, so this process routes by the outcome at once rather than at
        # its next store poll (other workers follow at theirs)
        self.on_end = on_end
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reader: Any = None
        self._metas: dict[tuple[str, int], dict[str, Any]] = {}
        self._seen: dict[tuple[int, int], tuple[int, int, np.ndarray]] = {}  # (canary, version) -> counters then

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nbdeploy-canary-guard", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._reader is not None:
            self._reader.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # keep guarding: one bad read must not stop the thread
                rounds.failed("cannot judge the running canaries")

    def check(self) -> list[Canary]:
        """Judge every running canary of the models served here once; returns those this call ended."""
        ended = []
        for canary in running_canaries(self.store):
            if canary.name not in self.runtime.models():
                continue
            production = self.store.aliases(canary.name).get(PRODUCTION)
            if production != canary.production:  # a deploy, promotion or rollback meanwhile: no arm to compare with
                outcome = end_canary(self.store, canary.name, STOPPED,
                                     f"production moved to version {production} while the canary ran")
            else:
                outcome = self.judge(canary)
            if outcome is not None:
                ended.append(outcome)
        if ended and self.on_end is not None:
            self.on_end()
        return ended

    def judge(self, canary: Canary) -> Canary | None:
        from nbdeploy.monitor.canary import ABORT, PROMOTE, canary_status  # pandas-free, and only once canaries run

        status = canary_status(canary, self._arms(canary))
        if status["verdict"] == ABORT:
            reason = f"canary version {canary.version} aborted: {status['breach']}"
            ended = end_canary(self.store, canary.name, ABORTED, reason)
            if ended is not None:  # this worker recorded the outcome: it alone raises the alert
                record_alert(self.store, canary.name, "ALERT", [reason], source="canary",
                             detail={"canary": ended.id, "version": canary.version, "arms": status["arms"]})
                log.warning("%s: %s; production version %s serves all traffic", canary.name, reason,
                            canary.production)
            return ended
        if status["verdict"] == PROMOTE:
            gate = "the promotion gate passed" if canary.gate is not None else "nothing to gate on"
            reason = (f"passed its guards for {status['progress']} canary requests "
                      f"(promote_after {canary.promote_after}; {gate})")
            ended = end_canary(self.store, canary.name, PROMOTED, reason)
            if ended is not None:
                log.info("%s: canary version %s promoted to production: %s", canary.name, canary.version, reason)
            return ended
        return None

    # -- the counts -------------------------------------------------------------------------
    def _meta(self, name: str, version: int) -> dict[str, Any]:
        if (name, version) not in self._metas:
            self._metas[(name, version)] = self.store.version(name, version).meta
        return self._metas[(name, version)]

    def _arms(self, canary: Canary) -> dict[str, ArmCounts]:
        from nbdeploy.monitor.canary import log_arms

        if self.logged:
            if self._reader is None:
                from nbdeploy.store.reader import LogReader

                self._reader = LogReader(self.store.location)
            return log_arms(self._reader, canary, lambda v: self._meta(canary.name, v))
        return {"production": self._counted(canary, canary.production), "canary": self._counted(canary, canary.version)}

    def _counted(self, canary: Canary, version: int) -> ArmCounts:
        """This process's requests of ``version`` since it first judged the canary (the log is off)."""
        from nbdeploy.monitor.canary import ArmCounts, held_out_accuracy

        stats = self.runtime.metrics.versions.get((canary.name, version)) or VersionStats()
        counted = dict(stats.requests)  # one copy: the event loop adds to it meanwhile
        requests = sum(counted.values())
        errors = sum(n for (_, status), n in counted.items() if status >= 400)
        latency = np.array(stats.latency.counts, dtype=np.int64)
        before = self._seen.setdefault((canary.id, version), (requests, errors, latency))
        return ArmCounts(version=version, requests=requests - before[0], errors=errors - before[1],
                         latency=latency - before[2], edges_ms=np.array(stats.latency.bounds) * 1000.0,
                         baseline_accuracy=held_out_accuracy(self._meta(canary.name, version)))
