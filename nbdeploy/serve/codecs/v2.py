"""Codec for the Open Inference Protocol V2 (KServe V2), with the binary tensor data extension.

Pure functions over bytes and numpy arrays: no HTTP framework, no ONNX. Every malformed request
body raises :class:`~nbdeploy.errors.InvalidInput` (400) naming the field and what was expected;
nothing else escapes :func:`decode_infer_request`.

Binary extension: when the ``Inference-Header-Content-Length`` header is present, the body is that
many bytes of JSON followed by raw tensor data. Tensors whose ``parameters.binary_data_size`` is set
take that many bytes, in tensor order: little-endian row-major values, BOOL one byte each, and
BYTES elements as a 4-byte little-endian length followed by the bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import orjson

from nbdeploy.errors import InvalidInput, NbdeployError
from nbdeploy.signature import DATATYPE_TO_NUMPY, NUMPY_TO_DATATYPE, wrong_value

MAX_ELEMENTS = 10_000_000
"""Most tensor elements one request may declare, checked against shapes before any allocation."""
MAX_DEPTH = 32
"""Deepest nesting of a tensor's ``data`` arrays (orjson itself stops any JSON at depth 1024)."""

_NONE = type(None)
_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", _NONE: "null"}
_JSON_TYPES |= dict.fromkeys((int, float), "number")
_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
_NUMBER, _INTEGRAL = frozenset({int, float, _NONE}), frozenset({int, float})


def _rule(dtype: np.dtype) -> tuple[frozenset[type], float, float, str]:
    """How to check JSON elements for a datatype: the Python types allowed (JSON true is not 1),
    inclusive bounds as Python numbers (comparing with numpy scalars would cast, and warn) and the
    range to show in errors. A value of another type is named by :func:`nbdeploy.signature.wrong_value`."""
    if dtype.kind == "b":
        return frozenset({bool}), 0, 1, ""
    if dtype.kind == "O":
        return frozenset({str, _NONE}), 0, 0, ""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return _INTEGRAL, info.min, info.max, f"[{info.min}, {info.max}]"
    finfo = np.finfo(dtype)  # accept what rounds to a finite value: up to max + half an ulp, exclusive
    top = math.nextafter(float(finfo.max) + 2.0 ** (finfo.maxexp - finfo.nmant - 2), 0)
    return _NUMBER, -top, top, f"[{-float(finfo.max)}, {float(finfo.max)}]"


_RULES = {name: _rule(dtype) for name, dtype in DATATYPE_TO_NUMPY.items()}


