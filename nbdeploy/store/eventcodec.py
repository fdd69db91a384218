"""A :class:`~nbdeploy.store.events.PredictionEvent` as bytes and back, for the log's writer process.

The server packs each event on its request path, so packing is a few ``struct`` calls and one
``tobytes`` per array, no per-row Python work. Numeric arrays travel as their dtype, shape and
raw bytes, exactly. An answered request's arrays usually share their row count and, request after
request, their names, dtypes and widths: that description (the *schema*) is made once per kind of
request on each side and the event carries it as bytes the writer process looks up, so unpacking
is one ``np.frombuffer`` per array. Object arrays (strings, categories, a failed request's raw values) travel as
JSON written by the log's own rule (:func:`nbdeploy.store.batch.dumps`: NaN as null, bytes decoded),
so what the writer process logs is what the log would have written from the original arrays.
Nothing here is pickled.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson

from nbdeploy.store.batch import dumps
from nbdeploy.store.events import PredictionEvent

_HEAD = struct.Struct("<dqdiHH")  # ts, version, latency_ms, status, inputs, outputs
_STR = struct.Struct("<I")
_ARRAY = struct.Struct("<HBB")  # name length, dtype-text length, ndim
_NONE = 0xFFFFFFFF
GENERIC, FIXED = b"\x00", b"\x01"  # every array described in full; or a schema, a row count and the raw data
_SCHEMAS: dict[Any, bytes] = {}  # the server's: a kind of request to its schema's bytes
_LAYOUTS: dict[bytes, list[tuple[str, np.dtype, tuple[int, ...], int]]] = {}  # the writer's: schema to layout
MAX_SCHEMAS = 1024  # kinds of request remembered on each side (a few per model version in practice)


def _text(value: str | None) -> bytes:
    if value is None:
        return _STR.pack(_NONE)
    raw = value.encode("utf-8", "surrogatepass")
    return _STR.pack(len(raw)) + raw


def _array(name: str, arr: Any) -> list[bytes]:
    arr = np.asarray(arr)
    if arr.dtype.kind == "O":  # flat: the shape says how it folds
        kind, data = b"O", dumps(arr.reshape(-1).tolist())
    else:
        kind, data = arr.dtype.str.encode(), arr.tobytes()
    raw = name.encode("utf-8", "surrogatepass")
    return [_ARRAY.pack(len(raw), len(kind), arr.ndim), raw, kind, struct.pack(f"<{arr.ndim}q", *arr.shape),
            _STR.pack(len(data)), data]


def _schema(arrays: list[tuple[str, Any]]) -> tuple[bytes, int] | None:
    """The schema of arrays that all have one row count and fixed-size dtypes, and that count; else None."""
    rows = -1
    key = []
    for name, arr in arrays:
        if type(arr) is not np.ndarray or arr.ndim == 0 or arr.dtype.kind == "O" or arr.dtype.hasobject:
            return None
        if arr.shape[0] != rows:
            if rows != -1:
                return None
            rows = arr.shape[0]
        key.append((name, arr.dtype.str, arr.shape[1:]))
    found = _SCHEMAS.get(tuple(key))
    if found is None:
        parts = []
        for name, kind, trail in key:
            raw, code = name.encode("utf-8", "surrogatepass"), kind.encode()
            parts += [_ARRAY.pack(len(raw), len(code), len(trail)), raw, code, struct.pack(f"<{len(trail)}q", *trail)]
        if len(_SCHEMAS) >= MAX_SCHEMAS:
            _SCHEMAS.clear()
        found = _SCHEMAS[tuple(key)] = b"".join(parts)
    return found, rows


def pack(e: PredictionEvent) -> bytes:
    """One event as bytes (see :func:`unpack`)."""
    parts = [_HEAD.pack(e.ts, e.version, e.latency_ms, e.status, len(e.inputs), len(e.outputs)),
             _text(e.id), _text(e.model), _text(e.error), _text(e.client_id)]
    arrays = [*e.inputs.items(), *e.outputs.items()]
    fixed = _schema(arrays)
    if fixed is not None:
        schema, rows = fixed
        parts += [FIXED, _STR.pack(len(schema)), schema, _STR.pack(rows)]
        parts += [arr.tobytes() for _, arr in arrays]
        return b"".join(parts)
    parts.append(GENERIC)
    for name, arr in arrays:
        parts += _array(name, arr)
    return b"".join(parts)


class _Reader:
    def __init__(self, data: memoryview) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> memoryview:
        chunk = self.data[self.at:self.at + n]
        if len(chunk) != n:
            raise ValueError("a packed prediction event ends early")
        self.at += n
        return chunk

    def unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        return fmt.unpack(self.take(fmt.size))

    def text(self) -> str | None:
        (n,) = self.unpack(_STR)
        return None if n == _NONE else bytes(self.take(n)).decode("utf-8", "surrogatepass")

    def array(self) -> tuple[str, np.ndarray]:
        name_len, kind_len, ndim = self.unpack(_ARRAY)
        name = bytes(self.take(name_len)).decode("utf-8", "surrogatepass")
        kind = bytes(self.take(kind_len)).decode()
        shape = struct.unpack(f"<{ndim}q", self.take(8 * ndim))
        (n,) = self.unpack(_STR)
        data = self.take(n)
        if kind == "O":
            return name, _objects(orjson.loads(data), shape)
        return name, np.frombuffer(data, dtype=np.dtype(kind)).reshape(shape)


def _objects(values: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    flat = np.empty(len(values), dtype=object)
    try:
        flat[:] = values
    except ValueError:  # an element that is itself a list: numpy would try to broadcast it
        for i, v in enumerate(values):
            flat[i] = v
    return flat.reshape(shape)


def _layout(schema: bytes) -> list[tuple[str, np.dtype, tuple[int, ...], int]]:
    """A schema's arrays: name, dtype, the shape after the rows, and items per row."""
    found = _LAYOUTS.get(schema)
    if found is None:
        r = _Reader(memoryview(schema))
        found = []
        while r.at < len(schema):
            name_len, kind_len, ndim = r.unpack(_ARRAY)
            name = bytes(r.take(name_len)).decode("utf-8", "surrogatepass")
            dtype = np.dtype(bytes(r.take(kind_len)).decode())
            if dtype.hasobject:
                raise ValueError("a schema names an object dtype")
            trail = struct.unpack(f"<{ndim}q", r.take(8 * ndim))
            found.append((name, dtype, trail, int(np.prod(trail, dtype=np.int64))))
        if len(_LAYOUTS) >= MAX_SCHEMAS:
            _LAYOUTS.clear()
        _LAYOUTS[schema] = found
    return found


