"""Input schema: captured from the sample at deploy time, enforced wherever a model is called.

A DataFrame sample becomes one named input per column, declared with shape ``[-1, 1]``; a 2-D
array becomes one input ``input`` of shape ``[-1, n_features]``. The same schema validates
requests in the server and encodes requests in the kernel, so both sides agree by construction.

Missing values: numbers travel as NaN (JSON ``null``). Strings have no missing value in JSON or the
V2 binary format, so a missing string is sent as :data:`MISSING_STRING`, and the converted graph
treats that string the way scikit-learn treats ``NaN``/``None`` in the column (see
:mod:`nbdeploy.convert.converters`); a ``null`` in a text column is read as the same sentinel.
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from nbdeploy.errors import InvalidInput

FLOAT_TYPES = {"FP16", "FP32", "FP64"}
MISSING_STRING = "__nbdeploy_missing__"  # a missing value in a text (BYTES) input
INT_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
NUMPY_OF = {
    "BOOL": np.dtype(bool),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "BYTES": np.dtype(object),
}


@dataclass(frozen=True)
class InputSpec:
    """One model input as clients see it (``name``) and as the ONNX graph names it."""

    name: str
    onnx_name: str
    datatype: str  # V2 datatype of the ONNX input
    shape: tuple[int, ...]  # -1 is the batch dimension
    logical: str = "numeric"  # numeric | integer | bool | string: what the sample held
    categories: tuple[str, ...] | None = None  # for pandas `category` columns
    has_missing: bool = False  # the sample had missing values in this column

    @property
    def nullable(self) -> bool:
        """Missing values are accepted where NaN (floats) or the sentinel (text) can represent them."""
        return self.datatype in FLOAT_TYPES or self.datatype == "BYTES"

    @property
    def missing(self) -> str | None:
        """What a client sends for a missing value: ``null`` (floats), the sentinel string (text)."""
        return MISSING_STRING if self.datatype == "BYTES" else ("null" if self.nullable else None)


@dataclass(frozen=True)
class Signature:
    """The inputs a model takes, in order."""

    inputs: tuple[InputSpec, ...]
    frame: bool  # captured from a DataFrame: inputs are columns

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    def to_dict(self) -> dict[str, Any]:
        return {
            "frame": self.frame,
            "inputs": [
                {**asdict(s), "shape": list(s.shape), "categories": list(s.categories) if s.categories else None,
                 "missing": s.missing}
                for s in self.inputs
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        specs = tuple(
            InputSpec(
                name=i["name"],
                onnx_name=i["onnx_name"],
                datatype=i["datatype"],
                shape=tuple(i["shape"]),
                logical=i.get("logical", "numeric"),
                categories=tuple(i["categories"]) if i.get("categories") else None,
                has_missing=bool(i.get("has_missing", False)),
            )
            for i in data["inputs"]
        )
        return cls(inputs=specs, frame=bool(data["frame"]))

    def with_float_type(self, datatype: str) -> Signature:
        """The same schema with every floating-point input declared as ``datatype``."""
        specs = tuple(replace(s, datatype=datatype) if s.datatype in FLOAT_TYPES else s for s in self.inputs)
        return Signature(specs, self.frame)

    def with_onnx_names(self, onnx_names: list[str]) -> Signature:
        specs = tuple(replace(s, onnx_name=o) for s, o in zip(self.inputs, onnx_names, strict=True))
        return Signature(specs, self.frame)

    # -- validation: one request's tensors, by the user's input names -> ONNX feeds ---------
    def feeds(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check named tensors against the schema and return ONNX Runtime feeds.

        Accepts a column input as ``[n]`` or ``[n, 1]``; safe upcasts (int and bool to float,
        narrower to wider int) are applied; anything else is an ``InvalidInput`` naming the input.
        """
        unknown = [n for n in tensors if n not in {s.name for s in self.inputs}]
        if unknown:
            raise InvalidInput(f"unknown input {unknown[0]!r}{_suggest(unknown[0], self.names)}; "
                               f"expected inputs: {', '.join(self.names)}")
        missing = [n for n in self.names if n not in tensors]
        if missing:
            raise InvalidInput(f"missing input {missing[0]!r}; expected inputs: {', '.join(self.names)}")
        rows: int | None = None
        feeds: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            arr = _coerce(spec, tensors[spec.name])
            if rows is not None and arr.shape[0] != rows:
                raise InvalidInput(
                    f"input {spec.name!r}: has {arr.shape[0]} rows but other inputs have {rows}"
                )
            rows = arr.shape[0]
            feeds[spec.onnx_name] = arr
        return feeds

    # -- encoding on the client side ----------------------------------------------------
    def tensors_of(self, X: Any) -> dict[str, np.ndarray]:
        """Split user data (DataFrame, records, 2-D array) into named tensors by this schema."""
        if self.frame:
            import pandas as pd

            if isinstance(X, dict):
                X = pd.DataFrame(X)
            elif isinstance(X, list):
                X = pd.DataFrame.from_records(X)
            elif not isinstance(X, pd.DataFrame):
                raise InvalidInput(
                    f"this model takes a DataFrame with columns {', '.join(self.names)}; "
                    f"got {type(X).__name__}"
                )
            missing = [n for n in self.names if n not in X.columns]
            if missing:
                raise InvalidInput(f"missing column {missing[0]!r}; expected columns: {', '.join(self.names)}")
            return {s.name: column_values(X[s.name], s) for s in self.inputs}
        arr = np.asarray(X)
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        return {self.inputs[0].name: arr}


