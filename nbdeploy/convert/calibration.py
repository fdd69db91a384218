"""Isotonic calibration (``CalibratedClassifierCV(method="isotonic")``) as scikit-learn computes it.

skl2onnx replaces each isotonic calibrator by the ``y`` of the nearest threshold, which is off by a
few hundredths between thresholds. scikit-learn interpolates linearly between the thresholds
``X_thresholds_`` / ``y_thresholds_`` after clipping the score to ``[X_min_, X_max_]``
(``out_of_bounds="clip"``, what ``CalibratedClassifierCV`` uses), through ``np.interp`` (see
:mod:`nbdeploy.convert.interpolation`). The rest of skl2onnx's converter (the base estimator's
scores, ``1 - p`` for two classes, the normalisation and the average over folds) is kept, except
that a pipeline's final step, like a bare estimator, gives decision scores when it has them: that is
what scikit-learn calibrated (skl2onnx gives probabilities there, for both methods).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from nbdeploy.convert.interpolation import interp
from nbdeploy.convert.nodes import constant, node


def isotonic(scope: Any, container: Any, calibrator: Any, scores: str, float_type: int) -> str:
    """``calibrator.predict(scores)`` for a ``[n, 1]`` column of scores; returns a ``[n, 1]`` column."""
    if calibrator.out_of_bounds != "clip":  # what CalibratedClassifierCV sets
        raise NotImplementedError(f"IsotonicRegression(out_of_bounds={calibrator.out_of_bounds!r}) is not supported")
    low = constant(scope, container, "x_min", float_type, calibrator.X_min_)
    high = constant(scope, container, "x_max", float_type, calibrator.X_max_)
    scores = node(scope, container, "Max", [node(scope, container, "Min", [scores, high]), low])
    x = np.asarray(calibrator.X_thresholds_, dtype=np.float64)
    y = np.asarray(calibrator.y_thresholds_, dtype=np.float64)
    if len(x) == 1:  # one threshold: a constant
        zero = node(scope, container, "Mul", [scores, constant(scope, container, "zero", float_type, 0.0)])
        return node(scope, container, "Add", [zero, constant(scope, container, "only", float_type, y[0])])
    return interp(scope, container, scores, x[:, None], y[:, None], float_type)


@contextmanager
def _faithful_isotonic() -> Iterator[None]:
    """While skl2onnx converts a calibrated classifier, its isotonic step is :func:`isotonic`."""
    from onnx import TensorProto
    from skl2onnx.operator_converters import calibrated_classifier_cv as module

    original = module._transform_isotonic

    def transform(scope: Any, container: Any, model: Any, T: str, k: int, dtype: Any, proto_type: Any) -> str:
        float_type = TensorProto.DOUBLE if np.dtype(dtype) == np.float64 else TensorProto.FLOAT
        return isotonic(scope, container, model.calibrators[k], T, float_type)

    module._transform_isotonic = transform
    try:
        yield
    finally:
        module._transform_isotonic = original


def calibrated_classifier(scope: Any, operator: Any, container: Any) -> None:
    """skl2onnx's ``CalibratedClassifierCV`` converter with faithful isotonic calibration."""
    from skl2onnx.operator_converters.calibrated_classifier_cv import convert_sklearn_calibrated_classifier_cv

    for calibrated in operator.raw_operator.calibrated_classifiers_:
        _scores_from_final_step(scope, container, calibrated.estimator)
    with _faithful_isotonic():
        convert_sklearn_calibrated_classifier_cv(scope, operator, container)


def _scores_from_final_step(scope: Any, container: Any, estimator: Any) -> None:
    """A pipeline is calibrated on its decision scores when its final step has them (scikit-learn's
    ``_get_response_values``): ask that step's converter for raw scores."""
    from skl2onnx._supported_operators import sklearn_operator_name_map
    from skl2onnx.common._registration import get_converter

    from nbdeploy.convert.steps import final_step

    if not hasattr(estimator, "steps"):
        return
    final = final_step(estimator)
    alias = sklearn_operator_name_map.get(type(final))
    if alias is None or not hasattr(final, "decision_function"):
        return
    if "raw_scores" in (get_converter(alias).get_allowed_options() or {}):
        scope.add_options(id(final), {"raw_scores": True})
        container.add_options(id(final), {"raw_scores": True})
