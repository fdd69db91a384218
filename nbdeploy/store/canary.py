"""Canary rollouts as the store keeps them: one row per canary, the running one and its history.

A running canary is also the ``canary`` alias of its model, so every server process loads the
version the same way it loads any aliased one; starting and ending a canary move that alias in the
same transaction as the row, and bump the store's generation so the servers follow. Ending is
conditional on the canary still running, so several server workers judging the same guards record
one outcome: the first to end it wins, the others get ``None``.

The row keeps what every worker needs to judge and route alike, and what survives a server restart:
the share of traffic, the request header that keys the buckets, the effective guard thresholds, and
the promotion gate's decision taken before the canary started (``None``: nothing to gate on).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from nbdeploy.errors import Conflict, InvalidInput
from nbdeploy.store.registry import CANARY, PRODUCTION, Store

RUNNING, PROMOTED, ABORTED, STOPPED = "running", "promoted", "aborted", "stopped"
HEADER_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")  # an HTTP header name (RFC 9110 token)
ENDINGS = (PROMOTED, ABORTED, STOPPED)


@dataclass(frozen=True)
class Canary:
    id: int
    name: str
    version: int  # the candidate getting ``percent`` of the traffic
    production: int  # what production served when the canary started
    percent: float  # 0 < percent < 100
    key: str | None  # the request header whose value buckets requests (None: the client id, else random)
    promote_after: int | None  # promote once the canary answered this many requests within its guards
    guards: dict[str, Any] = field(default_factory=dict)  # the effective thresholds
    state: str = RUNNING
    reason: str | None = None
    started_at: float = 0.0
    ended_at: float | None = None
    gate: dict[str, Any] | None = None  # the promotion gate's decision (GateDecision.to_dict()); None: not gated

    @property
    def running(self) -> bool:
        return self.state == RUNNING

    @property
    def promotable(self) -> bool:
        """Whether ``promote_after`` may promote it: the gate passed, or there was nothing to gate on."""
        return self.gate is None or bool(self.gate.get("passed"))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "version": self.version, "production": self.production,
                "percent": self.percent, "key": self.key, "promote_after": self.promote_after,
                "guards": dict(self.guards), "gate": None if self.gate is None else dict(self.gate),
                "state": self.state, "reason": self.reason, "started_at": self.started_at, "ended_at": self.ended_at}


def check_canary(store: Store, name: str, version: int, percent: float, promote_after: int | None = None,
                 key: str | None = None) -> int:
    """Refuse a canary that cannot start (bad share, unknown version, no production, one running already);
    returns the production version it would run against. :func:`start_canary` checks again, atomically."""
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 < float(percent) < 100:
        raise InvalidInput(f"percent must be a number between 0 and 100 (exclusive), got {percent!r}")
    if promote_after is not None and (isinstance(promote_after, bool) or not isinstance(promote_after, int)
                                      or promote_after < 1):
        raise InvalidInput(f"promote_after must be a positive number of requests, got {promote_after!r}")
    if key is not None and (not isinstance(key, str) or not HEADER_RE.fullmatch(key)):
        raise InvalidInput(f"key must be the name of a request header (e.g. 'X-User-ID'), got {key!r}")
    store.version(name, version)  # NotFound naming the versions there are
    production = store.aliases(name).get(PRODUCTION)
    if production is None or name not in store.serving_models():
        raise Conflict(f"model {name!r} is not served; a canary shares production's traffic, so serve it first")
    if production == version:
        raise InvalidInput(f"version {version} of {name!r} is production already; a canary needs another version")
    running = current_canary(store, name)
    if running is not None:
        raise Conflict(f"model {name!r} has a canary running already (version {running.version}); "
                       f"stop it first (%deploy canary {name} --stop, or stop=True)")
    return production


def start_canary(store: Store, name: str, version: int, percent: float, *, key: str | None = None,
                 promote_after: int | None = None, guards: dict[str, Any] | None = None,
                 gate: dict[str, Any] | None = None) -> Canary:
    """Send ``percent`` % of ``name``'s un-versioned traffic to ``version``; one canary per model at a time."""
    production = check_canary(store, name, version, percent, promote_after, key)
    now = time.time()
    with store._tx() as db:
        if _running_row(db, name) is not None:
            raise Conflict(f"model {name!r} has a canary running already; stop it first")
        if (db.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, PRODUCTION)).fetchone()
                or [None])[0] != production:
            raise Conflict(f"the production version of {name!r} moved meanwhile; start the canary again")
        cur = db.execute(
            "INSERT INTO canaries (name, version, production, percent, key, promote_after, guards, gate, state,"
            " started_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (name, int(version), int(production), float(percent), key,
             None if promote_after is None else int(promote_after), json.dumps(guards or {}),
             None if gate is None else json.dumps(gate, default=str), RUNNING, now))
        db.execute("INSERT OR REPLACE INTO aliases (name, alias, version, updated_at) VALUES (?,?,?,?)",
                   (name, CANARY, int(version), now))
        db.execute("INSERT INTO alias_history (name, alias, version, at, kind) VALUES (?,?,?,?,?)",
                   (name, CANARY, int(version), now, "set"))
        store._bump(db)
        canary_id = int(cur.lastrowid)
    return canary(store, canary_id)


