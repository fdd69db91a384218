"""``QuantileTransformer`` (uniform output) as scikit-learn computes it, in one small graph.

scikit-learn maps each value through the training quantiles twice, forwards and backwards, and
averages (``0.5 * (interp(x, q, r) - interp(-x, -q[::-1], -r[::-1]))``, which splits repeated
quantiles evenly), then sets values equal to the first or last quantile to exactly 0 or 1. The
graph computes all columns at once with :func:`nbdeploy.convert.interpolation.interp`; skl2onnx's
converter builds one expression per column and takes minutes for a few dozen columns.
``output_distribution="normal"`` needs the inverse normal CDF, which ONNX does not have.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nbdeploy.convert.interpolation import interp
from nbdeploy.convert.nodes import constant, node


def quantile_transformer(scope: Any, operator: Any, container: Any) -> None:
    from onnx import TensorProto
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.operator_converters.common import concatenate_variables

    op = operator.raw_operator
    if op.output_distribution != "uniform":
        raise NotImplementedError(f"output_distribution={op.output_distribution!r} needs the inverse normal CDF, "
                                  "which ONNX has no operator for; use output_distribution='uniform' (or "
                                  "PowerTransformer for Gaussian-like features)")
    float_type = TensorProto.DOUBLE if isinstance(operator.outputs[0].type, DoubleTensorType) else TensorProto.FLOAT
    x = node(scope, container, "Cast", [concatenate_variables(scope, operator.inputs, container)], to=float_type)
    q = np.asarray(op.quantiles_, dtype=np.float64)  # [n_quantiles, n_features]
    r = np.repeat(np.asarray(op.references_, dtype=np.float64)[:, None], q.shape[1], axis=1)
    forwards = interp(scope, container, x, q, r, float_type)
    minus_x = node(scope, container, "Neg", [x])
    backwards = interp(scope, container, minus_x, -q[::-1], -r[::-1], float_type)
    half = constant(scope, container, "half", float_type, 0.5)
    y = node(scope, container, "Mul", [half, node(scope, container, "Sub", [forwards, backwards])])
    for bound, value in ((q[-1], 1.0), (q[0], 0.0)):  # the last one set wins, as in scikit-learn
        at = node(scope, container, "Equal", [x, constant(scope, container, "bound", float_type, bound)])
        y = node(scope, container, "Where", [at, constant(scope, container, "set", float_type, value), y])
    container.add_node("Identity", [y], [operator.outputs[0].full_name], name=scope.get_unique_operator_name("Id"))
