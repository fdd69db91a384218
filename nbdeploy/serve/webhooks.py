"""Sending stored alerts to webhooks: a JSON POST per model, retried with backoff, rate limited.

:meth:`Deliverer.deliver` sends what the store says is pending (:func:`nbdeploy.store.alerts.pending`):

* **Rate limit**: at most one POST per model every ``min_gap_s``. Alerts raised meanwhile wait and go
  together in the next POST: its top-level fields are the latest alert (the model's state now), its
  ``alerts`` list every alert it carries, oldest first (the last ``max_batch``; ``more`` counts the
  older ones left out).
* **Retries**: a POST that fails (no answer within ``timeout_s``, a connection error, an answer that
  is not 2xx; redirects are not followed) is tried again after ``backoff_s``, then twice as long each
  time, and not before the rate limit allows: with the defaults after 10, 10, 16 and 32 s. After
  :data:`~nbdeploy.store.alerts.DELIVERY_ATTEMPTS` attempts an alert is given up; its last error stays in
  the store. Every attempt is recorded (:func:`~nbdeploy.store.alerts.mark_delivery`).

Standard-library HTTP only, in the caller's thread (the server's alerting thread): a slow receiver
delays other webhooks by at most ``timeout_s`` and never a request.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nbdeploy._version import __version__
from nbdeploy.store import Store
from nbdeploy.store.alerts import Alert, Webhook, mark_delivery, pending, redact

log = logging.getLogger("nbdeploy.server")


@dataclass(frozen=True)
class DeliveryPolicy:
    timeout_s: float = 5.0
    """A POST not answered within this (connecting, sending, reading) has failed."""
    backoff_s: float = 4.0
    """The wait before the first retry; each later retry waits twice as long."""
    min_gap_s: float = 10.0
    """At most one POST per model this often; alerts raised in between go together."""
    max_batch: int = 20
    """Most alerts listed in one POST (older ones are counted in ``more``)."""


def iso(at: float) -> str:
    """``2026-12-04T08:15:02Z``: a Unix time as UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def payload(waiting: list[Alert], server: str | None = None, public: str | None = None,
            max_batch: int = DeliveryPolicy.max_batch) -> dict[str, Any]:
    """The JSON body for one model's ``waiting`` alerts (oldest first): the latest on top, all listed.

    ``server`` is the server's own URL; ``public`` the one a browser uses (they differ behind a Jupyter
    proxy): the links are built on it.
    """
    latest = waiting[-1]
    shown = waiting[-max_batch:]
    base = public or server
    reasons = "; ".join(latest.reasons)
    return {
        "model": latest.name,
        "level": latest.level,
        "reasons": list(latest.reasons),
        "source": latest.source,
        "time": iso(latest.at),
        "timestamp": latest.at,
        "version": latest.detail.get("version"),
        "id": latest.id,
        "server": server,
        "links": {"model": f"{base}/v2/models/{latest.name}", "metrics": f"{base}/metrics"} if base else {},
        "text": f"nbdeploy: {latest.name} is {latest.level}" + (f": {reasons}" if reasons else ""),
        "alerts": [{"id": a.id, "level": a.level, "reasons": list(a.reasons), "source": a.source, "time": iso(a.at)}
                   for a in shown],
        "more": len(waiting) - len(shown),
    }


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer that is not 2xx: urllib would turn the POST into a GET without its body."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def post(url: str, body: dict[str, Any], timeout: float) -> str | None:
    """POST ``body`` as JSON to ``url``; ``None`` when a 2xx answer came, else why not (no URL in it)."""
    request = urllib.request.Request(url, data=json.dumps(body, default=str).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": f"nbdeploy/{__version__}"})
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            answer.read(65536)  # a receiver may wait for us to read before it closes
            return None
    except urllib.error.HTTPError as exc:
        exc.close()
        return f"HTTP {exc.code}" + (f" {exc.reason}" if exc.reason else "")
    except urllib.error.URLError as exc:
        return f"cannot connect: {exc.reason}"
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except (OSError, ValueError, http.client.HTTPException) as exc:  # a reset, a garbled answer
        return f"{type(exc).__name__}: {exc}"


class Deliverer:
    """Sends each model's pending alerts to its webhook; keeps the rate limit and backoff in memory.

    ``server_urls`` returns the server's own URL and the browser's (or ``(None, None)``).
    """

    def __init__(self, store: Store, policy: DeliveryPolicy | None = None,
                 server_urls: Callable[[], tuple[str | None, str | None]] | None = None) -> None:
        self.store = store
        self.policy = policy or DeliveryPolicy()
        self.server_urls = server_urls or (lambda: (None, None))
        self._last_post: dict[str, float] = {}  # model -> when its last POST went out (monotonic)
        self._retry_at: dict[str, float] = {}  # model -> not before this after a failure (monotonic)

    def deliver(self, now: float | None = None) -> int:
        """Send what is due; returns how many POSTs were made."""
        sent = 0
        for hook, waiting in pending(self.store).items():
            moment = time.monotonic() if now is None else now
            if moment < self.next_post(hook.name):
                continue
            self._send(hook, waiting, moment)
            sent += 1
        return sent

    def next_post(self, name: str) -> float:
        """The earliest time (monotonic) a POST for ``name`` may go out."""
        return max(self._last_post.get(name, -math.inf) + self.policy.min_gap_s, self._retry_at.get(name, -math.inf))

    def _send(self, hook: Webhook, waiting: list[Alert], now: float) -> None:
        server, public = self.server_urls()
        error = post(hook.url, payload(waiting, server, public, self.policy.max_batch), self.policy.timeout_s)
        self._last_post[hook.name] = now
        mark_delivery(self.store, [a.id for a in waiting], delivered=error is None, error=error)
        if error is None:
            self._retry_at.pop(hook.name, None)
            return
        attempts = max(a.attempts for a in waiting) + 1
        self._retry_at[hook.name] = now + self.policy.backoff_s * 2 ** (attempts - 1)
        log.warning("alert webhook of %s (%s) failed, attempt %d: %s", hook.name, redact(hook.url), attempts, error)
