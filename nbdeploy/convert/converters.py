"""skl2onnx converters that nbdeploy swaps in, so the ONNX graph computes what scikit-learn does.

* Missing strings: JSON and the V2 binary format have no "missing" string, so a missing value in a
  text column travels as :data:`~nbdeploy.signature.MISSING_STRING`. scikit-learn sees ``NaN`` /
  ``None`` there; these converters make the graph treat the sentinel exactly as scikit-learn treats
  the missing value (a category of its own in encoders, the thing an imputer replaces).
* ``OrdinalEncoder``: scikit-learn encodes a missing value as ``encoded_missing_value`` (NaN by
  default, which HistGradientBoosting handles natively); skl2onnx gives it a category index.
* Trees: see :mod:`nbdeploy.convert.trees`; HistGradientBoosting's native categorical splits:
  :mod:`nbdeploy.convert.categorical`.
* Isotonic calibration (:mod:`~nbdeploy.convert.calibration`), ``TargetEncoder``
  (:mod:`~nbdeploy.convert.target_encoding`), ``KBinsDiscretizer`` (:mod:`~nbdeploy.convert.binning`),
  ``QuantileTransformer`` (:mod:`~nbdeploy.convert.quantiles`), ``FunctionTransformer`` with NumPy
  functions (:mod:`~nbdeploy.convert.ufuncs`), distance-weighted k-NN (:mod:`~nbdeploy.convert.neighbors`),
  ``SplineTransformer`` (:mod:`~nbdeploy.convert.splines`, which skl2onnx has no converter for).
* Double precision: ONNX Runtime has no double ``Imputer`` kernel, so a double-precision imputer is
  built from ``IsNaN``/``Equal`` + ``Where`` with the statistics kept in double.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import numpy as np

from nbdeploy.convert.categories import is_missing, text_forms
from nbdeploy.convert.nodes import node
from nbdeploy.signature import MISSING_STRING

Converter = Callable[[Any, Any, Any], None]


def custom_converters(precision: str) -> tuple[dict[type, Converter], dict[type, Callable[[Any], None]]]:
    """Converters and shape calculators to pass to ``convert_sklearn`` for this float precision."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import (
        FunctionTransformer,
        KBinsDiscretizer,
        OneHotEncoder,
        OrdinalEncoder,
        QuantileTransformer,
        SplineTransformer,
        TargetEncoder,
    )
    from sklearn.svm import SVC, NuSVC

    from nbdeploy.convert import categorical
    from nbdeploy.convert.binning import kbins_discretizer, kbins_shape
    from nbdeploy.convert.calibration import calibrated_classifier
    from nbdeploy.convert.neighbors import neighbors_converters
    from nbdeploy.convert.quantiles import quantile_transformer
    from nbdeploy.convert.splines import spline_shape, spline_transformer
    from nbdeploy.convert.target_encoding import target_encoder, target_encoder_shape
    from nbdeploy.convert.trees import tree_converters
    from nbdeploy.convert.ufuncs import function_transformer, function_transformer_shape

    double = precision == "FP64"

    def ordinal_shape(operator: Any) -> None:
        from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, Int64TensorType

        op = operator.raw_operator
        width = sum(v.type.shape[1] for v in operator.inputs)
        n = operator.inputs[0].get_first_dimension()
        if np.issubdtype(op.dtype, np.floating):
            kind = DoubleTensorType if double else FloatTensorType
        else:
            kind = Int64TensorType
        operator.outputs[0].type = kind([n, width])

    converters: dict[type, Converter] = {
        SimpleImputer: _imputer, OneHotEncoder: _one_hot, OrdinalEncoder: _ordinal, SVC: _svc, NuSVC: _svc,
        CalibratedClassifierCV: calibrated_classifier, FunctionTransformer: function_transformer,
        TargetEncoder: target_encoder(double), KBinsDiscretizer: kbins_discretizer,
        QuantileTransformer: quantile_transformer, SplineTransformer: spline_transformer,
        Pipeline: _nested_pipeline, **tree_converters(), **neighbors_converters(),
    }
    hist = (HistGradientBoostingClassifier, HistGradientBoostingRegressor)
    for cls in hist:  # native categorical splits; the tree converters otherwise
        converters[cls] = categorical.hist_gradient_boosting(converters[cls], double)
    shapes = {OrdinalEncoder: ordinal_shape, FunctionTransformer: function_transformer_shape,
              TargetEncoder: target_encoder_shape(double), KBinsDiscretizer: kbins_shape(double),
              SplineTransformer: spline_shape(double),
              **dict.fromkeys(hist, categorical.shape_calculator(double))}
    return {cls: _own_operator_only(fn) for cls, fn in converters.items()}, shapes


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


