"""``KBinsDiscretizer`` as scikit-learn computes it, in the graph's float type, with every encoding.

scikit-learn's bin of ``x`` is the number of inner edges ``<= x`` (``np.searchsorted(..., side="right")``),
then one-hot encoded for ``encode="onehot"`` (the default: a sparse matrix in scikit-learn, the same
numbers dense here) or ``"onehot-dense"``. skl2onnx refuses the default encoding and compares in float
even in a double graph, which moves values that sit on an edge (quantile edges are training values).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nbdeploy.convert.nodes import constant, input_columns, node


def kbins_discretizer(scope: Any, operator: Any, container: Any) -> None:
    from onnx import TensorProto
    from skl2onnx.common.data_types import DoubleTensorType

    op = operator.raw_operator
    double = isinstance(operator.outputs[0].type, DoubleTensorType)
    float_type = TensorProto.DOUBLE if double else TensorProto.FLOAT
    columns = input_columns(scope, container, operator.inputs)
    axis = constant(scope, container, "axis", TensorProto.INT64, [1])
    parts = []
    for (name, _), edges, n_bins in zip(columns, op.bin_edges_, op.n_bins_, strict=True):
        x = node(scope, container, "Cast", [name], to=float_type)
        inner = constant(scope, container, "edges", float_type, np.asarray(edges[1:-1], dtype=np.float64))
        below = node(scope, container, "Cast", [node(scope, container, "LessOrEqual", [inner, x])],
                     to=TensorProto.INT64)
        bins = node(scope, container, "ReduceSum", [below, axis], keepdims=1)  # [n, 1]
        if op.encode == "ordinal":
            parts.append(node(scope, container, "Cast", [bins], to=float_type))
            continue
        every = constant(scope, container, "bins", TensorProto.INT64, np.arange(int(n_bins)))
        parts.append(node(scope, container, "Cast", [node(scope, container, "Equal", [bins, every])], to=float_type))
    joined = node(scope, container, "Concat", parts, axis=1) if len(parts) > 1 else parts[0]
    container.add_node("Identity", [joined], [operator.outputs[0].full_name], name=scope.get_unique_operator_name("Id"))


def kbins_shape(double: bool) -> Any:
    """One column per feature (``ordinal``) or per bin (one-hot), in the graph's float type."""
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    def calculate(operator: Any) -> None:
        op = operator.raw_operator
        width = len(op.n_bins_) if op.encode == "ordinal" else int(np.sum(op.n_bins_))
        kind = DoubleTensorType if double else FloatTensorType
        operator.outputs[0].type = kind([operator.inputs[0].get_first_dimension(), width])

    return calculate
