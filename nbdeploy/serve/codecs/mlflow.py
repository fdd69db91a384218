"""MLflow's scoring formats (``/invocations``), decoded into the same named tensors a V2 request gives.

Accepted bodies, as ``mlflow models serve`` takes them: JSON with one of ``dataframe_split``,
``dataframe_records``, ``instances`` or ``inputs`` (plus optional ``params``), or ``text/csv`` with
a header row. Values are checked against the model's signature with the V2 rules (numbers for float
columns, null only there, integers, booleans, strings). The answer is ``{"predictions": [...]}``;
``params.predict_method`` (or the ``predict_method`` query parameter) ``predict_proba`` answers class
probabilities, which MLflow's own server cannot do for scikit-learn models.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from nbdeploy.errors import InvalidInput
from nbdeploy.serve.codecs.v2 import decode_json_tensor
from nbdeploy.signature import FLOAT_TYPES, INT_TYPES, InputSpec, Signature

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
METHODS = {"predict": "label", "predict_proba": "probabilities"}


@dataclass(slots=True)
class ScoringRequest:
    tensors: dict[str, np.ndarray]  # by the user's input names
    output: str  # the model output answered: label or probabilities


def decode_scoring_request(body: bytes, csv_body: bool, signature: Signature, method: str | None = None,
                           max_elements: int = 1_000_000) -> ScoringRequest:
    """Decode a JSON (or CSV, when ``csv_body``) scoring body against ``signature``."""
    params: dict[str, Any] = {}
    if csv_body:
        tensors = _from_csv(body, signature, max_elements)
    else:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"request body is not valid JSON: {exc}") from None
        if type(doc) is not dict:
            raise InvalidInput(f"request body must be a JSON object with one of {', '.join(FORMATS)}, "
                               f"got {type(doc).__name__}")
        keys = [k for k in doc if k in FORMATS]
        extra = [k for k in doc if k not in FORMATS and k != "params"]
        if len(keys) != 1 or extra:
            raise InvalidInput(f"request body must have exactly one of {', '.join(FORMATS)} (and optionally "
                               f"params), got keys {', '.join(map(repr, doc)) or 'none'}")
        params = doc.get("params") or {}
        if type(params) is not dict:
            raise InvalidInput(f"params must be an object, got {type(params).__name__}")
        tensors = _from_json(keys[0], doc[keys[0]], signature, max_elements)
    chosen = params.get("predict_method", method) or "predict"
    if chosen not in METHODS:
        raise InvalidInput(f"predict_method must be one of {', '.join(METHODS)}, got {chosen!r}")
    return ScoringRequest(tensors, METHODS[chosen])


def encode_predictions(values: np.ndarray) -> bytes:
    """``{"predictions": [...]}``, rows in request order; NaN becomes null."""
    data: Any = values.tolist() if values.dtype.kind == "O" else values
    return orjson.dumps({"predictions": data}, option=orjson.OPT_SERIALIZE_NUMPY)


def _from_json(fmt: str, value: Any, signature: Signature, max_elements: int) -> dict[str, np.ndarray]:
    if fmt == "dataframe_split":
        if type(value) is not dict or type(value.get("data")) is not list:
            raise InvalidInput("dataframe_split must be an object with columns and data (a list of rows)")
        rows = value["data"]
        columns = value.get("columns")
        if columns is None:
            return _from_rows(fmt, rows, signature, None, max_elements)
        if type(columns) is not list or not all(type(c) is str for c in columns):
            raise InvalidInput("dataframe_split.columns must be a list of strings")
        return _from_rows(fmt, rows, signature, columns, max_elements)
    if fmt == "dataframe_records":
        if type(value) is not list:
            raise InvalidInput(f"dataframe_records must be a list of objects, got {type(value).__name__}")
        return _from_records(fmt, value, signature, max_elements)
    # instances / inputs: records, rows, or columns by name
    if type(value) is dict:
        _check_names(fmt, list(value), signature)
        _check_size(fmt, sum(len(v) if type(v) is list else 1 for v in value.values()), max_elements)
        return {name: _tensor(spec, value.get(name), len(value[name]) if type(value.get(name)) is list else 1)
                for name, spec in _specs(signature)}
    if type(value) is not list:
        raise InvalidInput(f"{fmt} must be a list of rows or records, or an object of columns; "
                           f"got {type(value).__name__}")
    if value and type(value[0]) is dict:
        return _from_records(fmt, value, signature, max_elements)
    if value and type(value[0]) is not list:  # one row of scalars (or one column's values)
        value = [[v] for v in value] if len(signature.inputs) == 1 and _width(signature) == 1 else [value]
    return _from_rows(fmt, value, signature, None, max_elements)


def _specs(signature: Signature) -> list[tuple[str, InputSpec]]:
    return [(s.name, s) for s in signature.inputs]


def _width(signature: Signature) -> int:
    return sum(s.shape[1] if len(s.shape) > 1 else 1 for s in signature.inputs)


def _check_size(fmt: str, cells: int, max_elements: int) -> None:
    if cells > max_elements:
        raise InvalidInput(f"{fmt} has {cells} values, more than the {max_elements} allowed")


def _check_names(fmt: str, got: list[str], signature: Signature) -> None:
    import difflib

    names = signature.names
    for name in got:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InvalidInput(f"{fmt}: unknown column {name!r}{hint}; expected columns: {', '.join(names)}")
    for name in names:
        if name not in got:
            raise InvalidInput(f"{fmt}: missing column {name!r}; expected columns: {', '.join(names)}")


def _tensor(spec: InputSpec, values: Any, rows: int) -> np.ndarray:
    width = spec.shape[1] if len(spec.shape) > 1 else 1
    shape = [rows, width] if width > 1 else [rows]
    return decode_json_tensor(spec.name, spec.datatype, shape, values if type(values) is list else [values])


def _from_records(fmt: str, records: list[Any], signature: Signature, max_elements: int) -> dict[str, np.ndarray]:
    if not signature.frame:
        raise InvalidInput(f"{fmt}: this model takes rows of {_width(signature)} numbers, not records with columns")
    _check_size(fmt, len(records) * len(signature.inputs), max_elements)
    for i, rec in enumerate(records):
        if type(rec) is not dict:
            raise InvalidInput(f"{fmt}[{i}] must be an object of column values, got {type(rec).__name__}")
        if len(rec) != len(signature.inputs) or not all(name in rec for name in signature.names):
            _check_names(f"{fmt}[{i}]", list(rec), signature)
    return {name: _tensor(spec, [rec[name] for rec in records], len(records)) for name, spec in _specs(signature)}


def _from_rows(fmt: str, rows: list[Any], signature: Signature, columns: list[str] | None,
               max_elements: int) -> dict[str, np.ndarray]:
    width = _width(signature) if columns is None else len(columns)
    _check_size(fmt, len(rows) * max(width, 1), max_elements)
    for i, row in enumerate(rows):
        if type(row) is not list or len(row) != width:
            got = f"{len(row)} values" if type(row) is list else type(row).__name__
            raise InvalidInput(f"{fmt}: row {i} must be a list of {width} values, got {got}")
    if not signature.frame:
        (spec,) = signature.inputs
        return {spec.name: _tensor(spec, rows, len(rows))}
    if columns is not None:
        _check_names(fmt, columns, signature)
        position = {c: j for j, c in enumerate(columns)}
    else:
        position = {s.name: j for j, s in enumerate(signature.inputs)}
    by_column = list(zip(*rows, strict=True)) if rows else [() for _ in range(width)]
    return {name: _tensor(spec, list(by_column[position[name]]), len(rows)) for name, spec in _specs(signature)}


def _from_csv(body: bytes, signature: Signature, max_elements: int) -> dict[str, np.ndarray]:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"CSV body is not UTF-8: {exc}") from None
    try:
        table = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise InvalidInput(f"CSV body cannot be parsed: {exc}") from None
    if not table:
        raise InvalidInput("CSV body is empty: expected a header row of column names")
    header, rows = table[0], [r for r in table[1:] if r]
    _check_size("CSV", len(rows) * max(len(header), 1), max_elements)
    specs = list(signature.inputs)
    if signature.frame:
        _check_names("CSV header", header, signature)
    kinds = [specs[0].datatype] * len(header) if not signature.frame else [
        signature.inputs[signature.names.index(c)].datatype for c in header]
    parsed = [[_csv_value(header[j], kinds[j], i, v) for j, v in enumerate(r)] if len(r) == len(header)
              else _bad_csv_row(i, len(header), len(r)) for i, r in enumerate(rows)]
    return _from_rows("CSV", parsed, signature, header if signature.frame else None, max_elements)


def _bad_csv_row(i: int, want: int, got: int) -> list[Any]:
    raise InvalidInput(f"CSV row {i + 1} has {got} values, expected {want} (one per header column)")


def _csv_value(column: str, datatype: str, row: int, text: str) -> Any:
    if datatype == "BYTES":
        return text
    value = text.strip()
    if not value.isascii() or "_" in value:  # int() and float() also read Arabic-Indic digits and '1_000'
        value = "?"
    if datatype in FLOAT_TYPES:
        if value == "" or value.lower() in ("nan", "null", "na"):
            return None
        try:
            number = float(value)
        except ValueError:
            raise InvalidInput(f"input {column!r}: CSV row {row + 1}: expected a number, got {text!r}") from None
        return number if math.isfinite(number) else _bad_number(column, row, text)
    if datatype in INT_TYPES:
        try:
            return int(value)
        except ValueError:
            raise InvalidInput(f"input {column!r}: CSV row {row + 1}: expected an integer, got {text!r}") from None
    lowered = value.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise InvalidInput(f"input {column!r}: CSV row {row + 1}: expected true or false, got {text!r}")


def _bad_number(column: str, row: int, text: str) -> Any:
    raise InvalidInput(f"input {column!r}: CSV row {row + 1}: expected a finite number, got {text!r}")
