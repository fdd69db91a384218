"""The coverage matrix: which models nbdeploy deploys faithfully (``docs/supported-models.md``)."""

from model_matrix.cases import Case, cases, dataset
from model_matrix.run import Row, render, run_case, run_matrix, stale

__all__ = ["Case", "Row", "cases", "dataset", "render", "run_case", "run_matrix", "stale"]
