"""``TargetEncoder`` as scikit-learn's ``transform`` computes it (``encodings_`` looked up per category).

skl2onnx's converter gives a missing value the encoding of the category ``"None"`` / ``"nan"``, supports
binary and continuous targets only and answers in float. Here each column's value is found among the
encoder's categories (:func:`nbdeploy.convert.categories.category_index`) and its row of encodings is
gathered from a table: one column per feature (binary, continuous) or one per feature and class
(multiclass, feature-major as scikit-learn orders them). A missing value seen in training is a
category of its own; an unknown category (or a missing value never seen) gets ``target_mean_``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nbdeploy.convert.categories import category_index, is_missing, lookup
from nbdeploy.convert.nodes import input_columns, node


def encoding_table(op: Any, feature: int) -> tuple[list[Any], np.ndarray, int | None]:
    """One feature's known categories (missing left out), its table of encodings and the row of the
    missing value: rows of the known categories, then ``target_mean_`` (unknown), then missing."""
    categories = list(op.categories_[feature])
    n_classes = len(op.classes_) if op.target_type_ == "multiclass" else 1
    encodings = np.column_stack([np.asarray(op.encodings_[feature * n_classes + c], dtype=np.float64)
                                 for c in range(n_classes)])
    known = [k for k, c in enumerate(categories) if not is_missing(c)]
    missing = [k for k, c in enumerate(categories) if is_missing(c)]
    rows = [encodings[known], np.atleast_1d(np.asarray(op.target_mean_, dtype=np.float64))[None, :]]
    if missing:
        rows.append(encodings[missing[:1]])
    return [categories[k] for k in known], np.vstack(rows), len(known) + 1 if missing else None


def target_encoder(double: bool) -> Any:
    """The converter for this float precision."""

    def convert(scope: Any, operator: Any, container: Any) -> None:
        from onnx import TensorProto

        op = operator.raw_operator
        float_type = TensorProto.DOUBLE if double else TensorProto.FLOAT
        columns = input_columns(scope, container, operator.inputs)
        if len(columns) != len(op.categories_):
            raise RuntimeError(f"TargetEncoder has {len(op.categories_)} features but receives {len(columns)} columns")
        parts = []
        for feature, (name, text) in enumerate(columns):
            known, table, missing_at = encoding_table(op, feature)
            column = (name, True) if text else (node(scope, container, "Cast", [name], to=float_type), False)
            index = category_index(scope, container, column, known, float_type, missing_at)
            parts.append(lookup(scope, container, table, index, float_type))
        joined = node(scope, container, "Concat", parts, axis=1) if len(parts) > 1 else parts[0]
        container.add_node("Identity", [joined], [operator.outputs[0].full_name],
                           name=scope.get_unique_operator_name("Id"))

    return convert


def target_encoder_shape(double: bool) -> Any:
    """Output type: one column per feature (per feature and class for a multiclass target)."""
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    def calculate(operator: Any) -> None:
        op = operator.raw_operator
        n_classes = len(op.classes_) if op.target_type_ == "multiclass" else 1
        kind = DoubleTensorType if double else FloatTensorType
        operator.outputs[0].type = kind([operator.inputs[0].get_first_dimension(), len(op.categories_) * n_classes])

    return calculate
