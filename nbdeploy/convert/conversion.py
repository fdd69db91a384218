"""scikit-learn -> ONNX, with the graph shaped the way nbdeploy serves it.

Every converted model has the inputs of its :class:`~nbdeploy.signature.Signature` and the
outputs ``label`` (class labels, cluster ids or predicted values, shape ``[n]``) and, for
classifiers that have ``predict_proba``, ``probabilities`` (``[n, n_classes]``; no ZipMap).

``precision`` picks the float type the graph computes in: ``FP32`` (smaller, what most runtimes
expect) or ``FP64`` (what scikit-learn computes in; see :mod:`nbdeploy.convert.precision`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from nbdeploy.convert import graph, steps
from nbdeploy.convert.graph import LABEL, PROBABILITIES
from nbdeploy.errors import ConversionError, InvalidInput
from nbdeploy.signature import Signature

__all__ = ["LABEL", "PROBABILITIES", "Converted", "task_of", "to_onnx"]


@dataclass
class Converted:
    """An ONNX model ready to store, with what the server needs to know about it."""

    onnx_bytes: bytes
    signature: Signature
    task: str  # classification | regression | clustering
    classes: list[Any] | None
    outputs: list[str]
    seconds: float
    precision: str = "FP32"


def task_of(model: Any) -> str:
    """The task a model solves: ``classification``, ``regression`` or ``clustering``; else InvalidInput.

    The one rule for conversion, evaluation and training. A stored version loaded as an
    ``OnnxPredictor`` says its task itself (``nbdeploy_task``); a pipeline is judged by its tags,
    a clusterer also by its final step.
    """
    from sklearn.base import BaseEstimator, ClusterMixin, is_classifier, is_clusterer, is_regressor

    stored_task = getattr(model, "nbdeploy_task", None)
    if stored_task is not None:
        return stored_task
    if not isinstance(model, BaseEstimator):  # sklearn reads estimator tags, which only BaseEstimator has
        raise InvalidInput(f"expected a scikit-learn estimator or pipeline, got {type(model).__name__}")
    if is_classifier(model):
        return "classification"
    if is_regressor(model):
        return "regression"
    if is_clusterer(model) or isinstance(steps.final_step(model), ClusterMixin):
        return "clustering"
    raise InvalidInput(f"{type(steps.final_step(model)).__name__} is not a classifier, regressor or clusterer: "
                       "nbdeploy deploys and evaluates fitted scikit-learn predictors")


def has_probabilities(model: Any) -> bool:
    return task_of(model) == "classification" and hasattr(model, "predict_proba")


def to_onnx(model: Any, signature: Signature, precision: str = "FP32") -> Converted:
    """Convert a fitted estimator; the graph takes ``signature``'s inputs and computes in ``precision``."""
    started = time.perf_counter()
    task = task_of(model)
    if not hasattr(model, "predict"):
        raise ConversionError(f"{type(model).__name__} has no predict(): nbdeploy serves predictions")
    check_supported(model)
    signature = signature.with_float_type(precision)
    if signature.frame and not takes_columns(model):
        text = [s.name for s in signature.inputs if s.datatype == "BYTES"]
        if text:
            raise ConversionError(
                f"column {text[0]!r} holds text but the model does not start with a ColumnTransformer; "
                "put the encoders in a ColumnTransformer (Pipeline([('prep', ColumnTransformer(...)), ...])) "
                "so the deployed model encodes text itself, or make the column a pandas category for a "
                "HistGradientBoosting model's native categorical splits"
            )
        proto = _convert(model, [(graph.FRONT, _tensor_type(precision, [None, len(signature.inputs)]))], precision)
        names = graph.prepend_concat(proto, signature)
    else:
        # Column inputs go in under the user's names (ColumnTransformer selects by them) and the
        # types the converters handle best: numbers (int, bool too) as floats, text as strings.
        inner = [(s.name, _tensor_type("BYTES" if s.datatype == "BYTES" else precision, [None, *s.shape[1:]]))
                 for s in signature.inputs]
        proto = _convert(model, inner, precision)
        names = graph.typed_inputs(proto, signature)
    classes = _classes(model) if task == "classification" else None
    graph.canonical_outputs(proto, has_probabilities(model), classes)
    _check_graph(proto)
    outputs = [LABEL, PROBABILITIES] if has_probabilities(model) else [LABEL]
    return Converted(proto.SerializeToString(), signature.with_onnx_names(names), task, classes, outputs,
                     time.perf_counter() - started, precision)


