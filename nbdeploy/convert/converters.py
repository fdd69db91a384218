"""skl2onnx converters that nbdeploy swaps in, so the ONNX graph computes what scikit-learn does.

* Missing strings: JSON and the V2 binary format have no "missing" string, so a missing value in a
  text column travels as :data:`~nbdeploy.signature.MISSING_STRING`. scikit-learn sees ``NaN`` /
  ``None`` there; these converters make the graph treat the sentinel exactly as scikit-learn treats
  the missing value (a category of its own in encoders, the thing an imputer replaces).
* ``OrdinalEncoder``: scikit-learn encodes a missing value as ``encoded_missing_value`` (NaN by
  default, which HistGradientBoosting handles natively); skl2onnx gives it a category index.
* Trees: see :mod:`nbdeploy.convert.trees`.
* Double precision: ONNX Runtime has no double ``Imputer`` kernel, so a double-precision imputer is
  built from ``IsNaN``/``Equal`` + ``Where`` with the statistics kept in double.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import numpy as np

from nbdeploy.signature import MISSING_STRING

Converter = Callable[[Any, Any, Any], None]


def custom_converters(precision: str) -> tuple[dict[type, Converter], dict[type, Callable[[Any], None]]]:
    """Converters and shape calculators to pass to ``convert_sklearn`` for this float precision."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    def ordinal_shape(operator: Any) -> None:
        from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, Int64TensorType

        op = operator.raw_operator
        width = sum(v.type.shape[1] for v in operator.inputs)
        n = operator.inputs[0].get_first_dimension()
        if np.issubdtype(op.dtype, np.floating):
            kind = DoubleTensorType if precision == "FP64" else FloatTensorType
        else:
            kind = Int64TensorType
        operator.outputs[0].type = kind([n, width])

    from sklearn.svm import SVC, NuSVC

    from nbdeploy.convert.trees import tree_converters

    converters: dict[type, Converter] = {SimpleImputer: _imputer, OneHotEncoder: _one_hot, OrdinalEncoder: _ordinal,
                                         SVC: _svc, NuSVC: _svc, **tree_converters()}
    return {cls: _own_operator_only(fn) for cls, fn in converters.items()}, {OrdinalEncoder: ordinal_shape}


def _own_operator_only(convert: Converter) -> Converter:
    """skl2onnx looks custom converters up by the raw estimator's type, also for helper operators a
    converter declares on the same estimator (SVC's ``SklearnOVRDecisionFunction``): those keep
    their registered converter."""

    def converter(scope: Any, operator: Any, container: Any) -> None:
        from skl2onnx._supported_operators import sklearn_operator_name_map
        from skl2onnx.common._registration import get_converter

        if operator.type != sklearn_operator_name_map.get(type(operator.raw_operator)):
            get_converter(operator.type)(scope, operator, container)
        else:
            convert(scope, operator, container)

    return converter


def is_missing(value: Any) -> bool:
    """``None``, ``NaN`` or ``pd.NA``: what scikit-learn treats as a missing value in an object array."""
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN and pd.NA (whose comparison is NA, truthy-checked below)
    except TypeError:  # pd.NA: "boolean value of NA is ambiguous"
        return True


def with_sentinel(categories: np.ndarray) -> np.ndarray:
    """Object categories with the missing entry (NaN/None) replaced by the sentinel string."""
    if categories.dtype != object:
        return categories
    return np.array([MISSING_STRING if is_missing(c) else c for c in categories], dtype=object)


@contextmanager
def _swapped(operator: Any, raw: Any):
    original = operator.raw_operator
    operator.raw_operator = raw
    try:
        yield
    finally:
        operator.raw_operator = original


def _one_hot(scope: Any, operator: Any, container: Any) -> None:
    from skl2onnx.operator_converters.one_hot_encoder import convert_sklearn_one_hot_encoder

    op = operator.raw_operator
    patched = copy.copy(op)
    patched.categories_ = [with_sentinel(c) for c in op.categories_]
    with _swapped(operator, patched):
        convert_sklearn_one_hot_encoder(scope, operator, container)


def _svc(scope: Any, operator: Any, container: Any) -> None:
    """skl2onnx reads ``probA_``/``probB_``, deprecated with ``probability=True`` in scikit-learn 1.9;
    nbdeploy serves SVC without probabilities, so the warning does not concern the user."""
    import warnings

    from skl2onnx.operator_converters.support_vector_machines import convert_sklearn_svm_classifier

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Attribute `prob[AB]_` was deprecated", category=FutureWarning)
        convert_sklearn_svm_classifier(scope, operator, container)


def _imputer(scope: Any, operator: Any, container: Any) -> None:
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType
    from skl2onnx.operator_converters.imputer_op import convert_sklearn_imputer

    op = operator.raw_operator
    if getattr(op, "add_indicator", False):
        raise NotImplementedError("SimpleImputer(add_indicator=True) is not supported; add a MissingIndicator "
                                  "step in a FeatureUnion instead")
    if isinstance(operator.inputs[0].type, StringTensorType):
        patched = copy.copy(op)
        if is_missing(op.missing_values):
            patched.missing_values = MISSING_STRING
        with _swapped(operator, patched):
            convert_sklearn_imputer(scope, operator, container)
    elif isinstance(operator.inputs[0].type, DoubleTensorType):
        _double_imputer(scope, operator, container)
    else:
        convert_sklearn_imputer(scope, operator, container)


