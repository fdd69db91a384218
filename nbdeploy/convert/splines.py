"""``SplineTransformer`` as scikit-learn computes it: B-spline bases as piecewise polynomials.

Between two knots every B-spline basis function is a polynomial of the spline's degree, so each
feature's bases are tabulated once (SciPy's ``PPoly.from_spline``: one row of coefficients per
knot interval) and the graph finds each value's interval (the knots ``<= x``, kept within the
fitted range ``[t[k], t[n]]``, as SciPy's ``BSpline`` evaluates), gathers its coefficients and
evaluates them with Horner's rule. Beyond the fitted range it follows ``extrapolation``:
``"constant"`` and ``"linear"`` set the boundary bases as scikit-learn does and zero the others;
``"continue"`` (and ``"error"``, which only differs by refusing such values) keeps the boundary
polynomials. Missing values give zeros, as ``handle_missing="zeros"`` does. ``"periodic"`` is
not converted, nor ``"linear"`` with degree 0 or 1 (scikit-learn's answers there are not splines).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nbdeploy.convert.nodes import constant, input_columns, node


def _tables(spline: Any, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Knots, and the power-basis coefficients ``[intervals, degree + 1, n_splines]`` of every basis."""
    from scipy.interpolate import BSpline, PPoly

    knots = np.asarray(spline.t, dtype=np.float64)
    n_splines = spline.c.shape[1]
    columns = [PPoly.from_spline(BSpline(knots, spline.c[:, j], degree)).c for j in range(n_splines)]
    return knots, np.stack(columns, axis=-1).transpose(1, 0, 2)  # [k + 1, intervals] each -> [intervals, k + 1, S]


