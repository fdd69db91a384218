"""The double-precision graph: trees that compare in double, casts around float-only kernels.

skl2onnx builds a whole graph in double when its inputs are double, but

* its tree converters store thresholds as float attributes (``ai.onnx.ml`` opset 1): a value one
  double-ulp above a threshold (a test value halfway between two training values, as
  HistGradientBoosting's midpoint thresholds are) rounds onto it in float and takes the other
  branch. The tree converters emit opset-3 trees with ``nodes_values_as_tensor`` in
  double, which ONNX Runtime compares in double (see :mod:`nbdeploy.convert.trees`);
* scikit-learn's own trees (not HistGradientBoosting) compare ``float32(x) <= t``; in double the
  graph compares ``x <= w`` with ``w`` the largest double for which both agree
  (:func:`double_threshold`; skl2onnx's own search for it can loop forever);
* ONNX Runtime's tree and SVM kernels output ``float`` (and ``SVMRegressor`` takes only ``float``):
  :func:`cast_float_kernels` casts their float outputs back to double for the rest of the graph,
  and the input of a kernel without double thresholds to float.

(The imputer, which has no double kernel at all, is built from ``IsNaN`` + ``Where``: see
:mod:`nbdeploy.convert.converters`.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

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


def double_threshold(t: float) -> float:
    """The largest double ``w`` with ``x <= w`` exactly when ``float32(x) <= t``, for every double ``x``."""
    f = np.float32(t)
    if np.float64(f) > t:
        f = np.nextafter(f, np.float32(-np.inf))
    up = np.nextafter(f, np.float32(np.inf))
    mid = (np.float64(f) + np.float64(up)) / 2  # exact: halfway between two adjacent floats
    ties_to_f = (np.array(f).view(np.uint32) & 1) == 0  # round-half-to-even keeps f at the midpoint
    return float(mid if ties_to_f else np.nextafter(mid, -np.inf))


@contextmanager
def exact_double_thresholds() -> Iterator[None]:
    """During a double-precision conversion, skl2onnx adjusts tree thresholds with :func:`double_threshold`."""
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.sklearn_threshold

    def adjusted(dy: float, dtype: Any, mode: str) -> Any:
        if dtype == np.float64 and mode == "BRANCH_LEQ":
            return np.float64(double_threshold(float(dy)))
        return original(dy, dtype, mode)

    tree_ensemble.sklearn_threshold = adjusted
    try:
        yield
    finally:
        tree_ensemble.sklearn_threshold = original
