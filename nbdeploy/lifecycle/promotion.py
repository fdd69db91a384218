"""The promotion gate over stored versions: held-out data kept with each version, judged by ONNX.

Both sides of a comparison are scored the way they are served (ONNX Runtime, through the
signature), on the same labelled rows: the candidate's held-out data.
"""

from __future__ import annotations

from typing import Any

from nbdeploy.errors import InvalidInput, NbdeployError
from nbdeploy.lifecycle.artifacts import HOLDOUT_FILE, read_rows
from nbdeploy.lifecycle.evaluation import EvaluationResult, evaluate
from nbdeploy.lifecycle.gate import GateDecision, compare
from nbdeploy.local import OnnxPredictor
from nbdeploy.store import PRODUCTION, Store, VersionRecord


class GateRefused(NbdeployError):
    """A candidate version did not pass the promotion gate; it stays registered, not served."""

    status = 409

    def __init__(self, name: str, version: int, decision: GateDecision) -> None:
        super().__init__(f"{name!r} version {version} was not promoted: {decision.reason} "
                         "(it stays registered; promote it with force=True / --force)")
        self.name = name
        self.version = version
        self.decision = decision

    def _repr_html_(self) -> str:
        return f"<p><b>{self.message}</b></p>{self.decision._repr_html_()}"


def evaluate_stored(record: VersionRecord, X: Any, y: Any) -> EvaluationResult:
    """Score one stored version on labelled rows, as it is served."""
    return evaluate(OnnxPredictor.from_record(record), X, y, name=f"{record.name} v{record.version}")


def judge(store: Store, name: str, candidate: EvaluationResult, X: Any, y: Any, *,
          min_score: float | None = None, tolerance: float = 0.0,
          exclude: int | None = None) -> GateDecision:
    """Candidate against the current production version, both scored on ``X``/``y``."""
    champion = None
    current = store.aliases(name).get(PRODUCTION) if name in store.model_names() else None
    if current is not None and current != exclude:
        try:
            champion = evaluate_stored(store.version(name, current), X, y)
        except InvalidInput:
            champion = None  # the data no longer fits the old signature: only the floor applies
    return compare(champion, candidate, min_score=min_score, tolerance=tolerance)


def judge_stored(store: Store, record: VersionRecord, *, min_score: float | None = None,
                 tolerance: float = 0.0) -> GateDecision | None:
    """A stored version against production on its own held-out rows; None when it has none (nothing to gate on)."""
    holdout = read_rows(record, HOLDOUT_FILE)
    if holdout is None:
        return None
    X, y = holdout
    return judge(store, record.name, evaluate_stored(record, X, y), X, y, min_score=min_score, tolerance=tolerance,
                 exclude=record.version)


def promote(store: Store, name: str, version: int, alias: str = PRODUCTION, *, min_score: float | None = None,
            tolerance: float = 0.0, force: bool = False) -> GateDecision | None:
    """Move ``alias`` to ``version``; for ``production``, through the gate when there is held-out data."""
    store.require_model(name)
    record = store.version(name, version)
    decision = None
    if alias == PRODUCTION:
        decision = judge_stored(store, record, min_score=min_score, tolerance=tolerance)
        if decision is not None and not decision.passed and not force:
            raise GateRefused(name, version, decision)
    if record.status == "refused" and (force or decision is not None):
        store.set_status(name, version, "registered")
    store.set_alias(name, alias, version)
    return decision


def rollback(store: Store, name: str, alias: str = PRODUCTION) -> int:
    """Point ``alias`` back at the version it had before its last move; returns that version."""
    store.require_model(name)
    previous = store.previous_version(name, alias)
    if previous is None:
        raise InvalidInput(f"{name!r} has no earlier {alias} version to roll back to")
    store.set_alias(name, alias, previous, kind="rollback")
    return previous
