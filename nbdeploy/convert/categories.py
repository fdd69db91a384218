"""Graph pieces for categorical columns: find each value's position among known categories.

scikit-learn encoders compare values with the categories they saw in training: a value that is
not one of them is unknown. :func:`category_index` gives, for every row, the position of its value
in a list of categories, or the length of the list when the value is unknown; a caller then gathers
rows of a table with one extra last row for unknown values (what a native categorical split does
with them, what a target encoder fills in).

Text columns compare as strings (a missing value travels as :data:`~nbdeploy.signature.MISSING_STRING`);
numeric columns compare as numbers in the graph's float type, with ``NaN`` as the missing value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nbdeploy.convert.nodes import Column, constant, flat, node
from nbdeploy.signature import MISSING_STRING


def category_index(scope: Any, container: Any, column: Column, categories: Sequence[Any], float_type: int,
                   missing_at: int | None = None) -> str:
    """int64 ``[n]``: where each value of ``column`` sits in ``categories`` (no missing entries), else
    ``len(categories)``; a missing value gets ``missing_at`` when given (a category of its own)."""
    from onnx import TensorProto

    name, text = column
    unknown = len(categories)
    if text:
        pairs = [(key, i) for i, c in enumerate(categories) for key in text_forms(c)]
        keys, values = [k for k, _ in pairs], [v for _, v in pairs]
        if missing_at is not None:
            keys.append(MISSING_STRING)
            values.append(missing_at)
        coded = node(scope, container, "LabelEncoder", [name], op_domain="ai.onnx.ml", op_version=2,
                     keys_strings=keys, values_int64s=values, default_int64=unknown)
        return flat(scope, container, coded)
    known = constant(scope, container, "categories", float_type, np.asarray(categories, dtype=np.float64))
    equal = node(scope, container, "Equal", [name, known])  # [n, K]; NaN equals nothing
    as_float = node(scope, container, "Cast", [equal], to=TensorProto.FLOAT)
    # A last column of 0.5 makes ArgMax land on it exactly when no category matched.
    pads = constant(scope, container, "pads", TensorProto.INT64, [0, 0, 0, 1])
    half = constant(scope, container, "half", TensorProto.FLOAT, 0.5)
    padded = node(scope, container, "Pad", [as_float, pads, half])
    index = node(scope, container, "ArgMax", [padded], axis=1, keepdims=0)
    if missing_at is None:
        return index
    is_nan = flat(scope, container, node(scope, container, "IsNaN", [name]))
    at = constant(scope, container, "missing_at", TensorProto.INT64, missing_at)
    return node(scope, container, "Where", [is_nan, at, index])


def is_missing(value: Any) -> bool:
    """``None``, ``NaN`` or ``pd.NA``: what scikit-learn treats as a missing value in an object array."""
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN; pd.NA's comparison is NA, whose truth value raises
    except TypeError:
        return True


def text_forms(category: Any) -> list[str]:
    """How a category arrives in a text column: ``str`` of the value; a whole float also as an int.

    A pandas ``category`` column of ints travels as text (``"10"``), but an encoder fitted on it
    while it held missing values stores its categories as floats (``10.0``).
    """
    forms = [str(category)]
    if isinstance(category, (float, np.floating)) and float(category).is_integer():
        forms.append(str(int(category)))
    return forms


def lookup(scope: Any, container: Any, table: np.ndarray, index: str, float_type: int) -> str:
    """``table[index]``: ``[n, table.shape[1]]`` in the graph's float type."""
    rows = constant(scope, container, "table", float_type, table)
    return node(scope, container, "Gather", [rows, index], axis=0)
