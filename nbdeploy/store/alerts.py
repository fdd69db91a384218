"""Alerts as the store keeps them: one row per raised alert, per model, with where it came from.

The one home of alerts for everything that shows or sends them: the monitor's timeline marks them,
the webhook sender delivers each row once (``delivered_at``), ``nbdeploy.alerts(name)`` lists them.
A row is written by whoever judged the level (the server's monitor, a canary guard) and never changed
afterwards, except for its delivery bookkeeping.

A model's webhook (``webhooks`` table) receives the alerts raised after it was set: setting it again
(another URL) starts afresh, so a new receiver is not flooded with old alerts. Webhook URLs often hold
a secret (a chat tool's token in the path): only :func:`redact` forms are shown or logged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from nbdeploy.errors import InvalidInput
from nbdeploy.store.registry import Store, check_name

LEVELS = ("OK", "WARN", "ALERT")
DELIVERY_ATTEMPTS = 5  # a row still undelivered after this many POSTs is given up (its last error stays)
MAX_URL_LENGTH = 2048
WEBHOOK_SCHEMES = ("http", "https")


@dataclass(frozen=True)
class Alert:
    id: int
    name: str
    at: float
    level: str  # "OK" (a recovery), "WARN" or "ALERT"
    reasons: list[str]
    source: str  # "monitor", "canary", ...
    detail: dict[str, Any] = field(default_factory=dict)
    delivered_at: float | None = None
    attempts: int = 0
    last_error: str | None = None

    @property
    def delivery(self) -> str:
        """``sent``, ``failed`` (given up after :data:`DELIVERY_ATTEMPTS`), ``retrying`` or ``""`` (not sent:
        no webhook, or not yet)."""
        if self.delivered_at is not None:
            return "sent"
        if self.attempts >= DELIVERY_ATTEMPTS:
            return "failed"
        return "retrying" if self.attempts else ""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "at": self.at, "level": self.level, "reasons": list(self.reasons),
                "source": self.source, "detail": dict(self.detail), "delivered_at": self.delivered_at,
                "attempts": self.attempts, "last_error": self.last_error, "delivery": self.delivery}


@dataclass(frozen=True)
class Webhook:
    name: str
    url: str
    since: float  # when it was set: it receives the alerts raised from then on


def record_alert(store: Store, name: str, level: str, reasons: list[str], source: str, *,
                 detail: dict[str, Any] | None = None, at: float | None = None) -> Alert:
    """Keep one alert of model ``name``; returns it with its id."""
    check_name(name)
    if level not in LEVELS:
        raise InvalidInput(f"alert level {level!r} is not one of {', '.join(LEVELS)}")
    at = time.time() if at is None else float(at)
    body = json.dumps(detail or {}, default=str)
    with store._tx() as db:
        cur = db.execute("INSERT INTO alerts (name, at, level, reasons, source, detail) VALUES (?,?,?,?,?,?)",
                         (name, at, level, json.dumps([str(r) for r in reasons]), source, body))
        alert_id = int(cur.lastrowid)
    return Alert(alert_id, name, at, level, [str(r) for r in reasons], source, detail or {})


def alerts(store: Store, name: str | None = None, *, since: float | None = None, undelivered: bool = False,
           source: str | None = None, limit: int | None = None) -> list[Alert]:
    """Alerts in the order they were raised (of one model, or all), optionally only newer than ``since``,
    not yet delivered (nor given up), or from one ``source``; ``limit`` keeps the latest ones."""
    where: list[str] = []
    args: list[Any] = []
    if name is not None:
        where.append("name = ?")
        args.append(name)
    if since is not None:
        where.append("at >= ?")
        args.append(float(since))
    if undelivered:
        where.append("delivered_at IS NULL AND attempts < ?")
        args.append(DELIVERY_ATTEMPTS)
    if source is not None:
        where.append("source = ?")
        args.append(source)
    query = "SELECT * FROM alerts" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC"
    if limit is not None:
        query += f" LIMIT {int(limit)}"
    rows = store._conn().execute(query, args).fetchall()
    return [_alert(r) for r in reversed(rows)]


def mark_delivery(store: Store, alert_id: int | Iterable[int], *, delivered: bool, error: str | None = None) -> None:
    """Record one delivery attempt of an alert, or of several sent together (successful or not)."""
    ids = [alert_id] if isinstance(alert_id, int) else list(alert_id)
    now = time.time()
    with store._tx() as db:  # ``? = 1``: PostgreSQL's CASE WHEN takes a boolean, not a number
        db.executemany("UPDATE alerts SET attempts = attempts + 1, last_error = ?, "
                       "delivered_at = CASE WHEN ? = 1 THEN ? ELSE delivered_at END WHERE id = ?",
                       [(None if delivered else error, int(delivered), now, i) for i in ids])


def check_webhook_url(url: Any) -> str:
    """``url`` when it is an absolute http(s) URL with a host; else a clear :class:`InvalidInput`."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidInput(f"a webhook is an http:// or https:// URL, got {url!r}")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH or any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise InvalidInput("a webhook URL holds no spaces or control characters and is at most "
                           f"{MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        host, _ = parts.hostname, parts.port  # .port raises on a port that is not a number
    except ValueError as exc:
        raise InvalidInput(f"the webhook URL cannot be read: {exc}") from None
    if parts.scheme.lower() not in WEBHOOK_SCHEMES:
        shown = f"got {parts.scheme}:" if parts.scheme else "this one has no scheme"
        raise InvalidInput(f"a webhook must be an http:// or https:// URL ({shown})")
    if not host:
        raise InvalidInput("the webhook URL names no host (expected https://host/path)")
    return url


