"""One writer step of the prediction log: events in, prediction rows and rollup increments out.

No SQL here: :class:`nbdeploy.store.log.PredictionLog` commits what a :class:`Batch` collects.
Inputs are stored as one compact JSON array per row, in the order of the ``columns`` table
(a row whose inputs have other names is stored as a JSON object instead).

A step takes :class:`Part` s of events: a request of 200,000 rows is written as several parts of
at most the writer's ``batch_rows`` rows, so the Python objects a step makes (one tuple, one id
and a few small ``bytes`` per row) stay bounded however large a request was.
"""

from __future__ import annotations

import bisect
import numbers
import operator
from collections.abc import Callable
from itertools import chain, repeat
from typing import Any, NamedTuple

import numpy as np
import orjson

from nbdeploy.store.events import PredictionEvent
from nbdeploy.store.labels import label_key

BUCKET_SECONDS = 10
LATENCY_EDGES_MS = np.geomspace(0.01, 100_000.0, 116)  # ~15 % wide; bucket = searchsorted(edges, ms, "right")
N_LATENCY = len(LATENCY_EDGES_MS) + 1
_EDGES = LATENCY_EDGES_MS.tolist()
_NDIM = operator.attrgetter("ndim")
Rules = dict[str, tuple[Any, Any]]


def row_ids(request_id: str, n: int, start: int = 0, stop: int | None = None) -> list[str]:
    """The prediction ids of a request answered with ``n`` rows (rows ``start`` to ``stop`` of them)."""
    return [request_id] if n == 1 else [f"{request_id}:{i}" for i in range(start, n if stop is None else stop)]


class Part(NamedTuple):
    """Rows ``start`` to ``stop`` of an event answered with ``rows`` rows (a failed request has one)."""

    event: PredictionEvent
    start: int
    stop: int
    rows: int

    @classmethod
    def whole(cls, event: PredictionEvent) -> Part:
        n = event_rows(event)
        return cls(event, 0, n, n)


def logged_names(name: str, width: int) -> list[str]:
    """The log's column names for an input tensor ``width`` columns wide (the monitor reads inputs by them)."""
    if width == 1:
        return [name]
    return [f"x{j}" if name == "input" else f"{name}_{j}" for j in range(width)]


def event_rows(e: PredictionEvent) -> int:
    """The rows an event logs: those answered, or one for a failed request."""
    return _rows(e) if e.status == 200 else 1


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def dumps(value: Any) -> bytes:
    """Compact JSON; NaN becomes null, bytes are decoded.

    Copied into a right-sized ``bytes``: orjson's own result keeps a buffer of at least 4 KiB, so
    a batch holding one per row would hold a thousand times what it stores.
    """
    return bytes(memoryview(orjson.dumps(value, default=_json_default)))


def widen(arr: np.ndarray) -> np.ndarray:
    """Float32/16 as the float64 of their shortest decimal form, so 5.1f logs as 5.1, not 5.099999904."""
    return arr.astype(str).astype(np.float64) if arr.dtype.kind == "f" and arr.dtype.itemsize < 8 else arr


def compile_rules(profile: dict | None) -> Rules:
    """Per feature, what lies outside the training data: ``(min, max)`` or ``(None, known category keys)``."""
    out: Rules = {}
    for name, ref in ((profile or {}).get("columns") or {}).items():
        if ref.get("kind") == "numeric" and ref.get("min") is not None:
            out[name] = (float(ref["min"]), float(ref["max"]))
        elif ref.get("kind") == "categorical":  # a truncated profile cannot tell unseen from rare
            out[name] = (None, None if ref.get("truncated") else set(ref.get("counts") or {}))
    return out


def count(col: list[Any], rule: tuple[Any, Any] | None) -> tuple[int, int, int, int]:
    """(values, missing, out of range, unseen) for one feature's values."""
    missing = oor = unseen = 0
    lo, hi = rule if rule is not None else (None, None)
    for v in col:
        if v is None or v != v:  # NaN
            missing += 1
        elif lo is not None:
            kind = type(v)
            if (kind is float or kind is int or (isinstance(v, numbers.Real) and kind is not bool)) and (
                    v < lo or v > hi):
                oor += 1
        elif hi is not None and label_key(v) not in hi:
            unseen += 1
    return len(col), missing, oor, unseen


def new_roll() -> list[Any]:
    """requests, rows, errors, server_errors, dropped, latency_sum, latency histogram."""
    return [0, 0, 0, 0, 0, 0.0, np.zeros(N_LATENCY, np.int64)]


