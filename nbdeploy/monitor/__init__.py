"""Monitoring as pure functions: reference profiles, drift, quality and alert levels.

No SQL, HTTP or widgets here (and no scikit-learn: the server imports the monitor for its
``/metrics`` gauges): :class:`nbdeploy.monitor.live.Monitor` applies these to what
:class:`nbdeploy.store.reader.LogReader` reads from the prediction log.
"""

from nbdeploy.monitor.alerts import AlertStatus, AlertThresholds, evaluate_alerts
from nbdeploy.monitor.drift import DriftReport, DriftThresholds, FeatureDrift, feature_drift
from nbdeploy.monitor.profile import reference_profile
from nbdeploy.monitor.quality import classification_quality, label_delay, regression_quality

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
    "reference_profile",
    "regression_quality",
]
