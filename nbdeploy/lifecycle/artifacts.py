"""Files kept beside a version's ONNX model for the kernel's use; the server never reads them.

Labelled rows (held-out and training) are JSON; the estimator is in skops format. Nothing here
unpickles, and every file is read back through the store, which refuses one whose sha256 is not
the one recorded when the version was registered.

Loading the estimator runs code only of types on an allow-list of exact names: skops' own defaults
(containers, numbers, NumPy arrays and dtypes, scikit-learn estimators, NumPy and SciPy ufuncs)
plus the names this estimator needed when it was saved, recorded then in ``meta["estimator"]``.
A name is recorded, and loaded, only if it is a class or function of scikit-learn, NumPy or SciPy
outside their file and network I/O (or ``functools.partial``, whose function is checked on its own):
never a ``builtins`` function such as ``exec``, never ``os`` or anything a user defined.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import warnings
from typing import Any

import numpy as np
import orjson

from nbdeploy.errors import NbdeployError
from nbdeploy.store import VersionRecord

HOLDOUT_FILE = "holdout.json"
TRAIN_FILE = "train.json"
ESTIMATOR_FILE = "estimator.skops"
MAX_ROWS = 100_000
TRUSTED_PACKAGES = ("sklearn", "numpy", "scipy")
TRUSTED_NAMES = frozenset({"functools.partial"})  # skops rebuilds a plain partial; its function is audited too
# Parts of the trusted packages that read or write files, fetch data or load pickles: never trusted.
NEVER_MODULES = ("numpy.lib", "numpy.ctypeslib", "numpy.f2py", "numpy.testing", "numpy.distutils", "scipy.io",
                 "scipy.datasets", "scipy._lib", "sklearn.datasets", "sklearn.externals", "sklearn.utils._testing")
NEVER_WORDS = re.compile(r"load|save|file|memmap|datasource|fetch|txt|regex|pickle|dump|exec|eval|system|open",
                         re.IGNORECASE)


class UntrustedEstimator(NbdeployError):
    """A stored estimator holds types nbdeploy does not load (code could run in the kernel)."""

    status = 409


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
    raw = record.file_bytes(filename)  # refused if it is not the file registered
    if raw is None:
        return None
    import pandas as pd

    data = orjson.loads(raw)
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


def estimator_file(model: Any) -> tuple[bytes, dict[str, Any]]:
    """The estimator in skops format, and what to record of it in the version's metadata: the exact
    type names it needs beyond skops' defaults that nbdeploy trusts (the allow-list its load uses)."""
    import skops
    import skops.io as sio

    data = sio.dumps(model)
    needed = sio.get_untrusted_types(data=data)
    return data, {"types": [t for t in needed if trusted_type(t)], "skops": skops.__version__}


def load_estimator(record: VersionRecord) -> Any:
    """The fitted estimator stored with a version: the file registered (sha256), holding only types
    on the allow-list recorded when it was saved; anything else is refused, naming the types."""
    import skops.io as sio

    data = record.file_bytes(ESTIMATOR_FILE)
    if data is None:
        raise NbdeployError(f"{record.name!r} version {record.version} was stored without its estimator; "
                            "deploy it again from a notebook to retrain it", 409)
    recorded = (record.meta.get("estimator") or {}).get("types")
    if recorded is None:
        raise UntrustedEstimator(f"{record.name!r} version {record.version} has no record of the types its "
                                 "estimator may hold, so nbdeploy does not load it; deploy it again from a "
                                 "notebook to retrain it")
    try:
        needed = sio.get_untrusted_types(data=data)
    except Exception as exc:  # not a skops file: a zip or schema skops cannot read
        raise UntrustedEstimator(f"the stored estimator of {record.name!r} version {record.version} is not a "
                                 f"readable skops file ({type(exc).__name__}: {exc})") from None
    refused = [t for t in needed if t not in recorded or not trusted_type(t)]
    if refused:
        raise UntrustedEstimator(
            f"the stored estimator of {record.name!r} version {record.version} holds types nbdeploy does not "
            f"load: {', '.join(refused[:5])}{' …' if len(refused) > 5 else ''}; nbdeploy loads only "
            "scikit-learn, NumPy and SciPy types recorded when the model was deployed. If you trust the file, "
            f"load it yourself with skops.io.load({str(record.path / ESTIMATOR_FILE)!r}, trusted=[...])")
    return sio.loads(data, trusted=needed)


def trusted_type(name: str) -> bool:
    """Whether ``name`` (``module.Class`` or ``module.function`` as skops names it) may be loaded."""
    if name in TRUSTED_NAMES:
        return True
    if not _inside_trusted(name):
        return False
    obj = _resolve(name)
    if obj is None or not callable(obj):
        return False
    if isinstance(obj, np.ufunc):  # element-wise math; SciPy's carry no __module__ to check
        return True
    # where it is really defined: a name re-exported by a trusted package must be trusted there too
    home = getattr(obj, "__module__", None) or ""
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", "")
    return _inside_trusted(f"{home}.{qualname}")


def _inside_trusted(name: str) -> bool:
    parts = name.split(".")
    if len(parts) < 2 or parts[0] not in TRUSTED_PACKAGES:
        return False
    if any(name == m or name.startswith(m + ".") for m in NEVER_MODULES):
        return False
    return not any(NEVER_WORDS.search(part) for part in parts[1:])


def _resolve(name: str) -> Any:
    """The object ``name`` names, importing only modules of the trusted packages (checked by the caller)."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            with warnings.catch_warnings():  # a deprecated alias (numpy.core) still names its object
                warnings.simplefilter("ignore", DeprecationWarning)
                obj: Any = importlib.import_module(".".join(parts[:cut]))
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
        except ImportError:
            continue
        except Exception:  # no such attribute, or a module that fails to import: not something to trust
            return None
        return obj
    return None
