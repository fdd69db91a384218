"""Does the ONNX model predict what the scikit-learn model predicts? Measured, not assumed."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from nbdeploy.signature import Signature

MIN_AGREEMENT = 0.999
MAX_PROBA_DIFF = 1e-4
MAX_RELATIVE_DIFF = 1e-4


@dataclass
class FidelityReport:
    """Label agreement and worst numeric difference between scikit-learn and ONNX Runtime."""

    task: str
    n: int
    precision: str  # FP32 | FP64: the float type of the served model's inputs
    agreement: float | None  # share of equal labels (classification, clustering)
    max_abs_diff: float  # probabilities (classification) or predicted values (regression)
    max_rel_diff: float | None  # regression only
    disagreeing_rows: list[int] = field(default_factory=list)
    passed: bool = True
    thresholds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        if self.task == "regression":
            figures = f"max |diff| {self.max_abs_diff:.2g}, max relative diff {self.max_rel_diff:.2g}"
        else:
            figures = f"labels agree on {self.agreement:.2%} of {self.n} rows, max probability diff {self.max_abs_diff:.2g}"
        return f"{'passed' if self.passed else 'FAILED'} ({self.precision}): {figures}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def onnx_predictions(session: Any, signature: Signature, X: Any) -> dict[str, np.ndarray]:
    """Run an in-process ONNX Runtime session on user data, through the signature's checks."""
    feeds = signature.feeds(signature.tensors_of(X))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def check(model: Any, session: Any, signature: Signature, task: str, X: Any, precision: str,
          min_agreement: float = MIN_AGREEMENT, max_diff: float = MAX_PROBA_DIFF,
          max_rel: float = MAX_RELATIVE_DIFF) -> FidelityReport:
    """Compare ``model`` (scikit-learn) with ``session`` (ONNX Runtime) on ``X``."""
    got = onnx_predictions(session, signature, X)
    expected_label = np.asarray(model.predict(X))
    onnx_label = got["label"]
    n = len(expected_label)
    if task == "regression":
        want = expected_label.astype(np.float64).ravel()
        have = onnx_label.astype(np.float64).ravel()
        diff = np.abs(want - have)
        scale = np.maximum(np.abs(want), 1.0)
        rel = diff / scale
        bad = np.flatnonzero(rel > max_rel)
        return FidelityReport(task, n, precision, None, float(diff.max(initial=0.0)), float(rel.max(initial=0.0)),
                              bad[:20].tolist(), bool(len(bad) == 0), {"max_rel_diff": max_rel})
    same = _labels_equal(expected_label, onnx_label)
    agreement = float(same.mean()) if n else 1.0
    max_abs = 0.0
    if task == "classification" and "probabilities" in got and hasattr(model, "predict_proba"):
        want_p = np.asarray(model.predict_proba(X), dtype=np.float64)
        max_abs = float(np.abs(want_p - got["probabilities"].astype(np.float64)).max(initial=0.0))
    bad = np.flatnonzero(~same)
    passed = agreement >= min_agreement and max_abs <= max_diff
    return FidelityReport(task, n, precision, agreement, max_abs, None, bad[:20].tolist(), passed,
                          {"min_agreement": min_agreement, "max_proba_diff": max_diff})


def _labels_equal(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    if a.dtype.kind in "OUS" or b.dtype.kind in "OUS":
        return np.array([str(x) == str(y) for x, y in zip(a, b, strict=True)], dtype=bool)
    return a == b
