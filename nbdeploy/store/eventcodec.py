"""A :class:`~nbdeploy.store.events.PredictionEvent` as bytes and back, for the log's writer process.

Numeric arrays travel as their dtype, shape and raw bytes, exactly. An answered request's arrays
usually share their row count and, request after request, their names, dtypes and widths: that
description (the *schema*) is made once per kind of request on each side. The server packs what
waited for its flusher (:func:`pack_many`, every few milliseconds, off the request path): the events
of one schema go together, column by column (one ``np.concatenate`` per array, the scalars as
arrays, the texts as one JSON document), so neither side does Python work per array per event; any
other event (a refused request, string inputs) is packed alone (:func:`pack`). Object arrays
(strings, categories, a failed request's raw values) travel as JSON written by the log's own rule
(:func:`nbdeploy.store.batch.dumps`: NaN as null, bytes decoded), so what the writer process logs
is what the log would have written from the original arrays. Nothing here is pickled.
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
_GROUP = struct.Struct("<IHI")  # events, inputs, schema length
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
    if not arrays:  # a request refused before it had any (an unreadable body): the general layout
        return None
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


def pack_many(events: list[PredictionEvent]) -> list[tuple[bool, bytes]]:
    """``events`` as payloads, each ``(grouped, payload)``: answered requests with the same inputs and outputs
    together, column by column (:func:`unpack_group`); any other event alone (:func:`unpack`). Events of a
    group keep their order; a batch's groups follow one another, as the log's own batches do."""
    groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[PredictionEvent]] = {}
    out: list[tuple[bool, bytes]] = []
    for e in events:
        if e.status == 200 and e.inputs:
            groups.setdefault((tuple(e.inputs), tuple(e.outputs)), []).append(e)
        else:
            out.append((False, pack(e)))
    for (ins, outs), members in groups.items():
        grouped = _pack_group(ins, outs, members)
        if grouped is not None:
            out.append((True, grouped))
            continue
        # some arrays of another dtype or width: group by each event's whole schema instead (rare, dearer)
        exact: dict[bytes | None, list[PredictionEvent]] = {}
        for e in members:
            fixed = _schema([*e.inputs.items(), *e.outputs.items()])
            exact.setdefault(None if fixed is None else fixed[0], []).append(e)
        for schema, same in exact.items():
            grouped = _pack_group(ins, outs, same) if schema is not None and len(same) > 1 else None
            out += [(True, grouped)] if grouped is not None else [(False, pack(e)) for e in same]
    return out


def _pack_group(ins: tuple[str, ...], outs: tuple[str, ...], events: list[PredictionEvent]) -> bytes | None:
    """One payload for answered events with the same input and output names; None unless every array of a
    name has one fixed-size dtype and one width, and every event's arrays one row count."""
    columns = [[e.inputs[n] for e in events] for n in ins] + [[e.outputs[n] for e in events] for n in outs]
    try:
        rows = [len(a) for a in columns[0]]
        for col in columns:
            if len({a.dtype for a in col}) != 1 or col[0].dtype.hasobject or [len(a) for a in col] != rows:
                return None
        arrays = [np.concatenate(col) for col in columns]  # a width that differs raises
        texts = orjson.dumps([[e.id for e in events], [e.model for e in events], [e.error for e in events],
                              [e.client_id for e in events]])
    except (TypeError, ValueError, AttributeError, orjson.JSONEncodeError):  # 0-d, a list, ...
        return None
    fixed = _schema([*zip(ins + outs, (a[:0] for a in arrays), strict=True)])
    if fixed is None:
        return None
    schema = fixed[0]
    parts = [_GROUP.pack(len(events), len(ins), len(schema)), schema, np.array(rows, np.uint32).tobytes(),
             np.array([e.ts for e in events], np.float64).tobytes(),
             np.array([e.version for e in events], np.int64).tobytes(),
             np.array([e.latency_ms for e in events], np.float64).tobytes(),
             np.array([e.status for e in events], np.int32).tobytes(), _STR.pack(len(texts)), texts]
    parts += [a.tobytes() for a in arrays]
    return b"".join(parts)


def unpack_group(data: bytes) -> list[PredictionEvent]:
    """The events :func:`pack_many` grouped; their arrays are views of one array per column."""
    try:
        n, n_in, schema_len = _GROUP.unpack_from(data, 0)
        at = _GROUP.size
        layout = _layout(bytes(data[at:at + schema_len]))
        at += schema_len

        def column(dtype: Any, count: int) -> np.ndarray:
            nonlocal at
            size = np.dtype(dtype).itemsize * count
            if at + size > len(data):
                raise ValueError("it ends early")
            arr = np.frombuffer(data, dtype, count, at)
            at += size
            return arr

        rows = column(np.uint32, n)
        ts, version, latency = column(np.float64, n).tolist(), column(np.int64, n).tolist(), \
            column(np.float64, n).tolist()
        status = column(np.int32, n).tolist()
        (size,) = _STR.unpack_from(data, at)
        ids, models, errors, clients = orjson.loads(data[at + 4:at + 4 + size])
        at += 4 + size
        total = int(rows.sum(dtype=np.int64))
        cols = [(name, column(dtype, total * items).reshape((total, *trail))) for name, dtype, trail, items in layout]
        if at != len(data) or not len(ids) == len(models) == len(errors) == len(clients) == n:
            raise ValueError("it does not add up")
    except (struct.error, TypeError, ValueError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"not a packed group of prediction events: {exc}") from None
    ends = np.cumsum(rows, dtype=np.int64).tolist()
    events = []
    start = 0
    for i in range(n):
        end = ends[i]
        arrays = [(name, col[start:end]) for name, col in cols]
        events.append(PredictionEvent(id=ids[i], ts=ts[i], model=models[i], version=version[i],
                                      inputs=dict(arrays[:n_in]), outputs=dict(arrays[n_in:]),
                                      latency_ms=latency[i], status=status[i], error=errors[i], client_id=clients[i]))
        start = end
    return events
