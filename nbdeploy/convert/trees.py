"""skl2onnx's tree converters, made to compute what scikit-learn computes.

They run unchanged except for the attributes of the tree node they emit:

* missing values: scikit-learn's trees (>= 1.3) send NaN down a learned side of every split
  (``tree_.missing_go_to_left``); skl2onnx drops that and ONNX Runtime sends NaN down the "false"
  side. Here ``nodes_missing_value_tracks_true`` carries it;
* double precision: thresholds and leaf values go in as double tensors (``ai.onnx.ml`` opset 3),
  so a double graph compares in double (see :mod:`nbdeploy.convert.precision`);
* booleans in integer attributes (HistGradientBoosting's missing-value flags) become 0/1, which
  protobuf 7 requires;
* averaged trees (decision trees, random forests, extra trees): every leaf carries the probability
  of every class (skl2onnx keeps only the second of two, and ONNX Runtime computes the first as
  ``1 - p``), unscaled, and the graph divides the sums by the number of trees afterwards. Pure
  leaves (the default) then add up to exact integers in any order and on any number of threads,
  so a row that scikit-learn scores as an exact tie (10 of 20 trees) is an exact tie here too,
  and the label follows scikit-learn's tie rule (see :func:`nbdeploy.convert.graph.canonical_outputs`).
* HistGradientBoosting with native categorical splits: see :mod:`nbdeploy.convert.categorical`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

TREE_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
_DOUBLE_ATTRS = ("nodes_values", "nodes_hitrates", "base_values", "class_weights", "target_weights")


def sklearn_trees(op: Any) -> list[Any] | None:
    """The ``tree_`` objects of a scikit-learn tree model, in the order skl2onnx numbers them."""
    if hasattr(op, "tree_"):
        return [op.tree_]
    estimators = getattr(op, "estimators_", None)
    if estimators is None or type(op).__name__.startswith("HistGradient"):
        return None
    if isinstance(estimators, np.ndarray):  # GradientBoosting*: [n_iterations, n_trees_per_iteration]
        return [e.tree_ for row in estimators for e in row]
    return [e.tree_ for e in estimators]


def averaged_trees(op: Any) -> list[Any] | None:
    """The trees of a classifier whose probabilities are the mean of its trees' (one output only)."""
    from sklearn.base import is_classifier

    if not is_classifier(op) or getattr(op, "n_outputs_", 1) != 1 or isinstance(getattr(op, "estimators_", None),
                                                                                 np.ndarray):
        return None
    return sklearn_trees(op)


def leaf_probabilities(trees: list[Any], n_classes: int) -> dict[str, list[Any]]:
    """``class_*`` attributes giving every leaf its class probabilities as scikit-learn normalises them."""
    attrs: dict[str, list[Any]] = {"class_treeids": [], "class_nodeids": [], "class_ids": [], "class_weights": []}
    for t, tree in enumerate(trees):
        leaves = np.flatnonzero(tree.children_left == -1)
        values = tree.value[leaves, 0, :n_classes]
        totals = values.sum(axis=1, keepdims=True)
        fractions = values / np.where(totals == 0.0, 1.0, totals)
        for leaf, row in zip(leaves.tolist(), fractions, strict=True):
            attrs["class_treeids"] += [t] * n_classes
            attrs["class_nodeids"] += [leaf] * n_classes
            attrs["class_ids"] += list(range(n_classes))
            attrs["class_weights"] += row.tolist()
    return attrs