def _boundaries(op: Any, spline: Any, n_splines: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows below ``xmin`` are ``low + (x - xmin) * low_slope``; above ``xmax``, ``high + (x - xmax) * high_slope``."""
    degree = op.degree
    xmin, xmax = spline.t[degree], spline.t[-degree - 1]
    f_min, f_max = spline(xmin), spline(xmax)
    low, high = np.zeros(n_splines), np.zeros(n_splines)
    low_slope, high_slope = np.zeros(n_splines), np.zeros(n_splines)
    if op.extrapolation == "constant":
        low[:degree], high[-degree:] = f_min[:degree], f_max[-degree:]
    else:  # linear: the boundary bases continue with their slope at the boundary
        fp_min, fp_max = spline(xmin, nu=1), spline(xmax, nu=1)
        for j in range(degree + 1 if degree <= 1 else degree):
            low[j], low_slope[j] = f_min[j], fp_min[j]
            k = n_splines - 1 - j
            high[k], high_slope[k] = f_max[k], fp_max[k]
    return low, low_slope, high, high_slope


def spline_transformer(scope: Any, operator: Any, container: Any) -> None:
    from onnx import TensorProto
    from skl2onnx.common.data_types import DoubleTensorType

    op = operator.raw_operator
    if op.extrapolation == "periodic":
        raise NotImplementedError("extrapolation='periodic' is not converted; use 'constant', 'linear' or 'continue'")
    if op.extrapolation == "linear" and op.degree <= 1 and len(op.bsplines_) > 1:
        # scikit-learn raises its local degree for each feature in turn there: the answers are not splines
        raise NotImplementedError("extrapolation='linear' with degree <= 1 is not converted; use degree >= 2 or "
                                  "extrapolation='constant'")
    float_type = TensorProto.DOUBLE if isinstance(operator.outputs[0].type, DoubleTensorType) else TensorProto.FLOAT
    degree = op.degree
    axis = constant(scope, container, "axis", TensorProto.INT64, [1])
    parts = []
    for (name, _), spline in zip(input_columns(scope, container, operator.inputs), op.bsplines_, strict=True):
        x = node(scope, container, "Cast", [name], to=float_type)  # [n, 1]
        knots, coefficients = _tables(spline, degree)
        n_splines = coefficients.shape[2]
        last = len(knots) - degree - 2  # the last interval inside [t[k], t[n]]
        passed = node(scope, container, "Cast", [node(scope, container, "LessOrEqual", [
            constant(scope, container, "knots", float_type, knots), x])], to=TensorProto.INT64)
        count = node(scope, container, "ReduceSum", [passed, axis], keepdims=0)  # [n]
        interval = node(scope, container, "Min", [
            node(scope, container, "Max", [node(scope, container, "Sub", [
                count, constant(scope, container, "one", TensorProto.INT64, 1)]),
                constant(scope, container, "first", TensorProto.INT64, degree)]),
            constant(scope, container, "last", TensorProto.INT64, last)])
        start = node(scope, container, "Gather", [constant(scope, container, "knots", float_type, knots), interval])
        dx = node(scope, container, "Sub", [x, node(scope, container, "Unsqueeze", [start, axis])])  # [n, 1]
        rows = node(scope, container, "Gather", [constant(scope, container, "pieces", float_type, coefficients),
                                                 interval], axis=0)  # [n, k + 1, S]
        value = None
        for power in range(degree + 1):  # Horner: highest power first
            term = node(scope, container, "Gather", [rows, constant(scope, container, "power", TensorProto.INT64,
                                                                    power)], axis=1)  # [n, S]
            value = term if value is None else node(scope, container, "Add", [
                node(scope, container, "Mul", [value, dx]), term])
        if op.extrapolation in ("constant", "linear"):
            value = _extrapolated(scope, container, op, spline, x, value, n_splines, float_type)
        nan = node(scope, container, "IsNaN", [x])
        value = node(scope, container, "Where", [nan, constant(scope, container, "zero", float_type, 0.0), value])
        if not op.include_bias:  # scikit-learn drops each feature's last basis
            value = node(scope, container, "Slice", [
                value, constant(scope, container, "from", TensorProto.INT64, [0]),
                constant(scope, container, "to", TensorProto.INT64, [n_splines - 1]), axis])
        parts.append(value)
    joined = node(scope, container, "Concat", parts, axis=1) if len(parts) > 1 else parts[0]
    container.add_node("Identity", [joined], [operator.outputs[0].full_name], name=scope.get_unique_operator_name("Id"))


def _extrapolated(scope: Any, container: Any, op: Any, spline: Any, x: str, inside: str, n_splines: int,
                  float_type: int) -> str:
    degree = op.degree
    xmin, xmax = float(spline.t[degree]), float(spline.t[-degree - 1])
    low, low_slope, high, high_slope = _boundaries(op, spline, n_splines)
    result = inside
    for bound, level, slope, outside in ((xmax, high, high_slope, "Greater"), (xmin, low, low_slope, "Less")):
        at = constant(scope, container, "bound", float_type, bound)
        line = node(scope, container, "Add", [constant(scope, container, "level", float_type, level), node(
            scope, container, "Mul", [node(scope, container, "Sub", [x, at]),
                                      constant(scope, container, "slope", float_type, slope)])])
        result = node(scope, container, "Where", [node(scope, container, outside, [x, at]), line, result])
    return result


def spline_shape(double: bool | None = None) -> Any:
    """``n_features_out_`` columns in the graph's float type (by default, double when the input is)."""
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    def calculate(operator: Any) -> None:
        wide = double if double is not None else isinstance(operator.inputs[0].type, DoubleTensorType)
        kind = DoubleTensorType if wide else FloatTensorType
        width = operator.raw_operator.n_features_out_
        operator.outputs[0].type = kind([operator.inputs[0].get_first_dimension(), width])

    return calculate


_registered = False


def register() -> None:
    """Make SplineTransformer known to skl2onnx, which has no converter of its own (idempotent)."""
    global _registered
    if _registered:
        return
    from skl2onnx import update_registered_converter
    from sklearn.preprocessing import SplineTransformer

    update_registered_converter(SplineTransformer, "NbdeploySplineTransformer", spline_shape(), spline_transformer)
    _registered = True
