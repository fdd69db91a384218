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
DATATYPE_TO_NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    **{f"INT{bits}": np.dtype(f"int{bits}") for bits in (8, 16, 32, 64)},
    **{f"UINT{bits}": np.dtype(f"uint{bits}") for bits in (8, 16, 32, 64)},
    **{f"FP{bits}": np.dtype(f"float{bits}") for bits in (16, 32, 64)},
    "BYTES": np.dtype(object),
}
"""The V2 datatypes and their numpy dtypes; :data:`NUMPY_TO_DATATYPE` is the inverse."""


class _DtypeToDatatype(dict[np.dtype, str]):
    """The inverse map; indexing also resolves dtype-likes (``np.float32``, ``'>f4'``) and maps
    every str/bytes/object dtype (``'<U5'``, ``'S3'``) to BYTES. ``in`` and ``get`` check only exact keys."""

    def __missing__(self, key: Any) -> str:
        try:
            dtype = np.dtype(key)
        except TypeError:
            raise KeyError(key) from None
        if dtype.kind in "USO":
            return "BYTES"
        found = self.get(dtype.newbyteorder("="))
        if found is None:
            raise KeyError(key)
        return found


NUMPY_TO_DATATYPE: dict[np.dtype, str] = _DtypeToDatatype({dtype: name for name, dtype in DATATYPE_TO_NUMPY.items()})


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
    dtype: str | None = None  # the sample column's pandas dtype, so decoded frames match the training frame
    refuses_unknown: bool = False  # its encoder refuses values outside ``categories`` (as scikit-learn raises)

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
                dtype=i.get("dtype"),
                refuses_unknown=bool(i.get("refuses_unknown", False)),
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
    def feeds(self, tensors: dict[str, np.ndarray], no_nan: frozenset[str] = frozenset()) -> dict[str, np.ndarray]:
        """Check named tensors against the schema and return ONNX Runtime feeds.

        Accepts a column input as ``[n]`` or ``[n, 1]``; safe upcasts (int and bool to float,
        narrower to wider int) are applied; anything else is an ``InvalidInput`` naming the input.
        ``no_nan`` names float inputs where the model cannot take a missing value (found by running
        it: see :func:`nbdeploy.serve.probe.nan_refusing_inputs`); NaN there is refused too.
        """
        check_names(list(tensors), self.names)
        rows: int | None = None
        feeds: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            arr = _coerce(spec, tensors[spec.name])
            if rows is not None and arr.shape[0] != rows:
                raise InvalidInput(
                    f"input {spec.name!r}: has {arr.shape[0]} rows but other inputs have {rows}"
                )
            rows = arr.shape[0]
            if spec.refuses_unknown:
                _check_known(spec, arr)
            if spec.name in no_nan:
                missing = np.isnan(arr)
                if missing.any():
                    raise missing_refused(spec.name, int(np.argwhere(missing)[0][0]))
            feeds[spec.onnx_name] = arr
        return feeds

    def split_columns(self, array: np.ndarray) -> dict[str, np.ndarray]:
        """An ``[n, k]`` array whose ``k`` columns are the inputs, in order, as one ``[n]`` tensor per
        input, by name (views, not copies). A 1-D array is one row."""
        if array.ndim == 1:
            array = array.reshape(1, -1)
        if array.ndim != 2 or array.shape[1] != len(self.inputs):
            raise InvalidInput(f"this model takes {len(self.inputs)} columns ({', '.join(self.names)}); "
                               f"got an array of shape {list(array.shape)}")
        return {spec.name: array[:, i] for i, spec in enumerate(self.inputs)}

    # -- encoding user data: the one path for the client, the library, the fidelity check and the gate ----
    def encode(self, X: Any) -> dict[str, np.ndarray]:
        """User data as tensors named by this schema's inputs, checked value by value; nothing is coerced.

        Takes a DataFrame (columns in any order), records (a list of dicts, or one dict), a dict of
        columns, or a 2-D array / list of rows whose columns are the inputs in order (one row may be
        1-D). A value of the wrong kind (text in a number column, a number in a text column, a
        missing value where none can be sent) is an :class:`InvalidInput` naming the input, the row,
        the value and what was expected: the same message the server gives for the same data.
        """
        if self.frame and _is_table(X):
            return self._encode_table(X)
        if isinstance(X, dict) and X and all(np.ndim(v) == 0 for v in X.values()):
            return self._encode_table([X])  # one record
        arr = X if isinstance(X, np.ndarray) else np.asarray(X, dtype=object)
        if not self.frame:
            if arr.ndim == 1:
                arr = arr.reshape(1, -1)
            spec = self.inputs[0]
            return {spec.name: encode_values(spec, arr)}  # its shape is judged by feeds(), as in the server
        columns = self.split_columns(arr)
        return {spec.name: encode_values(spec, columns[spec.name]) for spec in self.inputs}

    def decode(self, tensors: dict[str, np.ndarray]) -> Any:
        """Named tensors back as the data the model was fitted on: a DataFrame with the sample's dtypes
        (categories, nullable integers and booleans, text with real missing values), or a 2-D array.

        ``decode(encode(X))`` is ``X`` as the served model sees it: retraining on logged traffic fits
        scikit-learn on what ONNX Runtime was given (missing text as NaN, categories as categories).
        """
        if not self.frame:
            spec = self.inputs[0]
            return np.asarray(tensors[spec.name], dtype=np.float64).reshape(-1, spec.shape[1])
        import pandas as pd

        return pd.DataFrame({spec.name: _decode_column(spec, np.asarray(tensors[spec.name]).reshape(-1))
                             for spec in self.inputs})

    def as_served(self, X: Any) -> Any:
        """``X`` as the served model sees it: encoded with this schema, then decoded (see :meth:`decode`)."""
        return self.decode(self.encode(X))

    def _encode_table(self, X: Any) -> dict[str, np.ndarray]:
        import pandas as pd

        if isinstance(X, list):
            bad = next((i for i, r in enumerate(X) if not isinstance(r, dict)), None)
            if bad is not None:
                raise InvalidInput(f"record {bad} is a {type(X[bad]).__name__}, not a dict of column values")
            X = pd.DataFrame.from_records(X)
        elif isinstance(X, dict):
            X = pd.DataFrame(X)
        check_names([str(c) for c in X.columns], self.names)
        return {s.name: encode_values(s, X[s.name]) for s in self.inputs}


