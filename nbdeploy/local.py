"""The model as a library: ``nbdeploy.load(name)`` reads a stored version into ONNX Runtime.

No server, no scikit-learn, no IPython: what it imports is numpy, the standard library, ONNX
Runtime (on the first load) and pandas only when it is handed a DataFrame or records. Inputs are
checked with the signature the endpoint uses, and the outputs are the endpoint's.

``log=True`` puts every call in the store's prediction log, so the monitor sees library traffic
beside the endpoint's.

It checks inputs with the same signature the endpoint uses and answers with the same outputs,
so the promotion gate can judge a stored version exactly as it is served, and a library user
(:func:`nbdeploy.load`) gets what the endpoint would have answered.

Inputs: a DataFrame, records (a list of dicts, or one dict), a dict of columns, or an array.
A model deployed from a DataFrame also takes a 2-D array (or list of rows) whose columns are its
inputs in order, as the endpoint takes one ``[n, n_columns]`` tensor. pandas is imported only
for DataFrames, records and dicts of columns, never for arrays.
"""

from __future__ import annotations

import atexit
import contextlib
import numbers
import os
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from nbdeploy.errors import InvalidInput, NbdeployError
from nbdeploy.serve.probe import nan_refusing_inputs
from nbdeploy.serve.sessions import ort_session, session_runner
from nbdeploy.signature import Signature
from nbdeploy.store import Store, VersionRecord, open_store, version_number

if TYPE_CHECKING:
    from nbdeploy.store.events import EventSink

_NUMBER = (numbers.Number, np.number, np.bool_)


