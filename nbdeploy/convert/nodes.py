"""Adding nodes through a skl2onnx scope and container: fresh names, constants, an operator's columns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Column = tuple[str, bool]  # a [n, 1] tensor and whether it holds strings


def node(scope: Any, container: Any, op_type: str, inputs: list[str], **attrs: Any) -> str:
    """Add one node with a fresh output name; returns that name."""
    out = scope.get_unique_variable_name(op_type.lower())
    container.add_node(op_type, inputs, [out], name=scope.get_unique_operator_name(op_type), **attrs)
    return out


def constant(scope: Any, container: Any, base: str, proto_type: int, value: Any) -> str:
    """An initializer holding ``value`` (any shape) as ``proto_type``; returns its name."""
    from onnx import helper

    array = np.asarray(value, dtype=helper.tensor_dtype_to_np_dtype(proto_type))
    name = scope.get_unique_variable_name(base)
    container.add_initializer(name, proto_type, list(array.shape), array.ravel().tolist())
    return name


def flat(scope: Any, container: Any, name: str) -> str:
    """A ``[n, 1]`` tensor as ``[n]``."""
    from onnx import TensorProto

    shape = constant(scope, container, "flat_shape", TensorProto.INT64, [-1])
    return node(scope, container, "Reshape", [name, shape])


def input_columns(scope: Any, container: Any, inputs: Sequence[Any]) -> list[Column]:
    """The operator's inputs cut into ``[n, 1]`` columns, in order."""
    from onnx import TensorProto
    from skl2onnx.common.data_types import StringTensorType

    columns: list[Column] = []
    for var in inputs:
        text = isinstance(var.type, StringTensorType)
        width = var.type.shape[1] if len(var.type.shape) > 1 else 1
        if width == 1:
            columns.append((var.full_name, text))
            continue
        if not isinstance(width, int):
            raise RuntimeError(f"input {var.full_name!r} has no fixed number of columns")
        for j in range(width):
            starts, ends, axes = (constant(scope, container, f"slice_{k}", TensorProto.INT64, [v])
                                  for k, v in (("start", j), ("end", j + 1), ("axis", 1)))
            columns.append((node(scope, container, "Slice", [var.full_name, starts, ends, axes]), text))
    return columns
