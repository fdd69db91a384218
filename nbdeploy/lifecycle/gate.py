"""The promotion gate: is a challenger good enough to replace the champion? Both figures, one verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nbdeploy.errors import InvalidInput
from nbdeploy.lifecycle.evaluation import EvaluationResult, jsonable


@dataclass(eq=False)
class GateDecision:
    """Outcome of the promotion gate; ``reason`` quotes the scores that decided it."""

    passed: bool
    metric: str
    champion_score: float | None
    challenger_score: float | None
    min_score: float | None
    tolerance: float
    reason: str
    champion: EvaluationResult | None = field(default=None, repr=False)
    challenger: EvaluationResult | None = field(default=None, repr=False)

    def summary(self) -> str:
        """One line, for logs and ``text/plain``."""
        return f"{'PASSED' if self.passed else 'REFUSED'}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe record of the decision (the scores, not the evaluations)."""
        keys = ("passed", "metric", "champion_score", "challenger_score", "min_score",
                "tolerance", "reason")
        return {k: jsonable(getattr(self, k)) for k in keys}

    def _repr_html_(self) -> str:
        from nbdeploy.display.reports import gate_html

        return gate_html(self)


def compare(champion: EvaluationResult | None, challenger: EvaluationResult, *,
            min_score: float | None = None, tolerance: float = 0.0) -> GateDecision:
    """Promotion gate on the primary metric (higher is better).

    Passes iff ``challenger.score >= min_score`` (when given) and, when there is a
    champion, ``challenger.score >= champion.score - tolerance``; a challenger without a
    score never passes. Scoring both on the same held-out rows is the caller's job.
    """
    if not isinstance(challenger, EvaluationResult) or not (
        champion is None or isinstance(champion, EvaluationResult)
    ):
        raise InvalidInput("expected EvaluationResult objects from evaluate()")
    if champion is not None and champion.primary_metric != challenger.primary_metric:
        raise InvalidInput(f"cannot compare a {champion.task} champion with a "
                           f"{challenger.task} challenger")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not (
        tolerance >= 0
    ):
        raise InvalidInput(f"expected tolerance >= 0, got {tolerance!r}")
    if min_score is not None and (
        isinstance(min_score, bool) or not isinstance(min_score, (int, float))
    ):
        raise InvalidInput(f"expected min_score as a number or None, got {min_score!r}")
    metric, new = challenger.primary_metric, challenger.score
    old = None if champion is None else champion.score
    failed: list[str] = []
    passed: list[str] = []
    if new is None:
        failed.append(f"challenger has no {metric} on this data")
    else:
        if min_score is not None:
            ok = new >= min_score
            (passed if ok else failed).append(
                f"challenger {metric} {new:.4f} {'>=' if ok else '<'} floor "
                f"{min_score:.4f}")
        if old is not None:
            bar = old - tolerance
            ok = new >= bar
            (passed if ok else failed).append(
                f"challenger {metric} {new:.4f} {'>=' if ok else '<'} champion "
                f"{old:.4f} - tolerance {tolerance:.4f} = {bar:.4f}")
        else:
            who = "no champion" if champion is None else f"champion has no {metric}"
            passed.append(f"{who}: judged on the floor only")
    return GateDecision(
        passed=not failed, metric=metric, champion_score=old, challenger_score=new,
        min_score=None if min_score is None else float(min_score),
        tolerance=float(tolerance), reason="; ".join(failed or passed),
        champion=champion, challenger=challenger,
    )