class OnnxPredictor:
    """``predict`` / ``predict_proba`` of one stored model version.

    ``sink`` (optional) receives one ``PredictionEvent`` per call, as the server's log does.
    """

    def __init__(self, onnx_bytes: bytes, meta: dict[str, Any], threads: int = 1, *,
                 sink: EventSink | None = None) -> None:
        self.session = ort_session(onnx_bytes, threads=threads)
        self._run = session_runner(self.session)
        self.name: str = meta.get("name", "model")
        self.version: int | None = meta.get("version")
        self.signature = Signature.from_dict(meta["signature"])
        self.task: str = meta.get("task", "regression")
        self.nbdeploy_task = self.task  # lets nbdeploy.lifecycle.evaluation score it like an estimator
        self.classes_ = np.asarray(meta.get("classes") or [])
        self.outputs: list[str] = [o.name for o in self.session.get_outputs()]
        # float inputs where a missing value makes the model answer NaN: refused, as the server does
        self.no_nan = nan_refusing_inputs(self.signature, self._run)
        self.sink = sink
        self.last_id: str | None = None  # id of the last logged call (feedback uses it; see store.log.row_ids)

    @classmethod
    def from_record(cls, record: VersionRecord, threads: int = 1, *, sink: EventSink | None = None) -> OnnxPredictor:
        """A stored version, refused unless its file is the one registered (sha256)."""
        return cls(record.onnx_bytes(), record.meta, threads, sink=sink)

    # -- the calls -----------------------------------------------------------------------
    def predict(self, X: Any) -> np.ndarray:
        """Class labels, cluster ids or predicted values."""
        return self.run(X, ["label"])["label"]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        if "probabilities" not in self.outputs:
            raise InvalidInput(f"{self.name!r} version {self.version} has no probabilities output "
                               "(predict_proba needs a classifier)")
        return self.run(X, ["probabilities"])["probabilities"]

    def run(self, X: Any, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Named outputs (default: all), as the endpoint's ``/infer`` answers them."""
        wanted = list(outputs or self.outputs)
        unknown = [o for o in wanted if o not in self.outputs]
        if unknown:
            raise InvalidInput(f"unknown output {unknown[0]!r}; this model has outputs: {', '.join(self.outputs)}")
        started = time.perf_counter()
        tensors: dict[str, np.ndarray] = {}
        try:
            tensors = self.tensors(X)
            feeds = self.signature.feeds(tensors, no_nan=self.no_nan)
            results = self._run(feeds)
        except NbdeployError as exc:
            self._log(tensors, {}, started, exc.status, exc.message)
            raise
        self._log(tensors, results, started, 200, None)
        return {o: results[o] for o in wanted}

    # -- user data -> named tensors -------------------------------------------------------
    def tensors(self, X: Any) -> dict[str, np.ndarray]:
        """User data as tensors named by the signature's inputs (the user's column names), checked by
        the one encoder the client and the fidelity check use."""
        return self.signature.encode(X)

    def _log(self, tensors: dict[str, np.ndarray], outputs: dict[str, np.ndarray], started: float,
             status: int, error: str | None) -> None:
        if self.sink is None:
            return
        from nbdeploy.store.events import PredictionEvent

        latency_ms = (time.perf_counter() - started) * 1000.0
        self.last_id = uuid.uuid4().hex
        self.sink.put(PredictionEvent(id=self.last_id, ts=time.time(), model=self.name,
                                      version=int(self.version or 0), inputs=tensors, outputs=outputs,
                                      latency_ms=latency_ms, status=status, error=error))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until logged predictions are written (True when there is nothing to wait for)."""
        flush = getattr(self.sink, "flush", None)
        return bool(flush(timeout)) if flush is not None else True

    @property
    def input_names(self) -> list[str]:
        return self.signature.names

    def __repr__(self) -> str:
        names = self.signature.names
        shown = ", ".join(names[:4]) + (f", … (+{len(names) - 4})" if len(names) > 4 else "")
        logged = ", logged" if self.sink is not None else ""
        return (f"OnnxPredictor(name={self.name!r}, version={self.version}, task={self.task!r}, "
                f"inputs=[{shown}], outputs={self.outputs}{logged})")


_LOGS: dict[str, Any] = {}  # one prediction log (and writer thread) per store (its location) in this process
_LOGS_LOCK = threading.Lock()


def load(name: str, version: int | str | None = None, alias: str | None = None, *,
         home: str | os.PathLike[str] | None = None, log: bool = False) -> OnnxPredictor:
    """An in-process predictor of a stored model version (default: the ``production`` alias).

    ``version`` is a version number; ``alias`` an alias name (``production``, ``staging`` …).
    ``home`` is the store (default ``$NBDEPLOY_HOME`` or ``./.nbdeploy``); none is created. With
    ``log=True`` the predictions go to the store's prediction log, as the endpoint's do.
    """
    store = open_store(home)
    record = store.resolve(name, _ref(version, alias))
    sink = prediction_log(store) if log else None
    return OnnxPredictor.from_record(record, sink=sink)


def _ref(version: int | str | None, alias: str | None) -> int | str | None:
    """``load``'s two keywords as the one reference :meth:`Store.resolve` takes."""
    if version is not None and alias is not None:
        raise InvalidInput("pass a version or an alias, not both")
    if version is not None and version_number(version) is None:
        raise InvalidInput(f"version must be a number, got {version!r} (for an alias, pass alias={version!r})")
    if alias is not None and (not isinstance(alias, str) or version_number(alias) is not None):
        raise InvalidInput(f"alias must be an alias name, got {alias!r} (for a version, pass version={alias!r})")
    return version if version is not None else alias


def prediction_log(store: Store) -> Any:
    """The store's prediction log, shared by every predictor of this process that logs to it."""
    try:
        from nbdeploy.store.log import PredictionLog, registry_profiles
    except ImportError as exc:
        raise NbdeployError(f"log=True needs the prediction log (nbdeploy.store.log), which this installation "
                            f"cannot import ({exc}); load without log=True", 501) from None
    with _LOGS_LOCK:
        sink = _LOGS.get(store.location)
        if sink is None:
            sink = _LOGS[store.location] = PredictionLog(store.location, profiles=registry_profiles(store))
        return sink


@atexit.register
def _close_logs() -> None:
    """Write what is queued before the interpreter exits (the writer is a daemon thread)."""
    with _LOGS_LOCK:
        logs = list(_LOGS.values())
        _LOGS.clear()
    for sink in logs:
        with contextlib.suppress(Exception):  # at exit there is nobody left to tell
            sink.close()