@dataclass(slots=True)
class Tensor:
    """One decoded input: ``data`` has the datatype's numpy dtype and is already shaped.

    BYTES data is an object array of ``str`` (elements that are not valid UTF-8 stay ``bytes``).
    """

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for; ``binary_data`` already folds in ``binary_data_output``."""

    name: str
    binary_data: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    """A decoded inference request; ``outputs`` is None when the client wants every output."""

    id: str | None
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None
    parameters: dict[str, Any] = field(default_factory=dict)

    def binary_outputs(self) -> set[str] | bool:
        """What to pass as ``binary`` to :func:`encode_infer_response` to honour this request."""
        if self.outputs is None:
            return self.parameters.get("binary_data_output") is True
        return {out.name for out in self.outputs if out.binary_data}


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _field(obj: dict[str, Any], key: str, kind: type, where: str, optional: bool = False) -> Any:
    """``obj[key]`` if it has exactly type ``kind`` (JSON true is no integer); null/absent -> None
    when ``optional``."""
    value = obj.get(key)
    if type(value) is kind or (value is None and optional):
        return value
    got = _json_type(value) if key in obj else "nothing"
    raise InvalidInput(f"{where}{key} must be {_KINDS[kind]}, got {got}")


class _Where:
    """The error prefix ``input 'x': ``, formatted only when an error needs it (the hot path never does)."""

    __slots__ = ("kind", "name")

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name

    def __format__(self, spec: str) -> str:
        return f"{self.kind} {self.name!r}: "


def _named(i: int, spec: Any, kind: str, seen: set[str]) -> tuple[str, Any, dict[str, Any]]:
    """Name, error prefix and parameters of the i-th input or output object."""
    if type(spec) is not dict:
        raise InvalidInput(f"{kind}s[{i}] must be an object, got {_json_type(spec)}")
    name = spec.get("name")
    if type(name) is not str or not name:
        raise InvalidInput(f"{kind}s[{i}].name must be a non-empty string, got {name!r}")
    if name in seen:
        raise InvalidInput(f"{kind} {name!r} appears more than once")
    seen.add(name)
    where = _Where(kind, name)
    params = spec.get("parameters")
    if params is None:
        return name, where, {}
    return name, where, params if type(params) is dict else _field(spec, "parameters", dict, where)


_INT_ONLY = frozenset({int})


def _split(body: bytes, header_length: int | str | None) -> tuple[Any, memoryview | None]:
    """Split the body into the JSON header and the binary part (None without the extension)."""
    if header_length is None:
        return body, None
    if type(header_length) is str and header_length.isascii() and header_length.isdigit():
        header_length = int(header_length)
    if type(header_length) is not int or not 0 <= header_length <= len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length must be an integer from 0 to the body length {len(body)}, "
            f"got {header_length!r}"
        )
    view = memoryview(body)
    return view[:header_length], view[header_length:]


def decode_infer_request(
    body: bytes, header_length: int | str | None = None, *, max_elements: int | None = None
) -> InferRequest:
    """Parse and validate a V2 ``infer`` request body into numpy tensors.

    ``header_length`` is the ``Inference-Header-Content-Length`` header (int or its text), None
    when absent. ``max_elements`` caps the elements summed over all inputs (default MAX_ELEMENTS).
    """
    header, binary = _split(body.encode() if isinstance(body, str) else body, header_length)
    try:
        doc = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if type(doc) is not dict:
        raise InvalidInput(f"request body must be a JSON object, got {_json_type(doc)}")
    request_id = _field(doc, "id", str, "", optional=True)
    parameters = _field(doc, "parameters", dict, "", optional=True) or {}
    binary_default = _field(parameters, "binary_data_output", bool, "parameters.", optional=True) or False
    raw_inputs = _field(doc, "inputs", list, "")
    if not raw_inputs:
        raise InvalidInput("inputs must be a non-empty array, got an empty one")
    budget = MAX_ELEMENTS if max_elements is None else max_elements
    inputs: list[Tensor] = []
    names: set[str] = set()
    total = offset = 0
    for i, spec in enumerate(raw_inputs):
        name, where, params = _named(i, spec, "input", names)
        datatype = spec.get("datatype")
        if type(datatype) is not str or datatype not in DATATYPE_TO_NUMPY:
            raise InvalidInput(f"{where}datatype must be one of {', '.join(DATATYPE_TO_NUMPY)}, got {datatype!r}")
        shape = spec.get("shape")
        if type(shape) is not list or not (set(map(type, shape)) <= _INT_ONLY and (not shape or min(shape) >= 0)):
            raise InvalidInput(f"{where}shape must be an array of non-negative integers, got {shape!r}")
        count = math.prod(shape)
        total += count
        if total > budget:
            raise InvalidInput(
                f"{where}shape {shape} brings the request to {total} elements, more than the {budget} allowed"
            )
        size = params.get("binary_data_size")
        if size is None:
            if "data" not in spec:
                raise InvalidInput(f"{where}data is missing (and no binary_data_size)")
            flat = _from_json(where, datatype, shape, count, spec["data"])
        else:
            if type(size) is not int or size < 0:
                raise InvalidInput(f"{where}binary_data_size must be a non-negative integer, got {size!r}")
            if binary is None or "data" in spec:
                raise InvalidInput(
                    f"{where}binary_data_size needs the Inference-Header-Content-Length header and no data"
                )
            if offset + size > len(binary):
                raise InvalidInput(
                    f"{where}binary_data_size {size} exceeds the {len(binary) - offset} bytes of binary data left"
                )
            flat = _from_binary(where, datatype, shape, count, binary[offset : offset + size])
            offset += size
        try:
            data = flat.reshape(shape)
        except (ValueError, OverflowError) as exc:
            raise InvalidInput(f"{where}cannot shape data to {shape}: {exc}") from None
        inputs.append(Tensor(name, datatype, shape, data, params))
    if binary is not None and offset != len(binary):
        raise InvalidInput(
            f"binary data is {len(binary)} bytes but the binary_data_size of the inputs add up to {offset}"
        )
    outputs = _requested_outputs(_field(doc, "outputs", list, "", optional=True), binary_default)
    return InferRequest(request_id, inputs, outputs, parameters)


def _requested_outputs(raw: list[Any] | None, binary_default: bool) -> list[RequestedOutput] | None:
    """Parse ``outputs``; absent or empty means every output."""
    outputs: list[RequestedOutput] = []
    seen: set[str] = set()
    for i, spec in enumerate(raw or ()):
        name, where, params = _named(i, spec, "output", seen)
        binary = params.get("binary_data", binary_default)
        if type(binary) is not bool:
            raise InvalidInput(f"{where}binary_data must be a boolean, got {_json_type(binary)}")
        outputs.append(RequestedOutput(name, binary, params))
    return outputs or None


def _flatten(where: str, data: Any) -> tuple[list[Any], set[type]]:
    """Flatten row-major nested lists one level at a time (C-speed, no recursion).

    Returns the leaves and the set of their Python types, which is all the type check needs.
    """
    if type(data) is not list:
        raise InvalidInput(f"{where}data must be an array, got {_json_type(data)}")
    depth = 1
    while True:
        types = set(map(type, data))
        if list not in types:
            return data, types
        if len(types) > 1:
            raise InvalidInput(f"{where}data mixes arrays and scalars at nesting depth {depth}")
        if depth >= MAX_DEPTH:
            raise InvalidInput(f"{where}data is nested deeper than {MAX_DEPTH} arrays")
        data = list(chain.from_iterable(data))
        depth += 1


def _from_json(where: _Where, datatype: str, shape: list[int], count: int, data: Any) -> np.ndarray:
    """Validate JSON ``data`` for one input and return it as a flat array of the datatype."""
    flat, types = _flatten(where, data)
    if len(flat) != count:
        raise InvalidInput(f"{where}shape {shape} needs {count} elements, got {len(flat)}")
    allowed, lowest, highest, bounds = _RULES[datatype]
    if not types <= allowed:  # name the first wrong value, in the words the client and library use
        i = next(i for i, v in enumerate(flat) if type(v) not in allowed)
        raise wrong_value(where.name, datatype, flat[i], _row(i, shape))
    dtype = DATATYPE_TO_NUMPY[datatype]
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        out[:] = flat
        return out
    values = flat
    if float in types and allowed is _INTEGRAL:
        for i, v in enumerate(flat):
            if type(v) is float and not v.is_integer():
                raise wrong_value(where.name, datatype, v, _row(i, shape))
    elif _NONE in types:
        values = [v for v in flat if v is not None]
    if values:  # BOOL passes trivially: True == 1
        low, high = min(values), max(values)
        bad = low if low < lowest else high if high > highest else None
        if bad is not None:
            raise InvalidInput(f"{where}value {bad} out of range for {datatype} {bounds}")
    return np.array(flat, dtype=dtype)  # None -> NaN for FP types


def _row(index: int, shape: list[int]) -> int:
    """The row of the ``index``-th element of a row-major tensor of ``shape``."""
    return index // max(math.prod(shape[1:]), 1)


def decode_json_tensor(name: str, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    """Validate JSON ``data`` (nested or flat, row-major) as one input of ``datatype`` and ``shape``.

    The same checks as an ``infer`` input: element types, ranges, null only for FP, count vs shape.
    """
    where = _Where("input", name)
    if datatype not in DATATYPE_TO_NUMPY:
        raise InvalidInput(f"{where}datatype must be one of {', '.join(DATATYPE_TO_NUMPY)}, got {datatype!r}")
    return _from_json(where, datatype, shape, math.prod(shape), data).reshape(shape)


def _from_binary(where: str, datatype: str, shape: list[int], count: int, raw: memoryview) -> np.ndarray:
    """Decode one input's slice of the binary part into a flat, writable, native-order array."""
    if datatype == "BYTES":
        out = np.empty(count, dtype=object)
        pos, end = 0, len(raw)
        for i in range(count):
            length = int.from_bytes(raw[pos : pos + 4], "little") if pos + 4 <= end else -1
            pos += 4
            if length < 0 or pos + length > end:
                raise InvalidInput(f"{where}binary BYTES data ends inside element {i} of {count}")
            item = bytes(raw[pos : pos + length])
            pos += length
            try:
                out[i] = item.decode()
            except UnicodeDecodeError:
                out[i] = item
        if pos != end:
            raise InvalidInput(f"{where}binary_data_size is {end} bytes but {count} elements used {pos}")
        return out
    dtype = DATATYPE_TO_NUMPY[datatype]
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"{where}shape {shape} of {datatype} needs {count * dtype.itemsize} bytes, got binary_data_size {len(raw)}"
        )
    if datatype == "BOOL":
        octets = np.frombuffer(raw, dtype=np.uint8)
        if count and octets.max() > 1:
            raise InvalidInput(f"{where}binary BOOL bytes must be 0 or 1")
        return octets.astype(np.bool_)
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)


