"""``FunctionTransformer`` with a NumPy function that has an exact ONNX form.

``FunctionTransformer(np.log1p)`` computes element by element what ONNX operators compute, so it
converts: ``np.log``, ``np.log1p``, ``np.exp``, ``np.expm1``, ``np.sqrt``, ``np.abs`` and ``np.clip``
with constant bounds in ``kw_args``. Any other function (a lambda, a function of one's own) is Python
that a graph cannot hold, and is refused before converting (see :func:`refusal`). ``inverse_func``
plays no part in predictions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nbdeploy.convert.nodes import constant, node

# NumPy function -> the ONNX operators computing it, in order (a number means "add this constant")
_FORMS: dict[Any, tuple[Any, ...]] = {
    np.log: ("Log",),
    np.log1p: (1.0, "Log"),
    np.exp: ("Exp",),
    np.expm1: ("Exp", -1.0),
    np.sqrt: ("Sqrt",),
    np.abs: ("Abs",),
}
_CLIP_BOUNDS = {"a_min": "min", "a_max": "max", "min": "min", "max": "max"}
SUPPORTED = "np.log, np.log1p, np.exp, np.expm1, np.sqrt, np.abs, np.clip(a_min=..., a_max=...)"


def refusal(transformer: Any) -> str | None:
    """Why a ``FunctionTransformer`` cannot be converted, or ``None`` when it can."""
    func = transformer.func
    if func is None:
        return None
    name = getattr(func, "__name__", type(func).__name__)
    kw_args = transformer.kw_args or {}
    if func is np.clip:
        wrong = [k for k in kw_args if k not in _CLIP_BOUNDS]
        if wrong or not kw_args:
            return (f"it calls np.clip with {'arguments ' + ', '.join(map(repr, wrong)) if wrong else 'no bounds'}; "
                    "give the bounds as kw_args={'a_min': ..., 'a_max': ...}")
        if not all(_is_constant(v) for v in kw_args.values()):
            return "it calls np.clip with bounds that are not numbers; give numbers (or None) as a_min and a_max"
        return None
    if func in _FORMS:
        return None if not kw_args else f"it passes kw_args to np.{name}, which nbdeploy converts only without them"
    return (f"it runs the Python function {name!r}, which an ONNX graph cannot hold; use one of the NumPy "
            f"functions nbdeploy converts ({SUPPORTED}) or built-in scikit-learn steps, or apply the function "
            "to the data before the model (and send transformed data to the endpoint)")


def _is_constant(value: Any) -> bool:
    if value is None:
        return True
    array = np.asarray(value)
    return array.dtype.kind in "iuf" and array.ndim <= 1


def function_transformer(scope: Any, operator: Any, container: Any) -> None:
    """The converter: identity (``func=None``) as skl2onnx does it, the NumPy functions above."""
    from onnx import TensorProto
    from skl2onnx.common.data_types import DoubleTensorType
    from skl2onnx.operator_converters.common import concatenate_variables
    from skl2onnx.operator_converters.function_transformer import convert_sklearn_function_transformer

    op = operator.raw_operator
    if op.func is None:
        convert_sklearn_function_transformer(scope, operator, container)
        return
    reason = refusal(op)
    if reason is not None:
        raise NotImplementedError(reason)
    float_type = TensorProto.DOUBLE if isinstance(operator.outputs[0].type, DoubleTensorType) else TensorProto.FLOAT
    x = concatenate_variables(scope, operator.inputs, container)
    x = node(scope, container, "Cast", [x], to=float_type)  # ints and bools compute as floats, as NumPy does
    if op.func is np.clip:
        for key, value in (op.kw_args or {}).items():
            if value is not None:
                bound = constant(scope, container, _CLIP_BOUNDS[key], float_type, value)
                # Max/Min keep NaN, as np.clip does
                x = node(scope, container, "Max" if _CLIP_BOUNDS[key] == "min" else "Min", [x, bound])
    else:
        for step in _FORMS[op.func]:
            if isinstance(step, str):
                x = node(scope, container, step, [x])
            else:
                x = node(scope, container, "Add", [x, constant(scope, container, "term", float_type, step)])
    container.add_node("Identity", [x], [operator.outputs[0].full_name], name=scope.get_unique_operator_name("Id"))


def function_transformer_shape(operator: Any) -> None:
    """As wide as its inputs together; floats (double in a double graph) whatever came in."""
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    n = operator.inputs[0].get_first_dimension()
    widths = [v.type.shape[1] if len(v.type.shape) > 1 else 1 for v in operator.inputs]
    width = sum(widths) if all(isinstance(w, int) for w in widths) else None
    double = any(isinstance(v.type, DoubleTensorType) for v in operator.inputs)
    if operator.raw_operator.func is None:
        kind = type(operator.inputs[0].type)
    else:
        kind = DoubleTensorType if double else FloatTensorType
    operator.outputs[0].type = kind([n, width])
