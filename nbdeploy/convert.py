"""scikit-learn -> ONNX, with the graph shaped the way nbdeploy serves it.

Every converted model has the inputs of its :class:`~nbdeploy.signature.Signature` and the
outputs ``label`` (class labels, cluster ids or predicted values, shape ``[n]``) and, for
classifiers, ``probabilities`` (``[n, n_classes]``; no ZipMap).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from nbdeploy.errors import ConversionError
from nbdeploy.signature import Signature

LABEL = "label"
PROBABILITIES = "probabilities"
_FRONT = "nbdeploy_features"


@dataclass
class Converted:
    """An ONNX model ready to store, with what the server needs to know about it."""

    onnx_bytes: bytes
    signature: Signature
    task: str  # classification | regression | clustering
    classes: list[Any] | None
    outputs: list[str]
    seconds: float


def task_of(model: Any) -> str:
    from sklearn.base import ClusterMixin, is_classifier, is_regressor

    if is_classifier(model):
        return "classification"
    if is_regressor(model):
        return "regression"
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    if isinstance(final, ClusterMixin):
        return "clustering"
    raise ConversionError(
        f"{type(model).__name__} is not a classifier, regressor or clusterer; "
        "nbdeploy deploys fitted scikit-learn predictors"
    )


def to_onnx(model: Any, signature: Signature) -> Converted:
    """Convert a fitted estimator; the graph takes ``signature``'s inputs."""
    started = time.perf_counter()
    task = task_of(model)
    if signature.frame and not _starts_with_column_transformer(model):
        numeric = {"FP16", "FP32", "FP64", "INT64", "BOOL"}
        text = [s.name for s in signature.inputs if s.datatype not in numeric]
        if text:
            raise ConversionError(
                f"column {text[0]!r} holds text but the model does not start with a ColumnTransformer; "
                "put the encoders in a ColumnTransformer (Pipeline([('prep', ColumnTransformer(...)), ...])) "
                "so the deployed model encodes text itself"
            )
        graph = _convert(model, _one_tensor_types(signature))
        graph = _prepend_concat(graph, signature)
    else:
        graph = _convert(model, _initial_types(signature))
    onnx_names = [i.name for i in graph.graph.input]
    graph = _canonical_outputs(graph, task)
    signature = signature.with_onnx_names(onnx_names)
    classes = _classes(model) if task == "classification" else None
    outputs = [LABEL, PROBABILITIES] if task == "classification" else [LABEL]
    return Converted(graph.SerializeToString(), signature, task, classes, outputs,
                     time.perf_counter() - started)


def _starts_with_column_transformer(model: Any) -> bool:
    from sklearn.compose import ColumnTransformer

    first = model.steps[0][1] if hasattr(model, "steps") else model
    if hasattr(first, "steps"):
        return _starts_with_column_transformer(first)
    return isinstance(first, ColumnTransformer)


def _tensor_type(datatype: str, shape: list[int | None]) -> Any:
    from skl2onnx.common import data_types as t

    types = {
        "FP32": t.FloatTensorType,
        "FP64": t.DoubleTensorType,
        "INT64": t.Int64TensorType,
        "BOOL": t.BooleanTensorType,
        "BYTES": t.StringTensorType,
    }
    return types[datatype](shape)


def _initial_types(signature: Signature) -> list[tuple[str, Any]]:
    return [(s.name if signature.frame else s.onnx_name,
             _tensor_type(s.datatype, [None, *s.shape[1:]])) for s in signature.inputs]


def _one_tensor_types(signature: Signature) -> list[tuple[str, Any]]:
    float_type = next((s.datatype for s in signature.inputs if s.datatype in {"FP32", "FP64"}), "FP32")
    return [(_FRONT, _tensor_type(float_type, [None, len(signature.inputs)]))]