class _TreeContainer:
    """A skl2onnx container that fixes the attributes of the tree nodes passing through it."""

    def __init__(self, container: Any, trees: list[Any] | None, double: bool, scope: Any = None,
                 averaged: list[Any] | None = None, float_proba: bool = False) -> None:
        self._container = container
        self._trees = trees
        self._double = double
        self._scope = scope
        self._averaged = averaged
        self._float_proba = float_proba  # a double graph whose converter declared float probabilities

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)

    def add_node(self, op_type: str, inputs: Any, outputs: Any, op_domain: str = "", op_version: Any = None,
                 name: Any = None, **attrs: Any) -> Any:
        if op_type in TREE_OPS and op_domain == "ai.onnx.ml":
            if op_type == "TreeEnsembleClassifier" and self._averaged is not None:
                return self._add_averaged(inputs, outputs, op_version, name, attrs)
            attrs = self._fix(attrs)
            if self._double:
                op_version = 3
        return self._container.add_node(op_type, inputs, outputs, op_domain=op_domain, op_version=op_version,
                                        name=name, **attrs)

    def _add_averaged(self, inputs: Any, outputs: list[str], op_version: Any, name: Any,
                      attrs: dict[str, Any]) -> Any:
        """The tree node with whole leaf probabilities, then the division by the number of trees."""
        from onnx import TensorProto

        labels = attrs.get("classlabels_int64s")
        if labels is None:
            labels = attrs["classlabels_strings"]
        attrs.update(leaf_probabilities(self._averaged, len(labels)))
        attrs["post_transform"] = "NONE"
        attrs = self._fix(attrs)
        n_trees = len(self._averaged)
        label, proba = outputs
        summed = self._scope.get_unique_variable_name("tree_sums") if n_trees > 1 else proba
        self._container.add_node("TreeEnsembleClassifier", inputs, [label, summed], op_domain="ai.onnx.ml",
                                 op_version=3 if self._double else op_version, name=name, **attrs)
        if n_trees == 1:
            return None
        # In a double graph the sums arrive in double (see precision.cast_float_kernels).
        count = self._scope.get_unique_variable_name("n_trees")
        self._container.add_initializer(count, TensorProto.DOUBLE if self._double else TensorProto.FLOAT,
                                        [], [float(n_trees)])
        mean = self._scope.get_unique_variable_name("tree_mean") if self._float_proba else proba
        self._container.add_node("Div", [summed, count], [mean], name=self._scope.get_unique_operator_name("Div"))
        if self._float_proba:
            self._container.add_node("Cast", [mean], [proba], to=TensorProto.FLOAT,
                                     name=self._scope.get_unique_operator_name("Cast"))
        return None

    def _fix(self, attrs: dict[str, Any]) -> dict[str, Any]:
        from onnx import numpy_helper

        if self._trees is not None and "nodes_treeids" in attrs:
            trees = self._trees
            attrs["nodes_missing_value_tracks_true"] = [
                int(trees[t].missing_go_to_left[n]) if m != "LEAF" and hasattr(trees[t], "missing_go_to_left") else 0
                for t, n, m in zip(attrs["nodes_treeids"], attrs["nodes_nodeids"], attrs["nodes_modes"], strict=True)
            ]
        elif "nodes_missing_value_tracks_true" in attrs:
            attrs["nodes_missing_value_tracks_true"] = [int(v) for v in attrs["nodes_missing_value_tracks_true"]]
        if self._double:
            for key in _DOUBLE_ATTRS:
                value = attrs.pop(key, None)
                if value is not None:
                    attrs[f"{key}_as_tensor"] = numpy_helper.from_array(np.asarray(value, dtype=np.float64), key)
        return attrs


def tree_converters() -> dict[type, Callable[[Any, Any, Any], None]]:
    """Converters for scikit-learn's tree models, to pass as ``custom_conversion_functions``."""
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.operator_converters import decision_tree as dt
    from skl2onnx.operator_converters import gradient_boosting as gb
    from skl2onnx.operator_converters import random_forest as rf
    from sklearn import ensemble, tree

    originals = {
        tree.DecisionTreeClassifier: dt.convert_sklearn_decision_tree_classifier,
        tree.DecisionTreeRegressor: dt.convert_sklearn_decision_tree_regressor,
        ensemble.RandomForestClassifier: rf.convert_sklearn_random_forest_classifier,
        ensemble.ExtraTreesClassifier: rf.convert_sklearn_random_forest_classifier,
        ensemble.HistGradientBoostingClassifier: rf.convert_sklearn_random_forest_classifier,
        ensemble.RandomForestRegressor: rf.convert_sklearn_random_forest_regressor_converter,
        ensemble.ExtraTreesRegressor: rf.convert_sklearn_random_forest_regressor_converter,
        ensemble.HistGradientBoostingRegressor: rf.convert_sklearn_random_forest_regressor_converter,
        ensemble.GradientBoostingClassifier: gb.convert_sklearn_gradient_boosting_classifier,
        ensemble.GradientBoostingRegressor: gb.convert_sklearn_gradient_boosting_regressor,
    }

    def wrap(convert: Callable[..., None]) -> Callable[[Any, Any, Any], None]:
        def converter(scope: Any, operator: Any, container: Any) -> None:
            double = isinstance(operator.inputs[0].type, DoubleTensorType)
            op = operator.raw_operator
            float_proba = double and len(operator.outputs) > 1 and not isinstance(operator.outputs[1].type,
                                                                                   DoubleTensorType)
            proxy = _TreeContainer(container, sklearn_trees(op), double, scope, averaged_trees(op), float_proba)
            if double:
                convert(scope, operator, proxy, op_version=3)
            else:
                convert(scope, operator, proxy)

        return converter

    return {cls: wrap(fn) for cls, fn in originals.items()}
