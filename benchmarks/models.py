"""The benchmark's models and request bodies: one trained model each, the same behind every server."""

from __future__ import annotations

import pickle
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson


@dataclass
class BenchModel:
    name: str
    title: str
    estimator: Any
    X: Any  # a DataFrame (one input per column) or a float32 array (one input)
    columns: list[str] | None

    @property
    def width(self) -> int:
        return self.X.shape[1]

    def rows(self, n: int) -> Any:
        reps = -(-n // len(self.X))
        if self.columns:
            import pandas as pd

            return pd.concat([self.X] * reps).head(n)
        return np.concatenate([self.X] * reps)[:n]

    def v2_body(self, n: int) -> bytes:
        rows = self.rows(n)
        if self.columns:
            inputs = [{"name": c, "datatype": "FP32", "shape": [n, 1], "data": rows[c].tolist()} for c in self.columns]
        else:
            inputs = [{"name": "input", "datatype": "FP32", "shape": [n, self.width], "data": rows.ravel().tolist()}]
        return orjson.dumps({"inputs": inputs, "outputs": [{"name": "label"}]})

    def peer_body(self, peer: str, n: int) -> bytes:
        rows = self.rows(n)
        data = rows.to_numpy().tolist() if self.columns else rows.tolist()
        if peer == "mlflow":
            if self.columns:
                return orjson.dumps({"dataframe_split": {"columns": self.columns, "data": data}})
            return orjson.dumps({"inputs": data})
        return orjson.dumps({"data": data})

    def save_onnx(self, path: Path) -> Path:
        """nbdeploy's ONNX conversion of the model (what nbdeploy serves), for the FastAPI + ONNX Runtime peer."""
        from nbdeploy.convert.conversion import to_onnx
        from nbdeploy.signature import from_sample

        path.write_bytes(to_onnx(self.estimator, from_sample(self.X)).onnx_bytes)
        return path

    def save_pickle(self, path: Path) -> Path:
        with open(path, "wb") as fh:
            pickle.dump((self.estimator, self.columns), fh)
        return path


def build(which: list[str]) -> list[BenchModel]:
    from sklearn.datasets import load_iris, make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    models = []
    if "lr" in which:
        X, y = load_iris(return_X_y=True, as_frame=True)
        X = X.astype("float32")
        models.append(BenchModel("lr", "logistic regression (iris, 4 column inputs)",
                                 LogisticRegression(max_iter=500).fit(X, y), X, list(X.columns)))
    if "rf" in which:
        X, y = make_classification(n_samples=2000, n_features=20, random_state=0)
        X = X.astype(np.float32)
        models.append(BenchModel("rf", "random forest, 100 trees (20 features, one input)",
                                 RandomForestClassifier(n_estimators=100, random_state=0).fit(X, y), X, None))
    if "mlp" in which:
        X, y = make_classification(n_samples=256, n_features=100, random_state=0)
        X = X.astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a few epochs: the benchmark needs its cost, not its accuracy
            mlp = MLPClassifier(hidden_layer_sizes=(2048, 2048), max_iter=2, random_state=0).fit(X, y)
        models.append(BenchModel("mlp", "MLP 100-2048-2048 (≈1 ms a row in ONNX Runtime)", mlp, X, None))
    return models


def register(store: Any, model: BenchModel) -> None:
    """Convert and store the model as nbdeploy's version 1 (what deploy() does, without a server)."""
    from nbdeploy.convert.conversion import to_onnx
    from nbdeploy.signature import from_sample
    from nbdeploy.store import PRODUCTION

    conv = to_onnx(model.estimator, from_sample(model.X))
    meta = {"task": conv.task, "classes": conv.classes, "outputs": conv.outputs,
            "signature": conv.signature.to_dict()}
    version = store.register(model.name, conv.onnx_bytes, meta)
    store.set_alias(model.name, PRODUCTION, version)
    store.set_serving(model.name, True)
