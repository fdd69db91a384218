"""A :class:`~nbdeploy.store.events.PredictionEvent` as bytes and back, for the log's writer process.

The server packs each event on its request path, so packing is a few ``struct`` calls and one
``tobytes`` per array, no per-row Python work. Numeric arrays travel as their dtype, shape and
raw bytes, exactly. Object arrays (strings, categories, a failed request's raw values) travel as
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


def pack(e: PredictionEvent) -> bytes:
    """One event as bytes (see :func:`unpack`)."""
    parts = [_HEAD.pack(e.ts, e.version, e.latency_ms, e.status, len(e.inputs), len(e.outputs)),
             _text(e.id), _text(e.model), _text(e.error), _text(e.client_id)]
    for name, arr in e.inputs.items():
        parts += _array(name, arr)
    for name, arr in e.outputs.items():
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


def unpack(data: bytes | memoryview) -> PredictionEvent:
    """The event :func:`pack` made; ``ValueError`` when ``data`` is not one."""
    r = _Reader(memoryview(data))
    try:
        ts, version, latency_ms, status, n_in, n_out = r.unpack(_HEAD)
        key, model, error, client_id = r.text(), r.text(), r.text(), r.text()
        inputs = dict(r.array() for _ in range(n_in))
        outputs = dict(r.array() for _ in range(n_out))
    except (struct.error, UnicodeDecodeError, TypeError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"not a packed prediction event: {exc}") from None
    if r.at != len(r.data) or key is None or model is None:
        raise ValueError("not a packed prediction event")
    return PredictionEvent(id=key, ts=ts, model=model, version=version, inputs=inputs, outputs=outputs,
                           latency_ms=latency_ms, status=status, error=error, client_id=client_id)
