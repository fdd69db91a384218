"""The handle on a served model name: call it, inspect it, stop it. Properties read the store."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from nbdeploy import client
from nbdeploy.errors import InvalidInput, NbdeployError, NotFound, Unavailable
from nbdeploy.serve import process
from nbdeploy.serve.security import read_token
from nbdeploy.signature import Signature
from nbdeploy.store import PRODUCTION, Store
from nbdeploy.store.batch import row_ids

if TYPE_CHECKING:  # only the types: a handle needs neither the converter nor scikit-learn
    from nbdeploy.convert.fidelity import FidelityReport
    from nbdeploy.lifecycle.gate import GateDecision

FEEDBACK_CHUNK = 10_000  # labels per request, well under the body limit
REQUEST_BYTES = 1 << 20  # predictions go in requests of about this size, well under the server's 4 MiB default


@dataclass
class Deployment:
    """A model name served from a store. Properties read the store, so a handle stays current.

    A handle opens its store once (one SQLite connection per thread) and finds the server through
    the store's record of it: a request costs a few indexed reads, and the server is asked whether
    it is up only by :attr:`status`, or when a request to it fails.
    """

    name: str
    home: str
    fidelity: FidelityReport | None = None
    timings: dict[str, float] = field(default_factory=dict)
    gate: GateDecision | None = None  # the promotion gate's decision, when this handle came from one
    _opened: tuple[int, Store] | None = field(default=None, init=False, repr=False, compare=False)
    _versions: dict[int, tuple[dict[str, Any], Signature]] = field(
        default_factory=dict, init=False, repr=False, compare=False)  # stored versions never change

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_opened": None}  # a Store holds connections: reopen after unpickling

    @property
    def _store(self) -> Store:
        pid = os.getpid()  # a forked process must not share the parent's SQLite connection
        if self._opened is None or self._opened[0] != pid:
            self._opened = (pid, Store(self.home))
        return self._opened[1]

    @property
    def version(self) -> int | None:
        """The version the endpoint serves by default (the ``production`` alias)."""
        return self._store.aliases(self.name).get(PRODUCTION)

    @property
    def server_url(self) -> str | None:
        """Where the store's server listens, from its record (the process is alive; not asked over HTTP)."""
        record = process.recorded_server(self._store)
        return record.url if record else None

    @property
    def url(self) -> str | None:
        base = self.server_url
        return f"{base}/v2/models/{self.name}" if base else None

    @property
    def status(self) -> str:
        """``ready``, ``starting``, ``stopped``, ``server down`` or ``failed: …``; asks the server."""
        store = self._store
        if self.name not in store.serving_models():
            return "stopped"
        record = process.running_server(store)
        if record is None:
            return "server down"
        state = store.served().get((self.name, self.version or -1))
        if state is None:
            return "starting"
        return state[0] if state[1] is None else f"failed: {state[1]}"

    @property
    def signature(self) -> Signature:
        return self._production()[1]

    def _meta(self) -> dict[str, Any]:
        return self._production()[0]

    def _production(self) -> tuple[dict[str, Any], Signature]:
        version = self.version
        if version is None:
            raise NotFound(f"model {self.name!r} has no production version")
        known = self._versions.get(version)
        if known is None:
            meta = self._store.version(self.name, version).meta
            known = self._versions[version] = (meta, Signature.from_dict(meta["signature"]))
        return known

    def _post(self, action: str, payload: Any) -> Any:
        """POST to this model's ``action`` route at the recorded server; only when that fails, ask
        whether a server is up (a restarted one may listen elsewhere) and say so if none is."""
        store = self._store
        record = process.recorded_server(store)
        if record is None:
            raise self._not_running()
        token = read_token(store.home)  # a server bound beyond loopback wants its store's token
        try:
            return client.post_json(f"{record.url}/v2/models/{self.name}/{action}", payload, token=token)
        except Unavailable:
            live = process.running_server(store)
            if live is None:
                raise self._not_running() from None
            if live.url == record.url:
                raise
        return client.post_json(f"{live.url}/v2/models/{self.name}/{action}", payload, token=token)

    def _not_running(self) -> NbdeployError:
        return Unavailable(f"the server for {self.name!r} is not running; serve it again with "
                           f"nbdeploy.get({self.name!r}).serve() (%deploy serve {self.name})")

    def _infer(self, X: Any, outputs: list[str],
               progress: bool | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
        """The outputs, and one prediction id per row: the keys the server logged the requests under.

        Inputs too large for one request go in several, each about :data:`REQUEST_BYTES`, one after
        another over one kept-alive connection (:func:`nbdeploy.client.infer_in_requests`); the answers
        are put back together in the order of the rows.
        """
        signature = self.signature
        tensors = signature.encode(X)  # every value checked here, before anything is sent
        rows = client.rows_of(tensors)
        chunk = client.rows_per_request(signature, tensors, REQUEST_BYTES)
        if rows > chunk:  # and categories a strict encoder refuses, before the first of several requests
            signature.feeds(tensors)
        if rows <= chunk:
            wanted = [{"name": o} for o in outputs]
            try:
                answer = self._post("infer", {"inputs": client.v2_tensors(signature, tensors), "outputs": wanted})
                return client.outputs_by_name(answer), row_ids(client.prediction_key(answer), rows)
            except NbdeployError as exc:
                if exc.status != 413 or rows == 1:
                    raise
                chunk = max(1, rows // 2)  # the server takes less than the default: send halves
        record = process.recorded_server(self._store)
        if record is None:
            raise self._not_running()
        answers, keys = client.infer_in_requests(
            record.url, f"/v2/models/{self.name}/infer", signature, tensors, outputs, rows_per_request=chunk,
            token=read_token(self._store.home), progress=progress)
        return answers, [i for key, n in keys for i in row_ids(key, n)]

    def predict(self, X: Any, *, return_ids: bool = False, progress: bool | None = None) -> Any:
        """Labels (classifiers, clusterers) or values (regressors), through the HTTP endpoint.

        With ``return_ids=True``, ``(labels, ids)``: one prediction id per row, made by the server
        (unique, whatever else calls the endpoint), for :meth:`feedback`.

        Large inputs go in requests of about 1 MB, one after another. ``progress``: a progress bar (a
        widget in notebooks) for inputs that take several requests — ``None`` (default) shows it once
        the run has taken 2 s, ``True`` at once, ``False`` never. A request that fails raises an error
        naming its rows (``error.rows``); nothing is returned then, so no row is silently missing.
        """
        outputs, ids = self._infer(X, ["label"], progress)
        return (outputs["label"], ids) if return_ids else outputs["label"]

    def feedback(self, ids: Any, y_true: Any) -> dict[str, Any]:
        """Ground truth for earlier predictions (``ids`` from ``predict(..., return_ids=True)``).

        The server answers once the labels are committed. Sending a label again is harmless; a
        different label for an id replaces the earlier one. Raises when any label was not recorded
        (the others were), saying which and why.
        """
        ids = [str(i) for i in np.asarray(ids, dtype=object).reshape(-1)]
        labels = [v.item() if isinstance(v, np.generic) else v for v in np.asarray(y_true, dtype=object).reshape(-1)]
        if len(ids) != len(labels):
            raise InvalidInput(f"{len(ids)} ids but {len(labels)} labels")
        total: dict[str, Any] = {"accepted": 0, "updated": 0, "unchanged": 0, "errors": []}
        for start in range(0, len(ids), FEEDBACK_CHUNK):
            items = [{"id": i, "label": y} for i, y in zip(ids[start:start + FEEDBACK_CHUNK],
                                                            labels[start:start + FEEDBACK_CHUNK], strict=True)]
            result = self._post("feedback", items)
            for key in ("accepted", "updated", "unchanged"):
                total[key] += result[key]
            total["errors"] += [{**e, "index": e["index"] + start} for e in result["errors"]]
        if total["errors"]:
            first = total["errors"][0]
            raise NbdeployError(f"{len(total['errors'])} of {len(ids)} labels were not recorded (the others were): "
                                f"id {first['id']!r}: {first['error']}", first["status"])
        return total

    def monitor(self, *, interval: float = 3.0, sidecar: bool = False, since: Any = None, window: Any = None,
                **options: Any) -> Any:
        """The live monitor: status, traffic, latency, quality against the baseline, drift, and the model's
        timeline (its deploys, retrains, promotions, rollbacks, canaries and alerts marked on every chart).

        Display it (it is the cell's result); each display keeps, in the saved notebook, the state at the
        end of its cell; ``.stop()`` or its Stop button ends the updates. The charts start at the first
        deploy, or at ``since`` (a time), or ``window`` seconds back. ``sidecar=True`` docks it in a
        JupyterLab side panel (``pip install sidecar``). ``options`` go to
        :class:`nbdeploy.monitor.live.Monitor` (``thresholds``, ``drift_thresholds``, ``on_alert``
        callback, window sizes). The widget records no alerts: the server judges the levels it keeps in the
        store (``nbdeploy.alerts``), notebook open or not; ``on_alert`` is the kernel's own callback.
        """
        from nbdeploy.display.monitor import monitor_widget
        from nbdeploy.monitor.live import Monitor
        from nbdeploy.monitor.timeline import Timeline

        if not interval > 0:
            raise InvalidInput(f"interval must be a positive number of seconds, got {interval}")
        store = self._store
        store.require_model(self.name)
        timeline = Timeline(store, self.name, since=since, window=window)
        return monitor_widget(Monitor(store.location, self.name, store=store, timeline=timeline, **options),
                              interval=interval, sidecar=sidecar)

    def health(self) -> dict[str, Any]:
        """One monitor snapshot as a dict (what the widget and ``/metrics`` show); ``estimated`` (quality
        estimated before labels arrive) without its per-window series."""
        from nbdeploy.monitor.live import Monitor

        store = self._store
        snap = Monitor(store.location, self.name, store=store).snapshot()
        if snap.get("estimated") is not None:
            snap["estimated"] = {k: v for k, v in snap["estimated"].items() if k != "series"}
        return snap

    def predict_proba(self, X: Any, *, progress: bool | None = None) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes``, through the HTTP endpoint
        (large inputs and ``progress`` as in :meth:`predict`)."""
        if self._meta().get("task") != "classification":
            raise InvalidInput(f"{self.name!r} is not a classifier: predict_proba needs class probabilities")
        return self._infer(X, ["probabilities"], progress)[0]["probabilities"]

    @property
    def classes(self) -> list[Any] | None:
        return self._meta().get("classes")

    def curl(self) -> str:
        """A copy-paste ``curl`` call of the endpoint with one example row."""
        example = {"inputs": self._meta().get("example", [])}
        import json

        return (f"curl -s -X POST {self.url}/infer -H 'Content-Type: application/json' "
                f"-d '{json.dumps(example)}'")

    def serve(self, port: int | None = None) -> Deployment:
        """Serve this model again after :meth:`stop` (its production version), starting the store's
        server when none runs (on ``port``, else a free one); returns once the server has it ready."""
        store = self._store
        version = self.version
        if version is None:
            raise InvalidInput(f"{self.name!r} has no production version to serve; promote one first "
                               f"(%deploy promote {self.name} VERSION)")
        store.set_serving(self.name, True)
        generation = store.generation()
        process.ensure_server(store, port)
        process.wait_applied(store, generation)
        state, error = store.served().get((self.name, version), ("missing", "the server did not load it"))
        if state != "ready":
            raise NbdeployError(f"the server could not load {self.name!r} version {version}: {error}", 500)
        return self

    def stop(self) -> None:
        """Stop serving this model; the server exits when it serves nothing else. :meth:`serve` undoes it."""
        store = self._store
        store.set_serving(self.name, False)
        if not store.serving_models():
            process.stop_server(store)
        elif process.running_server(store):
            process.wait_applied(store, store.generation())

    def info(self) -> dict[str, Any]:
        from nbdeploy.serve.urls import public_url

        meta = self._meta() if self.version is not None else {}
        url = self.url
        curl = self.curl() if url and meta else None
        # On a remote Jupyter the browser reaches the endpoint through jupyter-server-proxy only.
        browser = public_url(url) if url else None
        browser = browser if browser != url else None
        browser_curl = None
        if browser and curl and url:
            origin = "" if browser.startswith("http") else "https://YOUR-JUPYTER-HOST"
            browser_curl = (curl.replace(url, origin + browser, 1)
                            + " -H 'Authorization: token YOUR-JUPYTER-TOKEN'")
        return {
            "name": self.name, "version": self.version, "status": self.status, "url": url,
            "browser_url": browser, "curl": curl, "browser_curl": browser_curl, "task": meta.get("task"),
            "signature": meta.get("signature"), "fidelity": meta.get("fidelity"), "timings": self.timings,
            "gated": meta.get("gated", False), "metrics": meta.get("metrics"),
        }

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        from nbdeploy.display.card import card_bundle

        return card_bundle(self.info())

    def __repr__(self) -> str:
        return f"Deployment(name={self.name!r}, version={self.version}, url={self.url!r}, status={self.status!r})"