def check_names(got: list[str], expected: list[str]) -> None:
    """Every expected input present, nothing else: the client, the library and the server say it alike."""
    unknown = [n for n in got if n not in expected]
    if unknown:
        raise InvalidInput(f"unknown input {unknown[0]!r}{_suggest(unknown[0], expected)}; "
                           f"expected inputs: {', '.join(expected)}")
    missing = [n for n in expected if n not in got]
    if missing:
        raise InvalidInput(f"missing input {missing[0]!r}; expected inputs: {', '.join(expected)}")


def _check_known(spec: InputSpec, arr: np.ndarray) -> None:
    """A value outside the categories a strict encoder was fitted with: refused, as scikit-learn raises."""
    known = set(spec.categories or ())
    unknown = [i for i, v in enumerate(arr.ravel().tolist()) if v not in known]
    if unknown:
        i = unknown[0]
        value = arr.ravel()[i]
        what = "a missing value" if value == MISSING_STRING else f"the unknown category {value!r}"
        shown = [c for c in spec.categories or () if c != MISSING_STRING]
        listed = ", ".join(repr(c) for c in shown[:20]) + (f", … ({len(shown)} in all)" if len(shown) > 20 else "")
        raise InvalidInput(f"input {spec.name!r}: got {what} at row {i}; the model's encoder was fitted with "
                           f"{listed} and refuses other values (handle_unknown='error')")


