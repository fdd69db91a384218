"""Protocol-level handlers: decoded requests in, plain results out. No HTTP here."""

from __future__ import annotations

from typing import Any

import numpy as np

from nbdeploy._version import __version__
from nbdeploy.errors import InvalidInput, NotFound
from nbdeploy.serve.batcher import Feeds
from nbdeploy.serve.codecs.v2 import InferRequest
from nbdeploy.serve.runtime import LoadedModel, Runtime
from nbdeploy.signature import MISSING_STRING

EXTENSIONS = ["binary_tensor_data"]


def server_metadata() -> dict[str, Any]:
    return {"name": "nbdeploy", "version": __version__, "extensions": EXTENSIONS}


def model_metadata(runtime: Runtime, name: str, version: str | None,
                   model: LoadedModel | None = None) -> dict[str, Any]:
    """``model``: the version ``version`` names, when the caller has it (:meth:`Runtime.acquire` loads it)."""
    model = model or runtime.resolve(name, version)
    served = runtime.models().get(name)
    if served is None:  # stopped between the two reads
        raise NotFound(f"model {name!r} is not served")
    versions = [str(model.version)] if version else [str(v) for n, v, _ in runtime.loaded() if n == name]
    failed = {str(v): e for (n, v), e in runtime.failed.items() if n == name}
    return {
        "name": name,
        "versions": versions,
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in model.signature.inputs
        ],
        "outputs": [
            {"name": out, "datatype": dt, "shape": [-1] if out == "label" else [-1, len(model.classes or [])]}
            for out, dt in model.outputs.items()
        ],
        "parameters": {
            "model_version": str(model.version),
            "task": model.task,
            "aliases": {a: str(v) for a, v in served.aliases.items()},
            "batching": model.batching,
            **({"input_details": details} if (details := _input_details(model)) else {}),
            **({"classes": model.classes} if model.classes is not None else {}),
            **({"failed_versions": failed} if failed else {}),
        },
    }


def repository_index(runtime: Runtime) -> list[dict[str, Any]]:
    """Every loaded version, aliased or loaded on demand (read-only: this route loads nothing)."""
    index = []
    loaded = runtime.loaded()
    for name in sorted(runtime.models()):
        for number in [v for n, v, _ in loaded if n == name]:
            index.append({"name": name, "version": str(number), "state": "READY", "reason": ""})
        for (failed_name, number), error in sorted(runtime.failed.items()):
            if failed_name == name:
                index.append({"name": name, "version": str(number), "state": "UNAVAILABLE", "reason": error})
    return index


def tensors_by_name(model: LoadedModel, request: InferRequest) -> dict[str, np.ndarray]:
    tensors = {t.name: t.data for t in request.inputs}
    spec = model.signature
    # A V2 client may send a DataFrame model's features as one [n, n_columns] tensor.
    if spec.frame and len(tensors) == 1 and len(spec.inputs) > 1:
        (only_name, only), = tensors.items()
        if only_name not in spec.names and np.ndim(only) == 2 and np.shape(only)[1] == len(spec.inputs):
            return spec.split_columns(only)
    return tensors


def validate(model: LoadedModel, tensors: dict[str, np.ndarray]) -> tuple[Feeds, int]:
    """ONNX feeds for named tensors, checked against the signature; also the number of rows."""
    fast = _fast_feeds(model, tensors) if not model.strict else None
    if fast is not None:
        return fast
    feeds = model.signature.feeds(tensors, no_nan=model.no_nan)
    rows = next(iter(feeds.values())).shape[0] if feeds else 0
    return feeds, rows


def requested_outputs(model: LoadedModel, request: InferRequest) -> list[str]:
    if not request.outputs:
        return list(model.outputs)
    names = []
    for out in request.outputs:
        if out.name not in model.outputs:
            raise InvalidInput(f"unknown output {out.name!r}; this model has outputs: {', '.join(model.outputs)}")
        names.append(out.name)
    return names


def check_output(model: LoadedModel, output: str) -> None:
    if output not in model.outputs:
        raise InvalidInput(f"model {model.name!r} is a {model.task} model without {output!r}; "
                           f"it has outputs: {', '.join(model.outputs)}")


def _fast_feeds(model: LoadedModel, tensors: dict[str, np.ndarray]) -> tuple[Feeds, int] | None:
    """The common case, decided in a few comparisons per input: every input present with the model's
    width and numeric data that ``Signature.feeds`` would only cast (int/float to float). Anything
    else returns None and takes the full check, with its error messages."""
    plan = model.plan
    if len(tensors) != len(plan):
        return None
    feeds: Feeds = {}
    rows = -1
    for name, onnx_name, width, dtype, check_nan in plan:
        arr = tensors.get(name)
        if arr is None:
            return None
        if arr.ndim == 1 and width == 1:
            arr = arr.reshape(-1, 1)
        elif arr.ndim != 2 or arr.shape[1] != width:
            return None
        if arr.dtype != dtype:
            if dtype.kind != "f" or arr.dtype.kind not in "fiu":
                return None
            arr = arr.astype(dtype)
        elif dtype.kind == "O" and any(v is None or type(v) is bytes for v in arr.flat):
            return None  # null (a missing value) and raw bytes are mapped by the full check
        if rows != arr.shape[0]:
            if rows != -1:
                return None
            rows = arr.shape[0]
        if check_nan and (arr.item() != arr.item() if arr.size == 1 else np.isnan(arr).any()):
            return None  # x != x only for NaN; the full check names the row
        feeds[onnx_name] = arr
    return feeds, rows


def _input_details(model: LoadedModel) -> dict[str, dict[str, Any]]:
    """Beyond name/datatype/shape: inputs trained with missing values (send JSON null), known categories."""
    details: dict[str, dict[str, Any]] = {}
    for spec in model.signature.inputs:
        entry: dict[str, Any] = {}
        if spec.has_missing:
            entry["missing_values"] = "send null"
        if spec.categories:
            entry["categories"] = [c for c in spec.categories if c != MISSING_STRING]
        if spec.refuses_unknown:
            entry["unknown_categories"] = "refused (400)"
        if entry:
            details[spec.name] = entry
    return details
