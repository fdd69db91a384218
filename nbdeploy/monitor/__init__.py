"""Monitoring as pure functions: reference profiles, drift, quality windows and alert levels.

No storage, HTTP or widgets here: the monitor widget and the server's ``/metrics`` call these
over rows read from the store.
"""

from nbdeploy.monitor.alerts import AlertStatus, AlertThresholds, evaluate_alerts
from nbdeploy.monitor.drift import (
    DriftReport,
    DriftThresholds,
    FeatureDrift,
    feature_drift,
    prediction_drift,
)
from nbdeploy.monitor.profile import prediction_profile, reference_profile
from nbdeploy.monitor.quality import (
    classification_quality,
    label_delay,
    regression_quality,
    windowed_quality,
)

__all__ = [
    "AlertStatus",
    "AlertThresholds",
    "DriftReport",
    "DriftThresholds",
    "FeatureDrift",
    "classification_quality",
    "evaluate_alerts",
    "feature_drift",
    "label_delay",
    "prediction_drift",
    "prediction_profile",
    "reference_profile",
    "regression_quality",
    "windowed_quality",
]