def from_sample(X: Any, float_type: str = "FP32") -> Signature:
    """Capture the input schema of sample data (pandas DataFrame or 2-D numpy array)."""
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None
    if pd is not None and isinstance(X, pd.DataFrame):
        if X.shape[1] == 0:
            raise InvalidInput("the sample DataFrame has no columns")
        names = [str(c) for c in X.columns]
        if len(set(names)) != len(names):
            raise InvalidInput("the sample DataFrame has duplicate column names; rename them before fitting")
        specs = [_column_spec(name, X[col], float_type) for name, col in zip(names, X.columns, strict=True)]
        taken: set[str] = set()
        for i, spec in enumerate(specs):  # "a b" and "a_b" must not share a graph input
            onnx_name, n = spec.onnx_name, 0
            while onnx_name in taken:
                n += 1
                onnx_name = f"{spec.onnx_name}_{n}"
            taken.add(onnx_name)
            specs[i] = replace(spec, onnx_name=onnx_name)
        return Signature(tuple(specs), frame=True)
    if pd is not None and isinstance(X, pd.Series):
        raise InvalidInput("the sample is a Series; pass a DataFrame (X[[column]]) or a 2-D array")
    arr = np.asarray(X)
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise InvalidInput(f"the sample must be a DataFrame or a 2-D array; got shape {list(arr.shape)}")
    if arr.dtype.kind not in "fiub":
        raise InvalidInput(f"a sample array must be numeric; got dtype {arr.dtype}. Use a DataFrame for text")
    return Signature((InputSpec("input", "input", float_type, (-1, arr.shape[1])),), frame=False)


