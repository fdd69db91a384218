"""``np.interp`` as a graph, column by column: isotonic calibration and QuantileTransformer use it.

NumPy clamps ``x`` to ``[xp[0], xp[-1]]``, finds ``j`` with ``xp[j] <= x < xp[j + 1]`` (the last of
repeated thresholds) and answers ``slope[j] * (x - xp[j]) + fp[j]``. The graph does the same: it
counts the thresholds ``<= x``, gathers the segment's start, value and slope (computed here with
NumPy's own formula, so a double graph matches bit for bit), and the last threshold has slope 0,
so ``x == xp[-1]`` gives ``fp[-1]`` exactly. ``NaN`` stays ``NaN``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nbdeploy.convert.nodes import constant, node


def segments(xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """The slope from each threshold to the next, per column (``[m, k]``); 0 after the last one and
    across repeated thresholds (never used: ``j`` is the last of repeated ones)."""
    slopes = np.zeros_like(fp, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        slopes[:-1] = (fp[1:] - fp[:-1]) / (xp[1:] - xp[:-1])
    slopes[~np.isfinite(slopes)] = 0.0
    return slopes


def interp(scope: Any, container: Any, x: str, xp: np.ndarray, fp: np.ndarray, float_type: int) -> str:
    """``np.interp(x[:, c], xp[:, c], fp[:, c])`` for each column ``c`` of ``x`` (``[n, k]``; ``xp``, ``fp``:
    ``[m, k]``, ``xp`` ascending per column); returns ``[n, k]``."""
    from onnx import TensorProto

    xp = np.asarray(xp, dtype=np.float64)
    fp = np.asarray(fp, dtype=np.float64)
    low = constant(scope, container, "xp_first", float_type, xp[0])
    high = constant(scope, container, "xp_last", float_type, xp[-1])
    x = node(scope, container, "Max", [node(scope, container, "Min", [x, high]), low])  # NaN stays NaN
    thresholds = constant(scope, container, "xp", float_type, xp)
    axis = constant(scope, container, "axis", TensorProto.INT64, [1])
    rows = node(scope, container, "Unsqueeze", [x, axis])  # [n, 1, k] against [m, k]
    passed = node(scope, container, "Cast", [node(scope, container, "LessOrEqual", [thresholds, rows])],
                  to=TensorProto.INT64)
    count = node(scope, container, "ReduceSum", [passed, axis], keepdims=0)  # [n, k]
    one = constant(scope, container, "one", TensorProto.INT64, 1)
    j = node(scope, container, "Sub", [node(scope, container, "Max", [count, one]), one])

    def at(table: np.ndarray, base: str) -> str:
        return node(scope, container, "GatherElements", [constant(scope, container, base, float_type, table), j],
                    axis=0)

    offset = node(scope, container, "Sub", [x, at(xp, "xp")])
    return node(scope, container, "Add", [node(scope, container, "Mul", [at(segments(xp, fp), "slope"), offset]),
                                          at(fp, "fp")])
