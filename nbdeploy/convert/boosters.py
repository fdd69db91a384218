"""LightGBM and XGBoost inside scikit-learn pipelines, through onnxmltools (optional extra).

``pip install nbdeploy[boosting]`` brings onnxmltools; the converters are registered with
skl2onnx the first time a model is converted, and only for the libraries that are installed.
"""

from __future__ import annotations

import importlib.util
from typing import Any

_done = False


def available() -> dict[str, bool]:
    """Which boosting libraries can be converted here (the library and onnxmltools installed)."""
    tools = importlib.util.find_spec("onnxmltools") is not None
    return {lib: tools and importlib.util.find_spec(lib) is not None for lib in ("lightgbm", "xgboost")}


def register_boosters() -> None:
    """Register onnxmltools' LightGBM/XGBoost converters with skl2onnx (idempotent)."""
    global _done
    if _done:
        return
    _done = True
    found = available()
    if not any(found.values()):
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    classifier_options = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
    if found["lightgbm"]:
        from lightgbm import LGBMClassifier, LGBMRegressor
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        update_registered_converter(LGBMClassifier, "LightGbmLGBMClassifier", calculate_linear_classifier_output_shapes,
                                    convert_lightgbm, options=classifier_options)
        update_registered_converter(LGBMRegressor, "LightGbmLGBMRegressor", calculate_linear_regressor_output_shapes,
                                    convert_lightgbm, options={"split": None})
    if found["xgboost"]:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from xgboost import XGBClassifier, XGBRegressor

        convert = _without_feature_names(convert_xgboost)
        update_registered_converter(XGBClassifier, "XGBoostXGBClassifier", calculate_linear_classifier_output_shapes,
                                    convert, options=classifier_options)
        update_registered_converter(XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes,
                                    convert)


def _without_feature_names(convert: Any) -> Any:
    """onnxmltools reads XGBoost's tree dump, which names features after the DataFrame's columns when the
    model was fitted on one, and accepts only ``f0, f1, ...``: convert with the names hidden for a moment."""

    def converter(scope: Any, operator: Any, container: Any) -> None:
        booster = operator.raw_operator.get_booster()
        names = booster.feature_names
        booster.feature_names = None
        try:
            convert(scope, operator, container)
        finally:
            booster.feature_names = names

    return converter
