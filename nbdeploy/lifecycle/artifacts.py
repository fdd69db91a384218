"""Files kept beside a version's ONNX model for the kernel's use; the server never reads them.

Labelled rows (held-out and training) are JSON; the estimator is in skops format and is loaded
only when every type in it comes from a library nbdeploy trusts. Nothing here unpickles.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import orjson

from nbdeploy.errors import NbdeployError
from nbdeploy.store import VersionRecord

HOLDOUT_FILE = "holdout.json"
TRAIN_FILE = "train.json"
ESTIMATOR_FILE = "estimator.skops"
MAX_ROWS = 100_000
TRUSTED_MODULES = ("sklearn.", "numpy.", "scipy.", "builtins.", "collections.")


def rows_json(X: Any, y: Any, seed: int = 0) -> bytes:
    """Labelled rows as JSON (never pickle); at most ``MAX_ROWS``, sampled with ``seed`` beyond."""
    import pandas as pd

    y_arr = np.asarray(y)
    n = len(y_arr)
    rows = np.arange(n)
    if n > MAX_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(n, MAX_ROWS, replace=False))
    if isinstance(X, pd.DataFrame):
        part = X.iloc[rows]
        data: dict[str, Any] = {"frame": True, "columns": {
            str(c): part[c].astype(object).where(part[c].notna(), None).tolist() for c in part.columns},
            "dtypes": {str(c): str(t) for c, t in part.dtypes.items()}}
    else:
        data = {"frame": False, "array": np.asarray(X)[rows].tolist()}
    data["y"] = y_arr[rows].tolist()
    return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)


def read_rows(record: VersionRecord, filename: str) -> tuple[Any, np.ndarray] | None:
    """The labelled rows ``filename`` of a version, as a DataFrame (or array) and labels."""
    path = record.path / filename
    if not path.exists():
        return None
    import pandas as pd

    data = orjson.loads(path.read_bytes())
    if not data["frame"]:
        return np.asarray(data["array"], dtype=float), np.asarray(data["y"])
    frame = pd.DataFrame(data["columns"])
    return restore_dtypes(frame, data.get("dtypes", {})), np.asarray(data["y"])


def restore_dtypes(frame: Any, dtypes: dict[str, str]) -> Any:
    """Give JSON-read columns back the dtypes they were fitted with (category, bool, numbers)."""
    for column, dtype in dtypes.items():
        if column in frame.columns and str(frame[column].dtype) != dtype:
            with contextlib.suppress(TypeError, ValueError):  # else keep what JSON gave
                frame[column] = frame[column].astype(dtype)
    return frame


def estimator_bytes(model: Any) -> bytes:
    import skops.io as sio

    return sio.dumps(model)


def load_estimator(record: VersionRecord) -> Any:
    """The fitted estimator stored with a version, refused if it holds types nbdeploy does not trust."""
    import skops.io as sio

    path = record.path / ESTIMATOR_FILE
    if not path.exists():
        raise NbdeployError(f"{record.name!r} version {record.version} was stored without its estimator; "
                            "deploy it again from a notebook to retrain it", 409)
    data = path.read_bytes()
    types = sio.get_untrusted_types(data=data)
    untrusted = [t for t in types if not t.startswith(TRUSTED_MODULES)]
    if untrusted:
        raise NbdeployError(f"the stored estimator holds types nbdeploy does not load by itself: "
                            f"{', '.join(untrusted[:5])}; load it with skops.io.load(..., trusted=[...]) "
                            "if you trust the file", 409)
    return sio.loads(data, trusted=types)
