"""The coverage matrix: every row deployed into one real server and called over HTTP.

``docs/supported-models.md`` is generated from the same rows; the last test fails when the page
and the matrix disagree (regenerate with ``PYTHONPATH=tests python -m model_matrix --write docs/supported-models.md``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import nbdeploy
from model_matrix import Row, cases, run_case, stale
from model_matrix.run import COMMAND, render, summary

pytestmark = pytest.mark.server

PAGE = Path(__file__).parents[2] / "docs" / "supported-models.md"
CASES = cases()


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory):
    """One store and server for all rows; each row runs when first asked for."""
    home = str(tmp_path_factory.mktemp("matrix"))
    rows: dict[str, Row] = {}

    def row(case) -> Row:
        if case.name not in rows:
            rows[case.name] = run_case(case, home)
        return rows[case.name]

    yield row
    nbdeploy.shutdown(home)


def test_the_matrix_has_at_least_30_rows_over_every_family() -> None:
    assert len(CASES) >= 30 and len({c.name for c in CASES}) == len(CASES)
    families = {c.family for c in CASES}
    assert {"linear", "tree", "forest", "boosting", "svm", "k-NN", "naive Bayes", "MLP", "calibration",
            "clustering", "pipeline"} <= families


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_row(matrix, case) -> None:
    row = matrix(case)
    if row.status == "skipped":
        pytest.skip(row.detail)
    assert row.status == case.expect, f"{case.name}: {row.status} ({row.detail})"


def test_the_page_matches_the_matrix(matrix) -> None:
    rows = [matrix(c) for c in CASES]
    assert PAGE.is_file(), f"docs/supported-models.md is missing; generate it with {COMMAND}"
    problems = stale(rows, PAGE.read_text())
    assert not problems, f"docs/supported-models.md is stale ({'; '.join(problems)}); regenerate it with {COMMAND}"
    s = summary(rows)
    assert s["as_expected"] == s["ran"]
    assert "Supported models" in render(rows)