class Batch:
    """Rows for ``predictions``, and increments for ``rollup`` and ``feature_rollup``.

    Successful events are grouped by model, version, bucket and input names, and each group is
    encoded with whole-array numpy operations: the per-event Python work stays small, so the
    writer thread takes little of the server's time (and its GIL).
    """

    def __init__(self, rules: Callable[[str, int], Rules], names: dict[tuple[str, int], list[str]]) -> None:
        self.rules = rules
        self.names = names  # first-seen input names per (model, version), shared across batches
        self.rows: list[tuple[Any, ...]] = []
        self.roll: dict[tuple[str, int, int], list[Any]] = {}
        self.feats: dict[tuple[str, int, int, str], list[int]] = {}
        self._groups: dict[tuple[Any, ...], list[PredictionEvent]] = {}

    def drops(self, key: tuple[str, int, int], n: int) -> None:
        self.roll.setdefault(key, new_roll())[4] += n

    def add(self, part: Part | PredictionEvent) -> None:
        """Queue a part (or a whole event) for :meth:`finish`; rows keep the order of the groups."""
        if isinstance(part, PredictionEvent):
            part = Part.whole(part)
        e = part.event
        model, version, bucket = str(e.model), int(e.version), int(e.ts // BUCKET_SECONDS)
        key = (model, version, bucket, tuple(e.inputs), tuple(e.outputs)) if e.status == 200 else (id(part),)
        self._groups.setdefault(key, []).append(part)

    def _failed(self, e: PredictionEvent) -> None:
        model, version, bucket = str(e.model), int(e.version), int(e.ts // BUCKET_SECONDS)
        try:
            inputs = dumps({k: np.asarray(v).tolist() for k, v in (e.inputs or {}).items()})
        except Exception:
            inputs = None
        self.rows.append((e.id, e.client_id, e.ts, model, version, inputs, None, None, None, e.latency_ms, e.status,
                          e.error))
        r = self.roll.setdefault((model, version, bucket), new_roll())
        r[0] += 1
        r[2] += 1
        r[3] += int(e.status >= 500)
        r[5] += float(e.latency_ms)
        r[6][bisect.bisect_right(_EDGES, e.latency_ms)] += 1

    def finish(self) -> list[Part]:
        """Encode the grouped predictions; returns the parts that could not be encoded."""
        bad: list[Part] = []
        for key, parts in self._groups.items():
            if len(key) == 1:
                self._failed(parts[0].event)
                continue
            model, version, bucket = key[:3]
            try:
                self._group(model, version, bucket, parts)
            except Exception:  # find the culprits: encode one by one, keep the rest
                for part in parts:
                    try:
                        self._group(model, version, bucket, [part])
                    except Exception:
                        bad.append(part)
        self._groups = {}
        return bad

    def _group(self, model: str, version: int, bucket: int, parts: list[Part]) -> None:
        """Encode parts sharing inputs and outputs; nothing is kept unless all of them encode."""
        sizes = [p.stop - p.start for p in parts]
        total = sum(sizes)
        events = [p.event for p in parts]
        first = events[0]
        whole = all(p.start == 0 and p.stop == p.rows for p in parts)  # the usual case: nothing to slice

        def column(arrays: list[Any]) -> np.ndarray:
            return _stack(arrays if whole else [_slice(a, p) for a, p in zip(arrays, parts, strict=True)], sizes)

        names: list[str] = []
        cols: list[np.ndarray] = []
        for name in first.inputs:
            arr = column([e.inputs[name] for e in events])
            names += logged_names(name, arr.shape[1])
            cols += [arr[:, j] for j in range(arr.shape[1])]
        outputs = {k: column([e.outputs[k] for e in events]) for k in first.outputs}
        label, proba = outputs.pop("label", None), outputs.pop("probabilities", None)
        labels = [None] * total if label is None else [
            v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in widen(label[:, 0]).tolist()]
        inputs = _encode_rows(cols, total, None if self.names.setdefault((model, version), names) == names else names)
        probas = _encode_rows([proba[:, j] for j in range(proba.shape[1])], total, None) if proba is not None else [
            None] * total
        others = [dumps({k: v[i].tolist() for k, v in outputs.items()}) for i in range(total)] if outputs else [
            None] * total
        if whole and total == len(parts):  # single-row requests: one row each, keyed by the request's key
            ids = [e.id for e in events]
            clients = [e.client_id for e in events]
            ts = [e.ts for e in events]
            lat = [e.latency_ms for e in events]
        else:
            ids = [i for p in parts for i in row_ids(p.event.id, p.rows, p.start, p.stop)]
            clients = list(chain.from_iterable(  # on the first row of a request only: feedback finds requests by it
                ([p.event.client_id] if p.start == 0 else [None]) + [None] * (n - 1) for p, n in zip(parts, sizes,
                                                                                                       strict=True)))
            ts = [p.event.ts for p, n in zip(parts, sizes, strict=True) for _ in range(n)]
            lat = [p.event.latency_ms for p, n in zip(parts, sizes, strict=True) for _ in range(n)]
        starts = [p.event for p in parts if p.start == 0]  # a request counts once, with its first part
        latency = np.array([e.latency_ms for e in starts], dtype=float)
        rules = self.rules(model, version)
        counts = [_count_array(col, rules.get(name)) for name, col in zip(names, cols, strict=True)]
        if not len(ids) == len(inputs) == len(labels) == len(probas) == total:
            raise ValueError("inputs and outputs disagree on the number of rows")
        self.rows += zip(ids, clients, ts, repeat(model), repeat(version), inputs, labels, probas, others, lat,
                         repeat(200), repeat(None), strict=False)
        r = self.roll.setdefault((model, version, bucket), new_roll())
        r[0] += len(starts)
        r[1] += total
        r[5] += float(latency.sum())
        r[6] += np.bincount(np.searchsorted(LATENCY_EDGES_MS, latency, side="right"), minlength=N_LATENCY)
        for name, c in zip(names, counts, strict=True):
            acc = self.feats.setdefault((model, version, bucket, name), [0, 0, 0, 0])
            for i in range(4):
                acc[i] += c[i]


def _stack(arrays: list[Any], sizes: list[int]) -> np.ndarray:
    """Per-event arrays of ``sizes`` rows as one 2-D array (a 1-D array is one column)."""
    parts = [a if type(a) is np.ndarray else np.asarray(a) for a in arrays]
    ndims = set(map(_NDIM, parts))
    if len(ndims) == 1 and ndims <= {1, 2} and list(map(len, parts)) == sizes:  # the usual case: no reshape
        return np.concatenate(parts) if 2 in ndims else np.concatenate(parts)[:, None]
    for a, n in zip(parts, sizes, strict=True):
        if (a.size if a.ndim <= 1 else len(a)) != n:
            raise ValueError(f"an input or output has {a.shape[0] if a.ndim else 1} rows, the labels {n}")
    return np.concatenate([a.reshape(n, -1) for a, n in zip(parts, sizes, strict=True)])


def _slice(value: Any, part: Part) -> np.ndarray:
    """A part's rows of one input or output (the whole array for a whole event)."""
    arr = np.asarray(value)
    if part.start == 0 and part.stop == part.rows:
        return arr
    if arr.ndim == 0 or len(arr) != part.rows:
        arr = arr.reshape(part.rows, -1)
    return arr[part.start:part.stop]


def _rows(e: PredictionEvent) -> int:
    label = e.outputs.get("label")
    if label is not None:
        return len(label) if isinstance(label, np.ndarray) and label.ndim else len(np.asarray(label).reshape(-1))
    first = next(iter(e.inputs.values()), None)
    return len(np.asarray(first).reshape(-1)) if first is not None and np.ndim(first) else 1


def _matrix_rows(matrix: np.ndarray) -> list[bytes]:
    """One JSON array per row of a numeric matrix, from one ``orjson.dumps`` of the whole matrix.

    Numbers hold no ``],[``, so splitting the text is exact; and each slice is a right-sized
    ``bytes``, where a small ``orjson.dumps`` result keeps a 4 KiB buffer (200,000 rows: 1.6 GB).
    """
    if not len(matrix):
        return []
    text = orjson.dumps(matrix, option=orjson.OPT_SERIALIZE_NUMPY)  # float32 keeps its short form
    return [b"[" + row + b"]" for row in text[2:-2].split(b"],[")]


def _encode_rows(cols: list[np.ndarray], total: int, names: list[str] | None) -> list[bytes]:
    """One JSON array per row (a JSON object when ``names`` is given)."""
    if names is None and cols and len({c.dtype for c in cols}) == 1 and cols[0].dtype.kind in "fiu":
        return _matrix_rows(np.column_stack(cols))
    lists = [widen(c).tolist() for c in cols]
    values = list(zip(*lists, strict=True)) if lists else [()] * total
    return [dumps(v) for v in values] if names is None else [dumps(dict(zip(names, v, strict=True))) for v in values]


def _count_array(col: np.ndarray, rule: tuple[Any, Any] | None) -> tuple[int, int, int, int]:
    """:func:`count` with numpy for numeric columns."""
    if col.dtype.kind not in "fiu":
        return count(widen(col).tolist(), rule)
    valid = col[~np.isnan(col)] if col.dtype.kind == "f" else col
    lo, hi = rule if rule is not None else (None, None)
    oor = int(np.count_nonzero((valid < lo) | (valid > hi))) if lo is not None else 0
    unseen = count(valid.tolist(), rule)[3] if lo is None and hi is not None else 0
    return len(col), len(col) - len(valid), oor, unseen
