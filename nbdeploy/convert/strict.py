"""Inputs whose encoder refuses unknown categories: the values they know, recorded in the signature.

scikit-learn's default ``OneHotEncoder()`` and ``OrdinalEncoder()`` (``handle_unknown="error"``) raise on
a category they were not fitted with; their ONNX form fails the same way, inside ONNX Runtime. Recording
the fitted categories on the input lets every place that validates a request (the server, the client,
the library predictor) refuse such a value with a 4xx naming the input and the value, and lets the
server warm a version up with values it knows.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from nbdeploy.signature import MISSING_STRING, Signature

_ENCODERS = ("OneHotEncoder", "OrdinalEncoder")
_IMPUTERS = ("SimpleImputer",)


def with_known_categories(model: Any, signature: Signature) -> Signature:
    """``signature`` with ``categories`` and ``refuses_unknown`` set on text inputs read by a strict encoder."""
    known = strict_columns(model)
    if not known or not signature.frame:
        return signature
    specs = []
    for spec in signature.inputs:
        found = known.get(spec.name)
        if found is None or spec.datatype != "BYTES":
            specs.append(spec)
            continue
        categories, missing_ok = found
        values = tuple(categories) + ((MISSING_STRING,) if missing_ok else ())
        specs.append(replace(spec, categories=values, refuses_unknown=True))
    return Signature(tuple(specs), signature.frame)


def strict_columns(model: Any) -> dict[str, tuple[list[str], bool]]:
    """Column name -> (the categories a strict encoder knows, whether a missing value is accepted).

    Looks at the model's leading ``ColumnTransformer`` (a pipeline's first step, or the model itself):
    for each of its transformers that is a strict encoder, or a pipeline of imputers then one.
    """
    head = model.steps[0][1] if hasattr(model, "steps") else model
    if not hasattr(head, "transformers_"):
        return {}
    names = list(getattr(head, "feature_names_in_", []))
    found: dict[str, tuple[list[str], bool]] = {}
    for _, transformer, columns in head.transformers_:
        if isinstance(transformer, str):
            continue
        encoder, imputed = _strict_encoder(transformer)
        if encoder is None:
            continue
        for i, column in enumerate(_column_names(columns, names)):
            categories = list(encoder.categories_[i])
            text = [str(c) for c in categories if not _missing(c)]
            found[column] = (text, imputed or len(text) < len(categories))
    return found


def _strict_encoder(transformer: Any) -> tuple[Any, bool]:
    steps = [s for _, s in transformer.steps] if hasattr(transformer, "steps") else [transformer]
    imputed = False
    for step in steps:
        kind = type(step).__name__
        if kind in _IMPUTERS:
            imputed = True
            continue
        if kind in _ENCODERS and getattr(step, "handle_unknown", None) == "error":
            return step, imputed
        break
    return None, False


def _column_names(columns: Any, names: list[str]) -> list[str]:
    """A ColumnTransformer's column selection (names, positions or a boolean mask over
    ``feature_names_in_``) as names; a selection it cannot read gives none (nothing is recorded)."""
    if isinstance(columns, str):
        return [columns]
    if callable(columns):
        return []
    chosen = list(columns)
    if chosen and all(isinstance(c, (bool, np.bool_)) for c in chosen):
        return [name for name, keep in zip(names, chosen, strict=False) if keep]
    return [c if isinstance(c, str) else (names[int(c)] if names else str(c)) for c in chosen]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)