def encode_infer_response(
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: list[tuple[str, np.ndarray]],
    binary: set[str] | bool = False,
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Encode a V2 ``infer`` response; returns the body and the headers to send with it.

    ``binary`` is True (all outputs) or the names of outputs to send as binary tensor data
    (see :meth:`InferRequest.binary_outputs`). JSON data is flat row-major; NaN becomes null.
    """
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    if parameters is not None:
        doc["parameters"] = parameters
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, value in outputs:
        arr = np.asarray(value)
        try:
            datatype = NUMPY_TO_DATATYPE[arr.dtype]
        except KeyError:
            raise NbdeployError(f"output {name!r}: dtype {arr.dtype} has no V2 datatype", status=500) from None
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary is True or (binary is not False and name in binary):
            raw = _to_binary(arr, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [_text(v) for v in arr.ravel().tolist()]
        else:
            flat = arr.ravel()  # contiguous, as orjson needs; it also needs native byte order
            entry["data"] = flat if flat.dtype.isnative else flat.astype(flat.dtype.newbyteorder("="))
        entries.append(entry)
    doc["outputs"] = entries
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, {"Content-Type": "application/json"}
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return header + b"".join(chunks), headers


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _to_binary(arr: np.ndarray, datatype: str) -> bytes:
    if datatype != "BYTES":
        return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    parts: list[bytes] = []
    for value in arr.ravel().tolist():
        item = value if isinstance(value, bytes) else str(value).encode()
        parts += (len(item).to_bytes(4, "little"), item)
    return b"".join(parts)