def _fixed(r: _Reader, data: bytes | memoryview) -> list[tuple[str, np.ndarray]]:
    (n,) = r.unpack(_STR)
    layout = _layout(bytes(r.take(n)))
    (rows,) = r.unpack(_STR)
    out = []
    for name, dtype, trail, items in layout:
        count = rows * items
        size = count * dtype.itemsize
        r.take(size)  # bounds-checked
        out.append((name, np.frombuffer(data, dtype, count, r.at - size).reshape((rows, *trail))))
    return out


def unpack(data: bytes | memoryview) -> PredictionEvent:
    """The event :func:`pack` made; ``ValueError`` when ``data`` is not one."""
    r = _Reader(memoryview(data))
    try:
        ts, version, latency_ms, status, n_in, n_out = r.unpack(_HEAD)
        key, model, error, client_id = r.text(), r.text(), r.text(), r.text()
        layout = bytes(r.take(1))
        if layout == FIXED:
            arrays = _fixed(r, data)
        elif layout == GENERIC:
            arrays = [r.array() for _ in range(n_in + n_out)]
        else:
            raise ValueError(f"unknown layout {layout!r}")
        if len(arrays) != n_in + n_out:
            raise ValueError("the arrays do not match the counts")
        inputs, outputs = dict(arrays[:n_in]), dict(arrays[n_in:])
    except (struct.error, UnicodeDecodeError, TypeError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"not a packed prediction event: {exc}") from None
    if r.at != len(r.data) or key is None or model is None:
        raise ValueError("not a packed prediction event")
    return PredictionEvent(id=key, ts=ts, model=model, version=version, inputs=inputs, outputs=outputs,
                           latency_ms=latency_ms, status=status, error=error, client_id=client_id)
