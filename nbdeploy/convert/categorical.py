"""HistGradientBoosting with native categorical splits, as scikit-learn predicts with them.

A model fitted on pandas ``category`` columns (``categorical_features="from_dtype"``, the default)
or with an explicit mask keeps an ``OrdinalEncoder`` inside (``_preprocessor``): categories seen in
training become codes ``0..K-1``; an unknown category and a missing value both become ``NaN``. The
model's features are then reordered, categorical ones first. A categorical split sends a code to
the left when it is in the split's bitset, to the right when it is another known code, and ``NaN``
(missing or unknown) to the side the split learned for missing values (``missing_go_to_left``).

ONNX tree nodes only compare numbers with thresholds, so every categorical split gets a column of
its own: ``0`` when the row's category goes left, ``1`` when it goes right, ``NaN`` when it is
missing or unknown, made by one table lookup per categorical feature (see
:mod:`nbdeploy.convert.categories`). The split becomes ``column <= 0.5`` with missing values
following ``missing_go_to_left``. Numeric splits keep their thresholds, compared in the graph's
float type (double thresholds in double precision, as :mod:`nbdeploy.convert.trees` does).

The trees sum raw scores (``TreeEnsembleRegressor``); the link is applied afterwards with plain
ONNX operators: the logistic function for two classes, softmax for more, ``exp`` for a log link.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nbdeploy.convert.categories import category_index, lookup
from nbdeploy.convert.nodes import Column, constant, input_columns, node

SPLIT_THRESHOLD = 0.5  # between 0 (left) and 1 (right)


def has_native_categories(op: Any) -> bool:
    """A fitted HistGradientBoosting model with at least one categorical feature."""
    mask = getattr(op, "is_categorical_", None)
    return mask is not None and bool(np.asarray(mask).any())


@dataclass
class _Layout:
    """Where each model feature lands in the tree input: numeric features first, then one column per
    categorical split."""

    numeric: dict[int, int] = field(default_factory=dict)  # model feature -> tree input column
    splits: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)  # feature -> (iter, tree, node)
    split_column: dict[tuple[int, int, int], int] = field(default_factory=dict)


def _feature_order(op: Any) -> tuple[np.ndarray, list[np.ndarray]]:
    """The original column of each model feature (categorical first), and each categorical feature's
    known categories (the internal encoder's, without the trailing missing entry)."""
    from sklearn.utils._missing import is_scalar_nan

    preprocessor = getattr(op, "_preprocessor", None)
    if preprocessor is None:
        raise NotImplementedError("this HistGradientBoosting model has no internal category encoder "
                                  "(fitted with an older scikit-learn); refit it with scikit-learn >= 1.4")
    mask = np.asarray(op.is_categorical_, dtype=bool)
    order = np.concatenate([np.flatnonzero(mask), np.flatnonzero(~mask)])
    encoder = preprocessor.named_transformers_["encoder"]
    known = []
    for cats in encoder.categories_:
        cats = np.asarray(cats)
        if len(cats) and is_scalar_nan(cats[-1]):
            cats = cats[:-1]
        known.append(cats)
    return order, known


def _layout(op: Any, n_categorical: int) -> _Layout:
    layout = _Layout()
    n_features = len(op.is_categorical_)
    for feature in range(n_categorical, n_features):
        layout.numeric[feature] = feature - n_categorical
    for i, iteration in enumerate(op._predictors):
        for k, predictor in enumerate(iteration):
            for n, nd in enumerate(predictor.nodes):
                if not nd["is_leaf"] and nd["is_categorical"]:
                    layout.splits.setdefault(int(nd["feature_idx"]), []).append((i, k, n))
    column = n_features - n_categorical
    for feature in sorted(layout.splits):  # the order convert_hist_gradient_boosting concatenates them in
        for key in layout.splits[feature]:
            layout.split_column[key] = column
            column += 1
    return layout


def _in_bitset(bitset: np.ndarray, value: int) -> bool:
    return bool((int(bitset[value // 32]) >> (value % 32)) & 1)


def _split_table(op: Any, keys: list[tuple[int, int, int]], n_categories: int) -> np.ndarray:
    """``[K + 1, splits]``: 0 where category ``c`` goes left, 1 where it goes right; NaN in the last
    row, the code of missing and unknown values."""
    table = np.ones((n_categories + 1, len(keys)))
    table[-1] = np.nan
    for s, (i, k, n) in enumerate(keys):
        predictor = op._predictors[i][k]
        bitset = predictor.raw_left_cat_bitsets[predictor.nodes[n]["bitset_idx"]]
        for c in range(n_categories):
            if _in_bitset(bitset, c):
                table[c, s] = 0.0
    return table


def _tree_attributes(op: Any, layout: _Layout, double: bool) -> dict[str, Any]:
    from onnx import numpy_helper

    n_targets = op.n_trees_per_iteration_
    nodes: dict[str, list[Any]] = {k: [] for k in ("nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes",
                                                   "nodes_values", "nodes_truenodeids", "nodes_falsenodeids",
                                                   "nodes_missing_value_tracks_true", "target_treeids",
                                                   "target_nodeids", "target_ids", "target_weights")}
    for i, iteration in enumerate(op._predictors):
        for k, predictor in enumerate(iteration):
            tree = i * n_targets + k
            for n, nd in enumerate(predictor.nodes):
                nodes["nodes_treeids"].append(tree)
                nodes["nodes_nodeids"].append(n)
                if nd["is_leaf"]:
                    nodes["nodes_modes"].append("LEAF")
                    nodes["nodes_featureids"].append(0)
                    nodes["nodes_values"].append(0.0)
                    nodes["nodes_truenodeids"].append(0)
                    nodes["nodes_falsenodeids"].append(0)
                    nodes["nodes_missing_value_tracks_true"].append(0)
                    nodes["target_treeids"].append(tree)
                    nodes["target_nodeids"].append(n)
                    nodes["target_ids"].append(k)
                    nodes["target_weights"].append(float(nd["value"]))
                    continue
                if nd["is_categorical"]:
                    feature, threshold = layout.split_column[(i, k, n)], SPLIT_THRESHOLD
                else:
                    feature, threshold = layout.numeric[int(nd["feature_idx"])], float(nd["num_threshold"])
                nodes["nodes_modes"].append("BRANCH_LEQ")
                nodes["nodes_featureids"].append(feature)
                nodes["nodes_values"].append(threshold)
                nodes["nodes_truenodeids"].append(int(nd["left"]))
                nodes["nodes_falsenodeids"].append(int(nd["right"]))
                nodes["nodes_missing_value_tracks_true"].append(int(nd["missing_go_to_left"]))
    attrs: dict[str, Any] = {**nodes, "n_targets": n_targets, "aggregate_function": "SUM", "post_transform": "NONE",
                             "base_values": np.asarray(op._baseline_prediction, dtype=np.float64).ravel().tolist()}
    if double:  # compare and add up in double (ai.onnx.ml opset 3)
        for key in ("nodes_values", "target_weights", "base_values"):
            attrs[f"{key}_as_tensor"] = numpy_helper.from_array(np.asarray(attrs.pop(key), dtype=np.float64), key)
    return attrs


def hist_gradient_boosting(fallback: Any, double: bool) -> Any:
    """A converter for HistGradientBoosting models: ``fallback`` for those without categorical features."""

    def converter(scope: Any, operator: Any, container: Any) -> None:
        if has_native_categories(operator.raw_operator):
            convert_hist_gradient_boosting(scope, operator, container, double)
        else:
            fallback(scope, operator, container)

    return converter


def convert_hist_gradient_boosting(scope: Any, operator: Any, container: Any, double: bool) -> None:
    """The converter for a HistGradientBoosting model with native categorical splits."""
    from onnx import TensorProto
    from sklearn.base import is_classifier

    op = operator.raw_operator
    float_type = TensorProto.DOUBLE if double else TensorProto.FLOAT
    order, known = _feature_order(op)
    columns = input_columns(scope, container, operator.inputs)
    if len(columns) != len(order):
        raise RuntimeError(f"the model has {len(order)} features but receives {len(columns)} columns")
    layout = _layout(op, len(known))
    parts = []
    for feature in sorted(layout.numeric):
        name, text = columns[order[feature]]
        if text:
            raise NotImplementedError(f"feature {order[feature]} holds text but the model treats it as a number; "
                                      "declare it categorical (pandas category dtype or categorical_features)")
        parts.append(_as_float(scope, container, name, float_type))
    def category_of(feature: int) -> str:
        column: Column = columns[order[feature]]
        if not column[1]:  # numeric categories compare as numbers in the graph's float type
            column = (_as_float(scope, container, column[0], float_type), False)
        return category_index(scope, container, column, known[feature].tolist(), float_type)

    for feature, keys in sorted(layout.splits.items()):
        table = _split_table(op, keys, len(known[feature]))
        parts.append(lookup(scope, container, table, category_of(feature), float_type))
    if not parts:  # a model without splits: the trees still need an input
        parts.append(lookup(scope, container, np.zeros((len(known[0]) + 1, 1)), category_of(0), float_type))
    features = node(scope, container, "Concat", parts, axis=1) if len(parts) > 1 else parts[0]
    raw = node(scope, container, "TreeEnsembleRegressor", [features], op_domain="ai.onnx.ml",
               op_version=3 if double else 1, **_tree_attributes(op, layout, double))
    if is_classifier(op):
        _classifier_outputs(scope, container, operator, raw, float_type)
    else:
        _regressor_output(scope, container, operator, raw, float_type)


def _as_float(scope: Any, container: Any, name: str, float_type: int) -> str:
    return node(scope, container, "Cast", [name], to=float_type)


def _classifier_outputs(scope: Any, container: Any, operator: Any, raw: str, float_type: int) -> None:
    """Probabilities as scikit-learn's loss computes them, and the first class of maximal probability."""
    from onnx import TensorProto

    op = operator.raw_operator
    raw = _cast_to(scope, container, raw, float_type)
    if op.n_trees_per_iteration_ == 1:  # two classes: p1 = expit(raw), p0 = 1 - p1
        positive = node(scope, container, "Sigmoid", [raw])
        one = constant(scope, container, "one", float_type, 1.0)
        negative = node(scope, container, "Sub", [one, positive])
        proba = node(scope, container, "Concat", [negative, positive], axis=1)
    else:
        proba = node(scope, container, "Softmax", [raw], axis=1)
    label_out, proba_out = operator.outputs[0], operator.outputs[1]
    container.add_node("Cast", [proba], [proba_out.full_name], to=_proto_of(proba_out.type),
                       name=scope.get_unique_operator_name("Cast"))
    classes = np.asarray(op.classes_)
    label_type = _proto_of(label_out.type)
    values = [str(c) for c in classes] if label_type == TensorProto.STRING else classes.astype(np.int64)
    table = scope.get_unique_variable_name("classes")
    container.add_initializer(table, label_type, [len(classes)], list(values))
    first = node(scope, container, "ArgMax", [proba], axis=1, keepdims=0)
    container.add_node("Gather", [table, first], [label_out.full_name], axis=0,
                       name=scope.get_unique_operator_name("Gather"))


def _regressor_output(scope: Any, container: Any, operator: Any, raw: str, float_type: int) -> None:
    op = operator.raw_operator
    raw = _cast_to(scope, container, raw, float_type)
    link = type(op._loss.link).__name__
    if link == "LogLink":
        raw = node(scope, container, "Exp", [raw])
    elif link != "IdentityLink":
        raise NotImplementedError(f"the loss {op.loss!r} (link {link}) has no ONNX form here")
    out = operator.outputs[0]
    container.add_node("Cast", [raw], [out.full_name], to=_proto_of(out.type),
                       name=scope.get_unique_operator_name("Cast"))


def _cast_to(scope: Any, container: Any, name: str, float_type: int) -> str:
    """ONNX Runtime's tree kernels answer in float: a double graph casts back (exact) before the link."""
    from onnx import TensorProto

    if float_type == TensorProto.FLOAT:
        return name
    return node(scope, container, "Cast", [name], to=float_type)


def _proto_of(tensor_type: Any) -> int:
    from skl2onnx.common.data_types import guess_proto_type

    return guess_proto_type(tensor_type)


def shape_calculator(double: bool) -> Any:
    """Output types for a HistGradientBoosting model with native categorical splits: its inputs may be
    text; its probabilities and values take the graph's float type."""
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
    from skl2onnx.common.shape_calculator import _infer_linear_classifier_output_types
    from skl2onnx.shape_calculators.linear_classifier import calculate_linear_classifier_output_shapes
    from skl2onnx.shape_calculators.linear_regressor import calculate_linear_regressor_output_shapes
    from sklearn.base import is_classifier

    kind = DoubleTensorType if double else FloatTensorType

    def calculate(operator: Any) -> None:
        op = operator.raw_operator
        if not has_native_categories(op):
            if is_classifier(op):
                calculate_linear_classifier_output_shapes(operator)
            else:
                calculate_linear_regressor_output_shapes(operator)
            return
        n = operator.inputs[0].get_first_dimension()
        if is_classifier(op):
            _infer_linear_classifier_output_types(operator)
            operator.outputs[1].type = kind([n, len(op.classes_)])
        else:
            operator.outputs[0].type = kind([n, 1])

    return calculate
