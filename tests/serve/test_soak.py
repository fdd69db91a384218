"""A 15-second soak on each store backend through the real server (benchmarks/soak.py; run it longer there)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.server]
SECONDS = 15  # on each backend; benchmarks/soak.py runs longer
RSS_MB = 500  # the monitor's first /metrics scrape loads pandas, SciPy and scikit-learn in the server


def load_soak():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"
    spec = importlib.util.spec_from_file_location("nbdeploy_soak", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_soak(store_home: str) -> None:
    soak = load_soak()
    f = soak.run(SECONDS, home=store_home, swap_every=3.0)
    print("\n" + f.report())
    assert not f.failures, f.failures[:5]
    assert f.requests > 1_000 and f.swaps >= SECONDS // 6 and f.monitor_reads >= SECONDS // 3
    assert f.labels_accepted == f.labels_sent > 0
    # every answered prediction is logged or counted as dropped
    assert f.logged_requests + f.dropped == f.requests
    if f.dropped == 0:
        assert f.logged_rows == f.rows
    assert f.logged_fixed_id == f.fixed_id_requests  # one fixed client id: every one of its requests is kept
    assert f.rss_peak_mb < RSS_MB
