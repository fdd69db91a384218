"""Walking a fitted model's steps: where each one sits, and which ones ONNX cannot hold.

Paths name steps the way users wrote them, so an error can say
``pipeline step 'prep' -> 'text' (FunctionTransformer)`` rather than "conversion failed".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Path = tuple[str, ...]


def children(est: Any) -> list[tuple[str, Any]]:
    """The fitted sub-estimators of a composite, with the names users gave them."""
    if hasattr(est, "steps"):  # Pipeline
        return [(n, s) for n, s in est.steps if not isinstance(s, str) and s is not None]
    if hasattr(est, "transformers_"):  # fitted ColumnTransformer
        return [(n, t) for n, t, _ in est.transformers_ if not isinstance(t, str)]
    if hasattr(est, "transformer_list"):  # FeatureUnion
        return [(n, t) for n, t in est.transformer_list if not isinstance(t, str)]
    if hasattr(est, "calibrated_classifiers_"):  # CalibratedClassifierCV: one fitted copy per fold
        return [("estimator", c.estimator) for c in est.calibrated_classifiers_[:1]]
    if hasattr(est, "named_estimators_"):  # Voting*, Stacking*
        found = [(n, e) for n, e in est.named_estimators_.items() if not isinstance(e, str)]
        final = getattr(est, "final_estimator_", None)
        return found + ([("final_estimator", final)] if final is not None else [])
    for attr in ("best_estimator_", "estimator_"):
        inner = getattr(est, attr, None)
        if inner is not None and hasattr(inner, "get_params"):
            return [(attr.rstrip("_"), inner)]
    return []


def walk(est: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every step of ``est``, depth first, with its path (the model itself has path ``()``)."""
    yield path, est
    for name, child in children(est):
        yield from walk(child, (*path, name))


def describe(path: Path, est: Any) -> str:
    """``pipeline step 'prep' -> 'text' (FunctionTransformer)``, or ``the model (SVC)`` at the top."""
    kind = type(est).__name__
    if not path:
        return f"the model ({kind})"
    return "pipeline step " + " -> ".join(repr(p) for p in path) + f" ({kind})"


def locate(model: Any, target: Any) -> Path | None:
    """The path of ``target`` (by identity) inside ``model``."""
    for path, est in walk(model):
        if est is target:
            return path
    return None


def unsupported(model: Any) -> tuple[Path, Any, str] | None:
    """The first step nbdeploy knows ONNX cannot hold: its path, the step, and what to do about it."""
    from sklearn.preprocessing import FunctionTransformer

    from nbdeploy.convert.ufuncs import refusal

    known = converter_types()
    for path, est in walk(model):
        if isinstance(est, FunctionTransformer):
            reason = refusal(est)
            if reason is not None:
                return path, est, reason
            continue
        if type(est) not in known and not children(est):
            return path, est, ("skl2onnx has no converter for this class; replace it with built-in scikit-learn "
                               "steps, or register a converter with skl2onnx.update_registered_converter "
                               "before deploying")
    return None


def converter_types() -> set[type]:
    """Classes skl2onnx can convert now (with onnxmltools' boosters registered when installed, and
    nbdeploy's own converters)."""
    from skl2onnx._supported_operators import sklearn_operator_name_map

    from nbdeploy.convert.boosters import register_boosters
    from nbdeploy.convert.splines import register

    register_boosters()
    register()  # classes skl2onnx has no converter for, converted by nbdeploy
    return set(sklearn_operator_name_map)


def failing_step(model: Any, exc: BaseException) -> tuple[Path, Any] | None:
    """Which step's skl2onnx converter raised ``exc``: the innermost frame that holds an operator."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        raw = getattr(tb.tb_frame.f_locals.get("operator"), "raw_operator", None)
        if raw is not None:
            found = raw
        tb = tb.tb_next
    if found is None:
        return None
    path = locate(model, found)
    return (path, found) if path is not None else None


def classifier_options(model: Any) -> dict[int, dict[str, Any]]:
    """``zipmap: False`` for every classifier whose converter takes it: probabilities as a tensor."""
    from skl2onnx._supported_operators import sklearn_operator_name_map
    from skl2onnx.common._registration import get_converter
    from sklearn.base import is_classifier

    options: dict[int, dict[str, Any]] = {}
    for _, est in walk(model):
        alias = sklearn_operator_name_map.get(type(est))
        # Options given to a Pipeline reach all its steps: name the classifiers themselves.
        if alias is None or (children(est) and hasattr(est, "steps")) or not is_classifier(est):
            continue
        try:
            allowed = get_converter(alias).get_allowed_options() or {}
        except (ValueError, AttributeError):
            continue
        # An empty entry keeps skl2onnx's Pipeline parser from adding a zipmap option the converter
        # rejects (LinearSVC in a Pipeline).
        options[id(est)] = {"zipmap": False} if "zipmap" in allowed else {}
    return options


def first_step(model: Any) -> Any:
    """The step that sees the input first, inside nested pipelines."""
    while hasattr(model, "steps"):
        model = model.steps[0][1]
    return model


def final_step(model: Any) -> Any:
    """The predictor at the end of (nested) pipelines."""
    while hasattr(model, "steps"):
        model = model.steps[-1][1]
    return model