def onnx_safe_name(name: str) -> str:
    """A graph input name for a column: what skl2onnx itself would make of it."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def column_values(col: Any, spec: InputSpec) -> np.ndarray:
    """A pandas column as a 1-D array of the logical type: floats with NaN, ints, bools or str.

    Missing strings become :data:`MISSING_STRING`; a bool column with missing values becomes floats.
    """
    import pandas as pd

    kind = col.dtype.kind if isinstance(col.dtype, np.dtype) else "extension"
    if kind == "f" or (kind in ("i", "u") and spec.logical == "numeric"):  # the common case, kept fast
        return col.to_numpy(dtype=np.float64)
    if kind in ("i", "u", "b") and spec.logical in ("integer", "bool"):
        return col.to_numpy()
    if spec.logical == "string":
        values = col.astype(object).to_numpy()
        return np.array([MISSING_STRING if _is_missing(v) else str(v) for v in values], dtype=object)
    if spec.logical == "bool":
        if col.isna().any():
            return col.astype(object).map(lambda v: np.nan if _is_missing(v) else float(v)).to_numpy(np.float64)
        return col.astype(bool).to_numpy()
    if spec.logical == "integer" and not col.isna().any():
        return col.astype("int64").to_numpy()
    return pd.to_numeric(col, errors="coerce").astype("float64").to_numpy()


def _column_spec(name: str, col: Any, float_type: str) -> InputSpec:
    import pandas as pd

    dtype = col.dtype
    onnx_name = onnx_safe_name(name)
    missing = bool(col.isna().any())
    nullable = not isinstance(dtype, np.dtype)  # pandas extension dtypes (Int64, boolean) hold NA
    if isinstance(dtype, pd.CategoricalDtype):
        cats = tuple(str(c) for c in dtype.categories)
        return InputSpec(name, onnx_name, "BYTES", (-1, 1), "string", cats, missing)
    if pd.api.types.is_bool_dtype(dtype):
        # A nullable boolean column needs NaN, hence float (scikit-learn sees 0.0/1.0/NaN).
        return InputSpec(name, onnx_name, float_type if nullable else "BOOL", (-1, 1), "bool", None, missing)
    if pd.api.types.is_integer_dtype(dtype):
        # Nullable integer columns (Int64) may hold NA, hence float.
        return InputSpec(name, onnx_name, float_type if nullable else "INT64", (-1, 1), "integer", None, missing)
    if pd.api.types.is_float_dtype(dtype):
        return InputSpec(name, onnx_name, float_type, (-1, 1), "numeric", None, missing)
    if pd.api.types.is_string_dtype(dtype) or dtype.kind == "O":
        non_null = col.dropna()
        if len(non_null) and all(isinstance(v, (bool, np.bool_)) for v in non_null):
            return InputSpec(name, onnx_name, float_type if missing else "BOOL", (-1, 1), "bool", None, missing)
        return InputSpec(name, onnx_name, "BYTES", (-1, 1), "string", None, missing)
    raise InvalidInput(f"column {name!r} has dtype {dtype}, which nbdeploy cannot serve; "
                       "convert it to numbers, booleans, strings or categories before fitting and deploying")


def _coerce(spec: InputSpec, arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    n_features = spec.shape[1] if len(spec.shape) > 1 else 1
    if arr.ndim == 1 and n_features == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[1] != n_features:
        raise InvalidInput(
            f"input {spec.name!r}: expected shape [-1, {n_features}], got {list(arr.shape)}"
        )
    want = NUMPY_OF[spec.datatype]
    kind = arr.dtype.kind
    if spec.datatype == "BYTES":
        if kind not in "OUS":
            raise InvalidInput(f"input {spec.name!r}: expected BYTES (strings), got {_v2_name(arr.dtype)}")
        if kind == "U":
            return arr.astype(object)
        return np.vectorize(_as_str, otypes=[object])(arr.astype(object))
    if kind in "OUS":
        raise InvalidInput(f"input {spec.name!r}: expected {spec.datatype} numbers, got strings")
    if spec.datatype == "BOOL":
        if kind != "b":
            hint = (" (missing values are not accepted here: the sample had none in this column; "
                    "deploy with a sample that has them)") if kind == "f" and np.isnan(arr).any() else ""
            raise InvalidInput(f"input {spec.name!r}: expected BOOL, got {_v2_name(arr.dtype)}{hint}")
        return arr
    if spec.datatype in FLOAT_TYPES:
        if kind not in "fiub":
            raise InvalidInput(f"input {spec.name!r}: expected {spec.datatype}, got {_v2_name(arr.dtype)}")
        return arr.astype(want, copy=False)
    # integer input
    if kind == "f":
        if np.isnan(arr).any():
            raise InvalidInput(f"input {spec.name!r}: missing values (null/NaN) are not accepted for {spec.datatype}")
        if not np.all(np.mod(arr, 1) == 0):
            raise InvalidInput(f"input {spec.name!r}: expected {spec.datatype} integers, got fractional numbers")
    elif kind not in "iub":
        raise InvalidInput(f"input {spec.name!r}: expected {spec.datatype}, got {_v2_name(arr.dtype)}")
    return arr.astype(want, copy=False)


def _as_str(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return MISSING_STRING if _is_missing(v) else str(v)


def _v2_name(dtype: np.dtype) -> str:
    for name, dt in NUMPY_OF.items():
        if dt == dtype:
            return name
    return str(dtype)


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, (str, bytes)):
        return False
    if isinstance(v, (float, np.floating)):
        return bool(v != v)
    if "pandas" not in sys.modules:  # pd.NA and NaT exist only once pandas is imported: a server has none
        return False
    import pandas as pd

    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
