"""Helpers for the server tests: converted models in a store, request bodies, an in-process client."""

from __future__ import annotations

import warnings
from typing import Any

import pandas as pd

from nbdeploy.convert.conversion import to_onnx
from nbdeploy.signature import from_sample
from nbdeploy.store import PRODUCTION, Store

with warnings.catch_warnings():  # starlette would rather have httpx2; httpx works the same here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

BASE_URL = "http://127.0.0.1"
__all__ = ["BASE_URL", "TestClient", "add_version", "converted", "iris_inputs", "scrape"]


def converted(model: Any, X: Any) -> tuple[bytes, dict[str, Any]]:
    conv = to_onnx(model, from_sample(X))
    meta = {"task": conv.task, "classes": conv.classes, "outputs": conv.outputs,
            "signature": conv.signature.to_dict()}
    return conv.onnx_bytes, meta


def add_version(store: Store, name: str, onnx_meta: tuple[bytes, dict[str, Any]], *,
                alias: str | None = PRODUCTION, serve: bool = True) -> int:
    onnx_bytes, meta = onnx_meta
    version = store.register(name, onnx_bytes, meta)
    if alias:
        store.set_alias(name, alias, version)
    if serve:
        store.set_serving(name, True)
    return version


def iris_inputs(X: pd.DataFrame, datatype: str = "FP32") -> list[dict[str, Any]]:
    return [{"name": c, "datatype": datatype, "shape": [len(X), 1], "data": X[c].tolist()} for c in X.columns]


class Scrape(dict[tuple[str, tuple[tuple[str, str], ...]], float]):
    """The samples of a ``/metrics`` text: ``scrape(text)("name", label="value", ...)`` is one value."""

    def __call__(self, name: str, **labels: str) -> float:
        return self[name, tuple(sorted(labels.items()))]


def scrape(text: str) -> Scrape:
    """Parse a ``/metrics`` text with prometheus_client's own parser (so it also checks the format)."""
    from prometheus_client.parser import text_string_to_metric_families

    return Scrape({(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples})
