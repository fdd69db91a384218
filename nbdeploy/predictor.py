"""A stored version as an in-process predictor over ONNX Runtime: no server, no scikit-learn.

It checks inputs with the same signature the endpoint uses and answers with the same outputs,
so the promotion gate can judge a stored version exactly as it is served.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nbdeploy.errors import InvalidInput
from nbdeploy.signature import Signature
from nbdeploy.store import VersionRecord


class OnnxPredictor:
    """``predict`` / ``predict_proba`` of one stored model version."""

    def __init__(self, onnx_bytes: bytes, meta: dict[str, Any], threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        self.name: str = meta.get("name", "model")
        self.version: int | None = meta.get("version")
        self.signature = Signature.from_dict(meta["signature"])
        self.task: str = meta.get("task", "regression")
        self.nbdeploy_task = self.task  # lets nbdeploy.evaluate score it like an estimator
        self.classes_ = np.asarray(meta.get("classes") or [])
        self._outputs = [o.name for o in self.session.get_outputs()]

    @classmethod
    def from_record(cls, record: VersionRecord, threads: int = 1) -> OnnxPredictor:
        """A stored version, refused unless its file is the one registered."""
        return cls(record.onnx_bytes(), record.meta, threads)

    def _run(self, X: Any, output: str) -> np.ndarray:
        feeds = self.signature.feeds(self.signature.tensors_of(X))
        return self.session.run([output], feeds)[0]

    def predict(self, X: Any) -> np.ndarray:
        """Class labels, cluster ids or predicted values."""
        return self._run(X, "label")

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        if "probabilities" not in self._outputs:
            raise InvalidInput(f"{self.name!r} version {self.version} has no probabilities output")
        return self._run(X, "probabilities")

    def __repr__(self) -> str:
        return f"OnnxPredictor(name={self.name!r}, version={self.version}, task={self.task!r})"