def _classifier_options(model: Any) -> dict[int, dict[str, Any]]:
    """``zipmap: False`` for every classifier inside the model, so probabilities are a tensor."""
    from sklearn.base import is_classifier

    found: dict[int, dict[str, Any]] = {}
    seen: set[int] = set()

    def walk(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if is_classifier(obj):
            found[id(obj)] = {"zipmap": False}
        if hasattr(obj, "get_params"):
            for value in obj.get_params(deep=False).values():
                if isinstance(value, (list, tuple)):
                    for item in value:
                        walk(item[1] if isinstance(item, tuple) and len(item) > 1 else item)
                elif hasattr(value, "get_params"):
                    walk(value)
        for fitted in ("estimator_", "estimators_", "calibrated_classifiers_", "named_steps"):
            value = getattr(obj, fitted, None)
            if isinstance(value, (list, tuple)):
                for item in value:
                    walk(item)
            elif value is not None and hasattr(value, "get_params"):
                walk(value)

    walk(model)
    return found


def _convert(model: Any, initial_types: list[tuple[str, Any]]) -> Any:
    from skl2onnx import convert_sklearn

    try:
        return convert_sklearn(model, initial_types=initial_types, options=_classifier_options(model))
    except Exception as exc:  # skl2onnx raises many types; all mean "cannot convert this model"
        raise ConversionError(_explain(model, exc)) from exc


def _explain(model: Any, exc: Exception) -> str:
    where = unsupported_step(model)
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if where:
        return (f"cannot convert {where} to ONNX ({detail[:200]}); replace it with a built-in "
                "scikit-learn step or register a skl2onnx converter for it")
    return f"cannot convert {type(model).__name__} to ONNX: {detail[:300]}"


def _prepend_concat(graph: Any, signature: Signature) -> Any:
    """Give a bare estimator one ``[-1, 1]`` input per column, concatenated in front of it."""
    from onnx import TensorProto, helper

    front = graph.graph.input[0]
    elem = front.type.tensor_type.elem_type
    nodes, names = [], []
    for spec in signature.inputs:
        proto = {"FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE, "INT64": TensorProto.INT64,
                 "BOOL": TensorProto.BOOL, "FP16": TensorProto.FLOAT16}[spec.datatype]
        name = spec.onnx_name
        if proto != elem:
            nodes.append(helper.make_node("Cast", [name], [f"{name}_cast"], to=elem, name=f"cast_{name}"))
            names.append(f"{name}_cast")
        else:
            names.append(name)
        graph.graph.input.append(helper.make_tensor_value_info(name, proto, [None, 1]))
    nodes.append(helper.make_node("Concat", names, [_FRONT], axis=1, name="nbdeploy_concat"))
    graph.graph.input.remove(front)
    for node in reversed(nodes):
        graph.graph.node.insert(0, node)
    return graph


def _canonical_outputs(graph: Any, task: str) -> Any:
    """Rename outputs to ``label`` / ``probabilities``, with ``label`` always 1-D."""
    from onnx import helper, numpy_helper

    outs = list(graph.graph.output)
    for i, out in enumerate(outs):  # free the canonical names for our own outputs
        _rename(graph, out.name, f"nbdeploy_raw_{i}")
        out.name = f"nbdeploy_raw_{i}"
    first = outs[0]
    elem = first.type.tensor_type.elem_type
    shape_name = "nbdeploy_flat_shape"
    graph.graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), shape_name))
    graph.graph.node.append(helper.make_node("Reshape", [first.name, shape_name], [LABEL], name="nbdeploy_label"))
    new_outputs = [helper.make_tensor_value_info(LABEL, elem, [None])]
    if task == "classification":
        if len(outs) < 2:
            raise ConversionError("the converted classifier has no probability output")
        proba = outs[1]
        graph.graph.node.append(helper.make_node("Identity", [proba.name], [PROBABILITIES], name="nbdeploy_proba"))
        dims = [d.dim_value or None for d in proba.type.tensor_type.shape.dim]
        new_outputs.append(helper.make_tensor_value_info(PROBABILITIES, proba.type.tensor_type.elem_type,
                                                         [None, *dims[1:]]))
    del graph.graph.output[:]
    graph.graph.output.extend(new_outputs)
    return graph


def _rename(graph: Any, old: str, new: str) -> None:
    for node in graph.graph.node:
        for seq in (node.input, node.output):
            for i, name in enumerate(seq):
                if name == old:
                    seq[i] = new


def _classes(model: Any) -> list[Any]:
    classes = getattr(model, "classes_", None)
    if classes is None:
        return []
    return [c.item() if hasattr(c, "item") else c for c in np.asarray(classes)]


def unsupported_step(model: Any, path: tuple[str, ...] = ()) -> str | None:
    """Where in a pipeline the first step without an ONNX converter sits, for error messages."""
    from skl2onnx._supported_operators import sklearn_operator_name_map

    children: list[tuple[str, Any]] = []
    if hasattr(model, "steps"):
        children = list(model.steps)
    elif hasattr(model, "transformer_list"):
        children = list(model.transformer_list)
    elif hasattr(model, "transformers_"):
        children = [(n, t) for n, t, _ in model.transformers_ if not isinstance(t, str)]
    for name, child in children:
        found = unsupported_step(child, (*path, name))
        if found:
            return found
    if not children and type(model) not in sklearn_operator_name_map:
        if not path:
            return f"{type(model).__name__}"
        return "pipeline step " + " -> ".join(repr(p) for p in path) + f" ({type(model).__name__})"
    return None
