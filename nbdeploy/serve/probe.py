"""What the server checks and measures on a version before it takes traffic.

- ``check_self_contained``: the ONNX file carries all its tensors (no external data paths).
- ``warmup_feeds``: plausible rows to run a model on before it serves.
- ``single_row_ms``: the median time of a one-row call.
- ``nan_refusing_inputs``: float inputs where a NaN makes the model answer NaN (or fail): requests
  with missing values there are refused with 400 instead of answering nonsense.
- ``batch_helps``: whether one call on 16 rows beats 16 single-row calls by at least 2x.

The probes that call a model take its signature and its ``run`` function rather than the runtime's
model object, so this module needs nothing from the runtime that uses it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from nbdeploy.errors import NbdeployError
from nbdeploy.signature import DATATYPE_TO_NUMPY, FLOAT_TYPES, Signature

Run = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
"""A model's call: ONNX feeds in, every output out (``ModelRunError`` when ONNX Runtime refuses)."""

BATCH_PROBE_ROWS = 16
BATCH_MIN_GAIN = 2.0


def check_self_contained(data: bytes) -> None:
    """Refuse an ONNX model that refers to external data files (it could read any file).

    External data is named by a ``location`` entry, so a file without those bytes has none: the
    full parse (and the ~100 ms import of ``onnx``) is only needed when they appear.
    """
    if b"location" not in data and b"\x70\x01" not in data:
        return
    import onnx

    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:
        raise NbdeployError(f"the ONNX file cannot be parsed: {exc}", 500) from None
    for tensor in _tensors(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            raise NbdeployError(f"the ONNX file refers to external data (tensor {tensor.name!r}), "
                                "which nbdeploy does not load", 500)


def _tensors(graph: Any) -> Iterable[Any]:
    """Every tensor in a graph, its sparse initializers and the subgraphs of its nodes."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def warmup_feeds(signature: Signature, rows: int = 1) -> dict[str, np.ndarray]:
    """``rows`` plausible rows for each input: zeros, or the first known category."""
    feeds = {}
    for spec in signature.inputs:
        width = spec.shape[1] if len(spec.shape) > 1 else 1
        if spec.datatype == "BYTES":
            value = spec.categories[0] if spec.categories else ""
            feeds[spec.onnx_name] = np.full((rows, width), value, dtype=object)
        else:
            feeds[spec.onnx_name] = np.zeros((rows, width), dtype=DATATYPE_TO_NUMPY[spec.datatype])
    return feeds


def single_row_ms(signature: Signature, run: Run, runs: int = 7) -> float:
    """Median milliseconds of one single-row call, the first (cold) call left out."""
    feeds = warmup_feeds(signature, 1)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run(feeds)
        times.append(time.perf_counter() - started)
    return float(np.median(times[1:] if runs > 1 else times)) * 1000


def nan_refusing_inputs(signature: Signature, run: Run) -> frozenset[str]:
    """Float inputs (user names) where NaN yields a NaN output or an error."""
    refusing = set()
    for spec in signature.inputs:
        if spec.datatype not in FLOAT_TYPES:
            continue
        feeds = warmup_feeds(signature, 1)
        feeds[spec.onnx_name] = np.full_like(feeds[spec.onnx_name], np.nan)
        try:
            outputs = run(feeds)
        except NbdeployError:
            refusing.add(spec.name)
            continue
        if any(v.dtype.kind == "f" and np.isnan(v).any() for v in outputs.values()):
            refusing.add(spec.name)
    return frozenset(refusing)


def batch_helps(signature: Signature, run: Run, single_row_ms: float) -> bool:
    """True when one call on 16 rows costs less than half of 16 single-row calls."""
    feeds = warmup_feeds(signature, BATCH_PROBE_ROWS)
    times = []
    for _ in range(3):
        started = time.perf_counter()
        run(feeds)
        times.append(time.perf_counter() - started)
    batch_ms = min(times) * 1000
    return BATCH_PROBE_ROWS * single_row_ms >= BATCH_MIN_GAIN * batch_ms