def end_canary(store: Store, name: str, state: str, reason: str | None = None) -> Canary | None:
    """End ``name``'s running canary as ``promoted``, ``aborted`` or ``stopped``; None if none was running.

    Promotion moves ``production`` to the canary's version in the same transaction (kept in the alias
    history, so a rollback undoes it).
    """
    if state not in ENDINGS:
        raise InvalidInput(f"a canary ends as one of {', '.join(ENDINGS)}, not {state!r}")
    now = time.time()
    with store._tx() as db:
        row = _running_row(db, name)
        if row is None:
            return None
        db.execute("UPDATE canaries SET state = ?, reason = ?, ended_at = ? WHERE id = ?",
                   (state, reason, now, row["id"]))
        db.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", (name, CANARY))
        if state == PROMOTED:
            db.execute("INSERT OR REPLACE INTO aliases (name, alias, version, updated_at) VALUES (?,?,?,?)",
                       (name, PRODUCTION, row["version"], now))
            db.execute("INSERT INTO alias_history (name, alias, version, at, kind) VALUES (?,?,?,?,?)",
                       (name, PRODUCTION, row["version"], now, "canary"))
            # refused at its deploy, passed the gate when the canary started: production now, not "refused"
            db.execute("UPDATE versions SET status = 'registered' WHERE name = ? AND version = ? "
                       "AND status = 'refused'", (name, row["version"]))
        store._bump(db)
        canary_id = int(row["id"])
    return canary(store, canary_id)


def canary(store: Store, canary_id: int) -> Canary:
    row = store._conn().execute("SELECT * FROM canaries WHERE id = ?", (canary_id,)).fetchone()
    return _canary(row)


def current_canary(store: Store, name: str) -> Canary | None:
    """The running canary of ``name``, if any."""
    row = _running_row(store._conn(), name)
    return None if row is None else _canary(row)


def latest_canary(store: Store, name: str) -> Canary | None:
    """The running canary of ``name``, else its most recent one (None if it never had one)."""
    return current_canary(store, name) or next(
        (_canary(r) for r in store._conn().execute(
            "SELECT * FROM canaries WHERE name = ? ORDER BY id DESC LIMIT 1", (name,))), None)


def running_canaries(store: Store) -> list[Canary]:
    """Every running canary (one query on a small table: the server's routers and guards poll it)."""
    return [_canary(r) for r in store._conn().execute("SELECT * FROM canaries WHERE state = ? ORDER BY id",
                                                      (RUNNING,))]


def canaries(store: Store, name: str | None = None) -> list[Canary]:
    """Every canary (of one model, or all), oldest first: the history a timeline marks."""
    query, args = ("SELECT * FROM canaries WHERE name = ? ORDER BY id", (name,)) if name else (
        "SELECT * FROM canaries ORDER BY id", ())
    return [_canary(r) for r in store._conn().execute(query, args)]


def _running_row(db: Any, name: str) -> Any:
    return db.execute("SELECT * FROM canaries WHERE name = ? AND state = ? ORDER BY id DESC LIMIT 1",
                      (name, RUNNING)).fetchone()


def _canary(row: Any) -> Canary:
    gate = row["gate"]
    return Canary(id=int(row["id"]), name=row["name"], version=int(row["version"]), production=int(row["production"]),
                  percent=float(row["percent"]), key=row["key"], promote_after=row["promote_after"],
                  guards=json.loads(row["guards"]), state=row["state"], reason=row["reason"],
                  started_at=float(row["started_at"]), ended_at=row["ended_at"],
                  gate=None if gate is None else json.loads(gate))
