"""The server as the one judge of alerts: level changes recorded in the store, then sent to webhooks.

Two daemon threads per server, whether or not a notebook is open:

* the **judge** takes a monitor snapshot of each served model every ``alert_interval`` seconds (the
  same snapshot as ``/metrics`` and the widget) and records an alert (source ``monitor``) when the
  model's level differs from its last recorded one: ``WARN``/``ALERT`` with the reasons, ``OK`` as
  a recovery. The last level is read from the store, so a restarted server does not record again
  what it recorded before;
* the **sender** delivers pending alerts to webhooks (:mod:`nbdeploy.serve.webhooks`), woken by the
  judge and every second for retries and for alerts other parts recorded (a canary guard).

With several worker processes (``--workers N``) only the live worker with the lowest pid judges
and sends, so nothing is recorded or sent twice; when it dies the next one takes over.

The kernel records nothing: its monitor widget and ``on_alert`` callback are for the notebook.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from nbdeploy.serve import rounds
from nbdeploy.serve.monitoring import ServerMonitors
from nbdeploy.serve.process import pid_alive
from nbdeploy.serve.urls import public_url
from nbdeploy.serve.webhooks import Deliverer, DeliveryPolicy
from nbdeploy.store import Store
from nbdeploy.store.alerts import Alert, alerts, record_alert

log = logging.getLogger("nbdeploy.server")
SOURCE = "monitor"
SEND_TICK_S = 1.0  # how often the sender looks for retries that fell due and alerts recorded elsewhere


class Alerting:
    """Judge and sender for one server process; ``start``/``stop`` from the app's lifespan.

    ``monitors`` is the server's :class:`ServerMonitors` (shared with ``/metrics``), ``None`` when the
    server keeps no prediction log: then nothing is judged, and alerts recorded by others are still sent.
    ``workers``: the server runs several worker processes (this is one of them).
    """

    def __init__(self, store: Store, interval: float, *, monitors: ServerMonitors | None = None,
                 workers: bool = False, policy: DeliveryPolicy | None = None) -> None:
        self.store, self.interval, self.monitors, self.workers = store, interval, monitors, workers
        self.deliverer = Deliverer(store, policy, self._server_urls)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- who judges -------------------------------------------------------------------------
    def is_judge(self) -> bool:
        """This process judges and sends: the only one, or the live worker with the lowest pid."""
        if not self.workers:
            return True
        live = [pid for pid in self.store.workers() if pid_alive(pid)]
        return bool(live) and os.getpid() == min(live)

    # -- the judge ------------------------------------------------------------------------------
    def judge(self) -> list[Alert]:
        """Snapshot each served model; record the levels that changed. Returns what was recorded."""
        if self.monitors is None:
            return []
        recorded = []
        for snap in self.monitors.snapshots(self.store.serving_models()):
            name, status = snap["model"], snap["alert"]
            last = alerts(self.store, name, source=SOURCE, limit=1)
            previous = last[-1].level if last else "OK"
            if status["level"] == previous:
                continue
            reasons = status["reasons"] if status["level"] != "OK" else [f"back to OK from {previous}"]
            detail = {"version": snap["version"], "previous": previous, "components": status["components"]}
            recorded.append(record_alert(self.store, name, status["level"], reasons, SOURCE, detail=detail))
            log.warning("alert: %s is %s (was %s)%s", name, status["level"], previous,
                        f": {'; '.join(reasons)}" if status["level"] != "OK" else "")
        if recorded:
            self._wake.set()
        return recorded

    def _server_urls(self) -> tuple[str | None, str | None]:
        record = self.store.server()
        if record is None:
            return None, None
        public = public_url(record.url)
        return record.url, public if public.startswith(("http://", "https://")) else None

    # -- threads --------------------------------------------------------------------------------
    def start(self) -> None:
        for target, name in ((self._judging, "nbdeploy-alert-judge"), (self._sending, "nbdeploy-alert-sender")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop both threads (a POST in flight ends within the delivery timeout)."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _judging(self) -> None:
        while not self._stop.wait(self.interval):
            self._guarded(self.judge, "cannot judge alert levels")

    def _sending(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(SEND_TICK_S)
            self._wake.clear()
            if not self._stop.is_set():
                self._guarded(self.deliverer.deliver, "cannot send alerts")

    def _guarded(self, step: Any, failure: str) -> None:
        """Run ``step`` when this process judges; keep going whatever one round raises."""
        try:
            if self.is_judge():
                step()
        except Exception:
            rounds.failed(failure)