def missing_refused(name: str, row: int) -> InvalidInput:
    """A missing value where the model cannot take one (it would answer NaN or fail)."""
    return InvalidInput(f"input {name!r}: expected a number, got a missing value (null/NaN) at row {row}; "
                        "this model cannot take missing values there")


def wrong_value(name: str, datatype: str, value: Any, row: int) -> InvalidInput:
    """The one message for a value an input cannot take: input, row, what came and what was expected."""
    expected = {"BYTES": "text", "BOOL": "booleans (true/false)"}.get(
        datatype, "integers" if datatype in INT_TYPES else "numbers")
    if value is None or (isinstance(value, float) and value != value) or _is_missing(value):
        what = "a missing value (null)"
        hint = ("; the sample had none in this column, so the model takes none here: deploy with a sample "
                "that has them" if datatype not in FLOAT_TYPES and datatype != "BYTES" else "")
        return InvalidInput(f"input {name!r}: expected {expected} ({datatype}), got {what} at row {row}{hint}")
    if isinstance(value, (bool, np.bool_)):
        what = f"the boolean {bool(value)}"
    elif isinstance(value, (str, bytes)):
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        what = f"the text {text[:40]!r}"
    elif isinstance(value, (int, float, np.number)):
        what = f"the number {value}"
    else:
        what = f"a {type(value).__name__}"
    return InvalidInput(f"input {name!r}: expected {expected} ({datatype}), got {what} at row {row}")


def encode_values(spec: InputSpec, values: Any) -> np.ndarray:
    """One input's values (a pandas column, or a 1-D/2-D array) as the array the signature declares.

    Floats carry missing values as NaN, text as :data:`MISSING_STRING`; integers and booleans take
    none. Category columns travel as their categories' text.
    """
    if hasattr(values, "dtype") and not isinstance(values, np.ndarray):  # a pandas column
        values = _column_array(values)
    arr = np.asarray(values)
    shape = arr.shape
    datatype = spec.datatype
    kind = arr.dtype.kind
    if datatype in FLOAT_TYPES:
        if kind in "fiub":  # booleans are numbers to scikit-learn (0.0/1.0), as in a nullable boolean column
            return arr.astype(np.float64, copy=False)
        flat = arr.ravel().tolist()
        out = np.empty(len(flat), dtype=np.float64)
        for i, v in enumerate(flat):
            if v is None or _is_missing(v):
                out[i] = np.nan
            elif isinstance(v, (int, float, np.integer, np.floating, np.bool_)):
                out[i] = v
            else:
                raise wrong_value(spec.name, datatype, v, _row(i, shape))
        return out.reshape(shape)
    if datatype == "BYTES":
        flat = arr.ravel().tolist()
        out = np.empty(len(flat), dtype=object)
        for i, v in enumerate(flat):
            if isinstance(v, str):
                out[i] = v
            elif isinstance(v, bytes):
                out[i] = v.decode("utf-8", "replace")
            elif v is None or _is_missing(v):
                out[i] = MISSING_STRING
            elif spec.dtype == "category" and isinstance(v, (int, float, np.integer, np.floating)) and not \
                    isinstance(v, (bool, np.bool_)):
                out[i] = str(v)  # a category column whose categories are numbers travels as their text
            else:
                raise wrong_value(spec.name, datatype, v, _row(i, shape))
        return out.reshape(shape)
    flat = arr.ravel().tolist() if kind not in "biu" else []
    gap = next((i for i, v in enumerate(flat) if v is None or _is_missing(v)), None)
    if gap is not None:  # integer and boolean inputs take no missing value: say so before anything else
        raise wrong_value(spec.name, datatype, None, _row(gap, shape))
    if datatype == "BOOL":
        if kind == "b":
            return arr
        for i, v in enumerate(flat):
            if not isinstance(v, (bool, np.bool_)):
                raise wrong_value(spec.name, datatype, v, _row(i, shape))
        return np.array(flat, dtype=bool).reshape(shape)
    # integer inputs
    if kind in "iu":
        return arr.astype(DATATYPE_TO_NUMPY[datatype], copy=False)
    for i, v in enumerate(flat):
        integral = isinstance(v, (int, np.integer)) or (isinstance(v, (float, np.floating)) and float(v).is_integer())
        if isinstance(v, (bool, np.bool_)) or not integral:
            raise wrong_value(spec.name, datatype, v, _row(i, shape))
    return np.array(flat, dtype=DATATYPE_TO_NUMPY[datatype]).reshape(shape)