def _nested_pipeline(scope: Any, operator: Any, container: Any) -> None:
    """A pipeline inside another estimator (a calibrated, voting or stacking classifier): skl2onnx's
    converter, except that it asks ``zipmap=False`` only of classifiers whose converter takes it
    (LinearSVC's does not)."""
    from skl2onnx._parse import _parse_sklearn
    from skl2onnx.common._apply_operation import apply_cast
    from skl2onnx.common.data_types import guess_proto_type

    from nbdeploy.convert.steps import classifier_options

    inputs = operator.inputs
    for _, step in operator.raw_operator.steps:
        for key, options in classifier_options(step).items():
            if options:
                scope.add_options(key, options)
                container.add_options(key, options)
        inputs = _parse_sklearn(scope, step, inputs, custom_parsers=None)
    if len(inputs) != len(operator.outputs):
        raise RuntimeError(f"the pipeline's last step gives {len(inputs)} outputs where {len(operator.outputs)} "
                           "are expected")
    for made, out in zip(inputs, operator.outputs, strict=True):
        name = scope.get_unique_operator_name("Pipeline")
        if isinstance(out.type, type(made.type)):
            container.add_node("Identity", made.full_name, out.full_name, name=name)
        else:
            apply_cast(scope, made.full_name, out.full_name, container, operator_name=name,
                       to=guess_proto_type(out.type))


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
            column = node(scope, container, "Gather", [column, index], axis=1)
        codes = np.arange(len(cats), dtype=np.float64)
        if mappings is not None and mappings[i] is not None:
            codes = np.asarray(mappings[i], dtype=np.float64)
        missing_at = [k for k, c in enumerate(cats) if is_missing(c)]
        for k in missing_at:
            codes[k] = float(op.encoded_missing_value)
        if isinstance(var.type, StringTensorType):
            strings, found = [], []
            for k, c in enumerate(cats):
                for key in [MISSING_STRING] if is_missing(c) else text_forms(c):
                    strings.append(key)
                    found.append(codes[k])
            keys, values = {"keys_strings": strings}, np.array(found)
        else:
            if isinstance(var.type, DoubleTensorType):
                column = node(scope, container, "Cast", [column], to=TensorProto.FLOAT)
            kept = [k for k, c in enumerate(cats) if not is_missing(c)]
            keys = {"keys_floats": [float(cats[k]) for k in kept]}
            values = codes[kept]
        encoded = node(scope, container, "LabelEncoder", [column], op_domain="ai.onnx.ml", op_version=2,
                        values_floats=values.astype(np.float32).tolist(), default_float=unknown, **keys)
        if missing_at and not isinstance(var.type, StringTensorType):
            nan_mask = node(scope, container, "IsNaN", [column])
            fill = scope.get_unique_variable_name("ordinal_missing")
            container.add_initializer(fill, TensorProto.FLOAT, [], [float(op.encoded_missing_value)])
            encoded = node(scope, container, "Where", [nan_mask, fill, encoded])
        outputs.append(encoded)
    joined = node(scope, container, "Concat", outputs, axis=1) if len(outputs) > 1 else outputs[0]
    out = operator.outputs[0]
    types = {DoubleTensorType: TensorProto.DOUBLE, FloatTensorType: TensorProto.FLOAT}
    to = types.get(type(out.type), TensorProto.INT64)
    container.add_node("Cast", [joined], [out.full_name], to=to, name=scope.get_unique_operator_name("Cast"))
