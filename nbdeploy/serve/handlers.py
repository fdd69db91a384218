"""Protocol-level handlers: decoded requests in, plain results out. No HTTP here."""

from __future__ import annotations

from typing import Any

import numpy as np

from nbdeploy import __version__
from nbdeploy.errors import InvalidInput
from nbdeploy.serve.protocol import InferRequest
from nbdeploy.serve.runtime import LoadedModel, Runtime

EXTENSIONS = ["binary_tensor_data", "model_repository"]


def server_metadata() -> dict[str, Any]:
    return {"name": "nbdeploy", "version": __version__, "extensions": EXTENSIONS}


def model_metadata(runtime: Runtime, name: str, version: str | None) -> dict[str, Any]:
    model = runtime.resolve(name, version)
    served = runtime.models()[name]
    versions = [str(model.version)] if version else [str(v) for v in sorted(served.versions)]
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
            **({"classes": model.classes} if model.classes is not None else {}),
        },
    }


def infer(runtime: Runtime, name: str, version: str | None,
          request: InferRequest) -> tuple[LoadedModel, list[tuple[str, np.ndarray]]]:
    """Validate against the model's signature, run it, and return the requested outputs."""
    model = runtime.resolve(name, version)
    tensors = _tensors_by_name(model, request)
    feeds = model.signature.feeds(tensors)
    wanted = _requested_outputs(model, request)
    results = model.run(feeds, wanted)
    return model, [(out, results[out]) for out in wanted]


def _tensors_by_name(model: LoadedModel, request: InferRequest) -> dict[str, np.ndarray]:
    tensors = {t.name: t.data for t in request.inputs}
    spec = model.signature
    # A V2 client may send a DataFrame model's features as one [n, n_columns] tensor.
    if spec.frame and len(tensors) == 1 and len(spec.inputs) > 1:
        (only_name, only), = tensors.items()
        if only_name not in spec.names and np.ndim(only) == 2 and np.shape(only)[1] == len(spec.inputs):
            return {s.name: only[:, i] for i, s in enumerate(spec.inputs)}
    return tensors


def _requested_outputs(model: LoadedModel, request: InferRequest) -> list[str]:
    if not request.outputs:
        return list(model.outputs)
    names = []
    for out in request.outputs:
        if out.name not in model.outputs:
            raise InvalidInput(f"unknown output {out.name!r}; this model has outputs: {', '.join(model.outputs)}")
        names.append(out.name)
    return names
