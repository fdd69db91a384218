"""k-nearest neighbours with ``weights="distance"``: weighted by the distances, as scikit-learn does.

skl2onnx finds the neighbours with ``TopK(largest=0)`` and then negates the distances it returns
(a leftover from older opsets, where it searched the largest negated distances): every weight
``1 / max(distance, 1e-6)`` becomes ``1e6`` and the model votes uniformly. Here the distances come
back positive, with scikit-learn's rule for a row that has neighbours at distance 0: only those count
(skl2onnx would weigh them ``1e6`` against the others). The rest of skl2onnx's converter is kept: it
weighs each neighbour ``1 / max(distance, 1e-6)``, so exact matches are given distance 1 and the other
neighbours of their row an infinite one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np


@contextmanager
def _positive_distances() -> Iterator[None]:
    from skl2onnx.algebra.onnx_ops import OnnxNeg
    from skl2onnx.operator_converters import nearest_neighbours as module

    original = module.onnx_nearest_neighbors_indices_k

    def nearest(*args: Any, keep_distances: bool = False, op_version: int | None = None, **kwargs: Any) -> Any:
        found = original(*args, keep_distances=keep_distances, op_version=op_version, **kwargs)
        if keep_distances and op_version is not None and op_version >= 11:
            indices, negated = found
            dtype = np.float64 if kwargs.get("dtype") == np.float64 else np.float32
            return indices, _exact_matches_only(OnnxNeg(negated, op_version=op_version), dtype, op_version)
        return found

    module.onnx_nearest_neighbors_indices_k = nearest
    try:
        yield
    finally:
        module.onnx_nearest_neighbors_indices_k = original


def _exact_matches_only(distances: Any, dtype: Any, opv: int) -> Any:
    """Distances that weigh like scikit-learn's ``_get_weights``: in a row with a neighbour at distance
    0, that neighbour 1 and the others infinitely far; other rows unchanged."""
    from onnx import TensorProto
    from skl2onnx.algebra.onnx_ops import OnnxCast, OnnxEqual, OnnxGreater, OnnxReduceSumApi11, OnnxWhere

    exact = OnnxEqual(distances, np.array([0], dtype=dtype), op_version=opv)
    count = OnnxReduceSumApi11(OnnxCast(exact, to=TensorProto.FLOAT, op_version=opv), axes=[1], keepdims=1,
                               op_version=opv)
    any_exact = OnnxGreater(count, np.array([0], dtype=np.float32), op_version=opv)
    only = OnnxWhere(exact, np.array([1], dtype=dtype), np.array([np.inf], dtype=dtype), op_version=opv)
    return OnnxWhere(any_exact, only, distances, op_version=opv)


def neighbors_converters() -> dict[type, Callable[[Any, Any, Any], None]]:
    """skl2onnx's k-NN converters, run with positive distances."""
    from skl2onnx.operator_converters import nearest_neighbours as module
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

    def fixed(convert: Callable[[Any, Any, Any], None]) -> Callable[[Any, Any, Any], None]:
        def converter(scope: Any, operator: Any, container: Any) -> None:
            with _positive_distances():
                convert(scope, operator, container)

        return converter

    return {KNeighborsClassifier: fixed(module.convert_nearest_neighbors_classifier),
            KNeighborsRegressor: fixed(module.convert_nearest_neighbors_regressor)}