def check_supported(model: Any) -> None:
    """Fail before converting when a step has no ONNX equivalent, naming it and what to do."""
    found = steps.unsupported(model)
    if found:
        path, est, advice = found
        raise ConversionError(f"cannot convert {steps.describe(path, est)} to ONNX: {advice}")


def starts_with_column_transformer(model: Any) -> bool:
    from sklearn.compose import ColumnTransformer

    return isinstance(steps.first_step(model), ColumnTransformer)


def takes_columns(model: Any) -> bool:
    """The first step reads the frame's columns one by one (a ColumnTransformer, or a HistGradientBoosting
    model with native categorical splits, whose categories may be text): the graph gets one input per column."""
    from nbdeploy.convert.categorical import has_native_categories

    return starts_with_column_transformer(model) or has_native_categories(steps.first_step(model))


def _tensor_type(datatype: str, shape: list[int | None]) -> Any:
    from skl2onnx.common import data_types as t

    types = {"FP32": t.FloatTensorType, "FP64": t.DoubleTensorType, "INT64": t.Int64TensorType,
             "BOOL": t.BooleanTensorType, "BYTES": t.StringTensorType}
    return types[datatype](shape)


def _convert(model: Any, initial_types: list[tuple[str, Any]], precision: str) -> Any:
    from skl2onnx import convert_sklearn

    from nbdeploy.convert.converters import custom_converters
    from nbdeploy.convert.precision import cast_float_kernels, exact_double_thresholds

    converters, shapes = custom_converters(precision)
    try:
        with exact_double_thresholds():
            proto = convert_sklearn(model, initial_types=initial_types, options=steps.classifier_options(model),
                                    target_opset=target_opset(), custom_conversion_functions=converters,
                                    custom_shape_calculators=shapes)
    except Exception as exc:  # skl2onnx raises many types; all mean "cannot convert this model"
        raise ConversionError(explain(model, exc, precision)) from exc
    if precision == "FP64":
        cast_float_kernels(proto)
    graph.portable_text(proto)
    return proto


def target_opset() -> dict[str, int]:
    """The opsets converted graphs use: skl2onnx's latest tested, and ``ai.onnx.ml`` 3, which
    onnxmltools' boosters need and whose tree ops take double thresholds."""
    from skl2onnx import get_latest_tested_opset_version

    return {"": get_latest_tested_opset_version(), "ai.onnx.ml": 3}


def explain(model: Any, exc: BaseException, precision: str = "FP32") -> str:
    """A conversion failure as the user can act on it: which step, what skl2onnx said, what to do."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    detail = detail[:240]
    where = steps.failing_step(model, exc)
    mode = " in double precision" if precision == "FP64" else ""
    if where is not None:
        return (f"cannot convert {steps.describe(*where)} to ONNX{mode} ({detail}); change that step's options "
                "or replace it with a step from docs/supported-models.md")
    return (f"cannot convert {type(model).__name__} to ONNX{mode}: {detail}. Check the model against "
            "docs/supported-models.md, or simplify the pipeline to find the step that fails")


def _check_graph(proto: Any) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:  # our graph edits broke it: a bug, not a user error
        raise ConversionError(f"nbdeploy built an invalid ONNX graph ({str(exc)[:200]}); please report it", 500) \
            from exc


def _classes(model: Any) -> list[Any]:
    classes = getattr(model, "classes_", None)
    if classes is None:
        return []
    return [c.item() if hasattr(c, "item") else c for c in np.asarray(classes)]