def redact(url: str) -> str:
    """``https://hooks.example.com/…``: the scheme, host and port of ``url`` (paths and queries may hold secrets)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    rest = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def set_webhook(store: Store, name: str, url: str | None) -> Webhook | None:
    """Send model ``name``'s alerts to ``url`` (JSON POST) from now on; ``None`` stops sending them.
    Only http:// and https:// URLs are accepted."""
    store.require_model(name)
    if url is None:
        with store._tx() as db:
            db.execute("DELETE FROM webhooks WHERE name = ?", (name,))
        return None
    url = check_webhook_url(url)
    now = time.time()
    with store._tx() as db:
        db.execute("INSERT OR REPLACE INTO webhooks (name, url, updated_at) VALUES (?,?,?)", (name, url, now))
    return Webhook(name, url, now)


def webhooks(store: Store) -> dict[str, str]:
    """Model name -> webhook URL, for every model that has one."""
    return {r[0]: r[1] for r in store._conn().execute("SELECT name, url FROM webhooks ORDER BY name")}


def webhook(store: Store, name: str) -> Webhook | None:
    """Model ``name``'s webhook, with when it was set; ``None`` when it has none."""
    row = store._conn().execute("SELECT name, url, updated_at FROM webhooks WHERE name = ?", (name,)).fetchone()
    return Webhook(row[0], row[1], float(row[2])) if row else None


def pending(store: Store) -> dict[Webhook, list[Alert]]:
    """What webhooks still have to send: each webhook's undelivered alerts raised since it was set,
    not yet given up, oldest first (webhooks with nothing to send are left out)."""
    out: dict[Webhook, list[Alert]] = {}
    for name in webhooks(store):
        hook = webhook(store, name)
        if hook is None:  # cleared meanwhile
            continue
        waiting = alerts(store, name, since=hook.since, undelivered=True)
        if waiting:
            out[hook] = waiting
    return out


def _alert(row: Any) -> Alert:
    return Alert(id=int(row["id"]), name=row["name"], at=float(row["at"]), level=row["level"],
                 reasons=json.loads(row["reasons"]), source=row["source"], detail=json.loads(row["detail"]),
                 delivered_at=row["delivered_at"], attempts=int(row["attempts"]), last_error=row["last_error"])
