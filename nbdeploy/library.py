"""The model as a library: ``nbdeploy.load(name)`` reads a stored version into ONNX Runtime.

No server, no scikit-learn, no IPython: what it imports is numpy, the standard library, ONNX
Runtime (on the first load) and pandas only when it is handed a DataFrame or records. Inputs are
checked with the signature the endpoint uses, and the outputs are the endpoint's.

``log=True`` puts every call in the store's prediction log, so the monitor sees library traffic
beside the endpoint's.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
from pathlib import Path
from typing import Any

from nbdeploy.errors import InvalidInput, NbdeployError, NotFound
from nbdeploy.predictor import OnnxPredictor
from nbdeploy.store import PRODUCTION, Store, VersionRecord

Predictor = OnnxPredictor

_LOGS: dict[Path, Any] = {}  # one prediction log (and writer thread) per store home in this process
_LOGS_LOCK = threading.Lock()


def load(name: str, version: int | str | None = None, alias: str | None = None, *,
         home: str | os.PathLike[str] | None = None, log: bool = False) -> Predictor:
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