def _double_imputer(scope: Any, operator: Any, container: Any) -> None:
    from onnx import TensorProto
    from skl2onnx.operator_converters.common import concatenate_variables

    op = operator.raw_operator
    stats = np.asarray(op.statistics_, dtype=np.float64)
    if np.isnan(stats).any() and not getattr(op, "keep_empty_features", False):
        raise NotImplementedError("a column was entirely missing when the SimpleImputer was fitted, so "
                                  "scikit-learn drops it; remove that column or set keep_empty_features=True")
    x = concatenate_variables(scope, operator.inputs, container)
    fill = scope.get_unique_variable_name("impute_fill")
    container.add_initializer(fill, TensorProto.DOUBLE, [len(stats)], stats.tolist())
    mask = scope.get_unique_variable_name("impute_mask")
    if is_missing(op.missing_values):
        container.add_node("IsNaN", [x], [mask], name=scope.get_unique_operator_name("IsNaN"))
    else:
        value = scope.get_unique_variable_name("impute_missing")
        container.add_initializer(value, TensorProto.DOUBLE, [], [float(op.missing_values)])
        container.add_node("Equal", [x, value], [mask], name=scope.get_unique_operator_name("Equal"))
    container.add_node("Where", [mask, fill, x], [operator.outputs[0].full_name],
                       name=scope.get_unique_operator_name("Where"))


def _ordinal(scope: Any, operator: Any, container: Any) -> None:
    """One LabelEncoder per column: category -> code, missing -> encoded_missing_value, unknown -> unknown_value."""
    from onnx import TensorProto
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType

    op = operator.raw_operator
    columns = [(v, j if v.type.shape[1] > 1 else None) for v in operator.inputs for j in range(v.type.shape[1])]
    if len(columns) != len(op.categories_):
        raise RuntimeError(f"OrdinalEncoder has {len(op.categories_)} sets of categories for {len(columns)} columns")
    unknown = float(op.unknown_value) if op.handle_unknown == "use_encoded_value" else float("nan")
    mappings = getattr(op, "_default_to_infrequent_mappings", None)
    if not getattr(op, "_infrequent_enabled", False):
        mappings = None
    outputs = []
    for i, ((var, j), cats) in enumerate(zip(columns, op.categories_, strict=True)):
        column = var.full_name
        if j is not None:
            index = scope.get_unique_variable_name("ordinal_index")
            container.add_initializer(index, TensorProto.INT64, [1], [j])
            column = _node(scope, container, "Gather", [column, index], axis=1)
        codes = np.arange(len(cats), dtype=np.float64)
        if mappings is not None and mappings[i] is not None:
            codes = np.asarray(mappings[i], dtype=np.float64)
        missing_at = [k for k, c in enumerate(cats) if is_missing(c)]
        for k in missing_at:
            codes[k] = float(op.encoded_missing_value)
        if isinstance(var.type, StringTensorType):
            keys = {"keys_strings": [MISSING_STRING if is_missing(c) else str(c) for c in cats]}
            values = codes
        else:
            if isinstance(var.type, DoubleTensorType):
                column = _node(scope, container, "Cast", [column], to=TensorProto.FLOAT)
            kept = [k for k, c in enumerate(cats) if not is_missing(c)]
            keys = {"keys_floats": [float(cats[k]) for k in kept]}
            values = codes[kept]
        encoded = _node(scope, container, "LabelEncoder", [column], op_domain="ai.onnx.ml", op_version=2,
                        values_floats=values.astype(np.float32).tolist(), default_float=unknown, **keys)
        if missing_at and not isinstance(var.type, StringTensorType):
            nan_mask = _node(scope, container, "IsNaN", [column])
            fill = scope.get_unique_variable_name("ordinal_missing")
            container.add_initializer(fill, TensorProto.FLOAT, [], [float(op.encoded_missing_value)])
            encoded = _node(scope, container, "Where", [nan_mask, fill, encoded])
        outputs.append(encoded)
    joined = _node(scope, container, "Concat", outputs, axis=1) if len(outputs) > 1 else outputs[0]
    out = operator.outputs[0]
    types = {DoubleTensorType: TensorProto.DOUBLE, FloatTensorType: TensorProto.FLOAT}
    to = types.get(type(out.type), TensorProto.INT64)
    container.add_node("Cast", [joined], [out.full_name], to=to, name=scope.get_unique_operator_name("Cast"))


def _node(scope: Any, container: Any, op_type: str, inputs: list[str], **attrs: Any) -> str:
    out = scope.get_unique_variable_name(op_type.lower())
    container.add_node(op_type, inputs, [out], name=scope.get_unique_operator_name(op_type), **attrs)
    return out