def _decode_column(spec: InputSpec, values: np.ndarray) -> Any:
    """One input's values in the sample column's dtype; missing values as that dtype holds them."""
    import pandas as pd

    dtype = spec.dtype or {"string": "object", "bool": "bool", "integer": "int64"}.get(spec.logical, "float64")
    if spec.datatype == "BYTES":
        missing = values == MISSING_STRING
        if dtype == "category":
            return pd.Categorical(np.where(missing, None, values), categories=list(spec.categories or ()))
        # the served graph treats a missing text value as scikit-learn treats NaN there (not None, which
        # SimpleImputer passes through): NaN is what the served model computed with
        column = pd.Series(np.where(missing, np.nan, values), dtype=object)
        return column if dtype == "object" else column.astype(dtype)
    if spec.datatype in FLOAT_TYPES and spec.logical in ("integer", "bool") and dtype in ("Int64", "boolean"):
        nullable = pd.array(np.where(np.isnan(values), 0, values).astype("int64"), dtype="Int64")
        nullable[np.isnan(values)] = pd.NA
        return nullable if dtype == "Int64" else nullable.astype("boolean")
    try:
        return pd.Series(values).astype(dtype)
    except (TypeError, ValueError):  # a dtype this pandas cannot rebuild: the values as they are
        return pd.Series(values)


def _row(flat_index: int, shape: tuple[int, ...]) -> int:
    width = shape[1] if len(shape) > 1 else 1
    return flat_index // max(width, 1)


def _column_array(col: Any) -> np.ndarray:
    """A pandas column as numpy without changing any value: nullable dtypes keep ``None`` for NA,
    categories become their values, numbers stay numbers, text stays text."""
    import pandas as pd

    dtype = col.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return col.astype(object).where(col.notna(), None).to_numpy(dtype=object)
    if isinstance(dtype, np.dtype) and dtype.kind in "fiub":
        return col.to_numpy()
    if pd.api.types.is_float_dtype(dtype) or pd.api.types.is_integer_dtype(dtype):  # Float64, Int64 with NA
        return col.to_numpy(dtype=np.float64, na_value=np.nan) if col.isna().any() else col.to_numpy(
            dtype=np.float64 if pd.api.types.is_float_dtype(dtype) else np.int64)
    return col.astype(object).where(col.notna(), None).to_numpy(dtype=object)


def _is_table(X: Any) -> bool:
    if isinstance(X, list):
        return bool(X) and isinstance(X[0], dict)
    if isinstance(X, dict):
        return bool(X) and not all(np.ndim(v) == 0 for v in X.values())
    return type(X).__name__ == "DataFrame" and hasattr(X, "columns")


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
        specs = [replace(_column_spec(name, X[col], float_type), dtype=str(X[col].dtype))
                 for name, col in zip(names, X.columns, strict=True)]
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
    if spec.datatype not in DATATYPE_TO_NUMPY or arr.dtype.kind not in "fiubOUS":
        raise InvalidInput(f"input {spec.name!r}: expected {spec.datatype}, got {_v2_name(arr.dtype)}")
    # value by value, with the messages the client and the library give for the same data
    return encode_values(spec, arr).astype(DATATYPE_TO_NUMPY[spec.datatype], copy=False)


def _v2_name(dtype: np.dtype) -> str:
    return NUMPY_TO_DATATYPE.get(dtype, str(dtype))


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
