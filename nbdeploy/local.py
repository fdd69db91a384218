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
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nbdeploy.errors import InvalidInput, NbdeployError, NotFound
from nbdeploy.signature import FLOAT_TYPES, MISSING_STRING, InputSpec, Signature
from nbdeploy.store import PRODUCTION, Store, VersionRecord

if TYPE_CHECKING:
    from nbdeploy.store.events import EventSink

_NUMBER = (numbers.Number, np.number, np.bool_)


class OnnxPredictor:
    """``predict`` / ``predict_proba`` of one stored model version.

    ``sink`` (optional) receives one ``PredictionEvent`` per call, as the server's log does.
    """

    def __init__(self, onnx_bytes: bytes, meta: dict[str, Any], threads: int = 1, *,
                 sink: EventSink | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        self.name: str = meta.get("name", "model")
        self.version: int | None = meta.get("version")
        self.signature = Signature.from_dict(meta["signature"])
        self.task: str = meta.get("task", "regression")
        self.nbdeploy_task = self.task  # lets nbdeploy.lifecycle.evaluation score it like an estimator
        self.classes_ = np.asarray(meta.get("classes") or [])
        self.outputs: list[str] = [o.name for o in self.session.get_outputs()]
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
            feeds = self.signature.feeds(tensors)
            names = self.outputs if self.sink is not None else wanted  # the log keeps every output
            results = dict(zip(names, self.session.run(names, feeds), strict=True))
        except NbdeployError as exc:
            self._log(tensors, {}, started, exc.status, exc.message)
            raise
        self._log(tensors, results, started, 200, None)
        return {o: results[o] for o in wanted}

    # -- user data -> named tensors -------------------------------------------------------
    def tensors(self, X: Any) -> dict[str, np.ndarray]:
        """User data as tensors named by the signature's inputs (the user's column names)."""
        sig = self.signature
        if isinstance(X, Mapping) and X and all(np.ndim(v) == 0 for v in X.values()):
            X = [dict(X)]  # one record
        if isinstance(X, np.ndarray) or (isinstance(X, (list, tuple)) and not _records(X)):
            if not sig.frame:
                arr = np.asarray(X)
                return {sig.inputs[0].name: _column(sig.inputs[0], arr if arr.ndim != 1 else arr.reshape(1, -1))}
            return _split(sig, X)
        return sig.tensors_of(X)  # DataFrame, records, dict of columns: pandas, imported here only

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


def _records(X: list[Any] | tuple[Any, ...]) -> bool:
    return len(X) > 0 and isinstance(X[0], Mapping)


def _split(sig: Signature, X: Any) -> dict[str, np.ndarray]:
    """A 2-D array or list of rows whose columns are the signature's inputs, in order."""
    arr = X if isinstance(X, np.ndarray) else np.array(X, dtype=object)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != len(sig.inputs):
        raise InvalidInput(f"this model takes {len(sig.inputs)} columns ({', '.join(sig.names)}); "
                           f"got an array of shape {list(arr.shape)}")
    return {spec.name: _column(spec, arr[:, i]) for i, spec in enumerate(sig.inputs)}


def _column(spec: InputSpec, values: np.ndarray) -> np.ndarray:
    """Object and text arrays made into what :meth:`Signature.feeds` checks, without pandas.

    Text inputs become ``str`` arrays (missing -> the sentinel); object arrays holding only numbers
    (and ``None`` -> NaN for float inputs) become numeric arrays; anything else is left for the
    signature to refuse with its usual message.
    """
    if spec.datatype == "BYTES":
        if values.dtype.kind not in "OUS":
            return values
        flat = [_text(v) for v in values.ravel().tolist()]
        return np.array(flat, dtype=str).reshape(values.shape) if flat else values.astype(str)
    if values.dtype.kind != "O":
        return values
    flat = values.ravel().tolist()
    if not all(v is None or isinstance(v, _NUMBER) for v in flat):
        return values
    if any(v is None for v in flat):
        if spec.datatype not in FLOAT_TYPES:
            raise InvalidInput(f"input {spec.name!r}: missing values (None) are not accepted for {spec.datatype}")
        flat = [np.nan if v is None else v for v in flat]
    return np.array(flat).reshape(values.shape)


def _text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if v is None or (isinstance(v, float) and v != v):
        return MISSING_STRING
    return str(v)


Predictor = OnnxPredictor

_LOGS: dict[Path, Any] = {}  # one prediction log (and writer thread) per store home in this process
_LOGS_LOCK = threading.Lock()


def load(name: str, version: int | str | None = None, alias: str | None = None, *,
         home: str | os.PathLike[str] | None = None, log: bool = False) -> OnnxPredictor:
    """An in-process predictor of a stored model version (default: the ``production`` alias).

    ``version`` is a version number; ``alias`` an alias name (``production``, ``staging`` …).
    ``home`` is the store (default ``$NBDEPLOY_HOME`` or ``./.nbdeploy``). With ``log=True`` the
    predictions go to the store's prediction log, as the endpoint's do.
    """
    store = open_store(home)
    record = resolve(store, name, version, alias)
    sink = prediction_log(store) if log else None
    return OnnxPredictor.from_record(record, sink=sink)


def open_store(home: str | os.PathLike[str] | None) -> Store:
    """The store at ``home``, refusing to create one where there is none."""
    path = Path(home or os.environ.get("NBDEPLOY_HOME") or ".nbdeploy").resolve()
    if not (path / "nbdeploy.db").is_file():
        raise NotFound(f"no nbdeploy store at {path} (pass home=, or set NBDEPLOY_HOME)")
    return Store(path)


def resolve(store: Store, name: str, version: int | str | None = None, alias: str | None = None) -> VersionRecord:
    """The stored version a (version, alias) pair names; both ``None`` means ``production``."""
    store.require_model(name)
    if version is not None and alias is not None:
        raise InvalidInput("pass a version or an alias, not both")
    if version is not None:
        if isinstance(version, bool) or not str(version).isdigit():
            raise InvalidInput(f"version must be a number, got {version!r} (for an alias, pass alias={version!r})")
        return store.version(name, int(version))
    aliases = store.aliases(name)
    wanted = alias or PRODUCTION
    if wanted not in aliases:
        versions = ", ".join(str(v.version) for v in store.versions(name)) or "none"
        known = ", ".join(sorted(aliases)) or "none"
        raise NotFound(f"model {name!r} has no {wanted!r} alias (aliases: {known}); "
                       f"pass a version number (versions: {versions})")
    return store.version(name, aliases[wanted])


def prediction_log(store: Store) -> Any:
    """The store's prediction log, shared by every predictor of this process that logs to it."""
    try:
        from nbdeploy.store.log import PredictionLog, registry_profiles
    except ImportError as exc:
        raise NbdeployError(f"log=True needs the prediction log (nbdeploy.store.log), which this installation "
                            f"cannot import ({exc}); load without log=True", 501) from None
    with _LOGS_LOCK:
        sink = _LOGS.get(store.home)
        if sink is None:
            sink = _LOGS[store.home] = PredictionLog(store.home, profiles=registry_profiles(store))
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
