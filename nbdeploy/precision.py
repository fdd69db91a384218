"""The double-precision graph: trees that compare in double, casts around float-only kernels.

skl2onnx builds a whole graph in double when its inputs are double, but

* its tree converters store thresholds as float attributes (``ai.onnx.ml`` opset 1): a value one
  double-ulp above a threshold (a test value halfway between two training values, as
  HistGradientBoosting's midpoint thresholds are) rounds onto it in float and takes the other
  branch. :func:`double_tree_converters` emits opset-3 trees with ``nodes_values_as_tensor`` in
  double, which ONNX Runtime compares in double;
* ONNX Runtime's tree and SVM kernels output ``float`` (and ``SVMRegressor`` takes only ``float``):
  :func:`cast_float_kernels` casts their float outputs back to double for the rest of the graph,
  and the input of a kernel without double thresholds to float.

(The imputer, which has no double kernel at all, is built from ``IsNaN`` + ``Where``: see
:mod:`nbdeploy.converters`.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

TREE_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
_DOUBLE_ATTRS = ("nodes_values", "nodes_hitrates", "base_values", "class_weights", "target_weights")

# ai.onnx.ml op -> indexes of its float-only outputs
FLOAT_ONLY = {
    "TreeEnsembleClassifier": (1,),
    "TreeEnsembleRegressor": (0,),
    "SVMClassifier": (1,),
    "SVMRegressor": (0,),
    "LinearClassifier": (1,),
    "LinearRegressor": (0,),
    "Scaler": (0,),
    "Normalizer": (0,),
}


def cast_float_kernels(model: Any) -> int:
    """Rewrite ``model`` (in place) so float-only ML kernels sit in a double graph; returns the count."""
    from onnx import TensorProto, helper

    graph = model.graph
    float_outputs = {o.name for o in graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT}
    taken = {n for node in graph.node for n in (*node.input, *node.output)}
    nodes = []
    changed = 0

    def fresh(base: str) -> str:
        name, i = base, 0
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        taken.add(name)
        return name

    for node in graph.node:
        outs = FLOAT_ONLY.get(node.op_type) if node.domain == "ai.onnx.ml" else None
        if outs is None:
            nodes.append(node)
            continue
        changed += 1
        if not any(a.name == "nodes_values_as_tensor" for a in node.attribute):
            as_float = fresh(f"{node.input[0]}_as_float")
            nodes.append(helper.make_node("Cast", [node.input[0]], [as_float], to=TensorProto.FLOAT,
                                          name=fresh(f"nbdeploy_cast_in_{node.name}")))
            node.input[0] = as_float
        after = []
        for index in outs:
            if index >= len(node.output) or node.output[index] in float_outputs:
                continue
            original = node.output[index]
            raw = fresh(f"{original}_float")
            node.output[index] = raw
            after.append(helper.make_node("Cast", [raw], [original], to=TensorProto.DOUBLE,
                                          name=fresh(f"nbdeploy_cast_out_{node.name}")))
        nodes.append(node)
        nodes.extend(after)
    del graph.node[:]
    graph.node.extend(nodes)
    return changed


class _DoubleTreeContainer:
    """A skl2onnx container whose tree nodes carry their numbers as double tensors (opset 3)."""

    def __init__(self, container: Any) -> None:
        self._container = container

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)

    def add_node(self, op_type: str, inputs: Any, outputs: Any, op_domain: str = "", op_version: Any = None,
                 name: Any = None, **attrs: Any) -> Any:
        from onnx import numpy_helper

        if op_type in TREE_OPS and op_domain == "ai.onnx.ml":
            for key in _DOUBLE_ATTRS:
                value = attrs.get(key)
                if value is not None:
                    attrs.pop(key)
                    attrs[f"{key}_as_tensor"] = numpy_helper.from_array(np.asarray(value, dtype=np.float64), key)
            op_version = 3
        return self._container.add_node(op_type, inputs, outputs, op_domain=op_domain, op_version=op_version,
                                        name=name, **attrs)


def double_tree_converters() -> dict[type, Callable[[Any, Any, Any], None]]:
    """skl2onnx tree converters, run so that thresholds and leaf values stay double."""
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
            if isinstance(operator.inputs[0].type, DoubleTensorType):
                convert(scope, operator, _DoubleTreeContainer(container), op_version=3)
            else:
                convert(scope, operator, container)

        return converter

    return {cls: wrap(fn) for cls, fn in originals.items()}
