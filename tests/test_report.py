"""nbdeploy.report and `%deploy report`: one self-contained HTML page of a model's history."""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from IPython.core.error import UsageError

import nbdeploy
from nbdeploy.errors import NbdeployError
from nbdeploy.monitor import reference_profile
from nbdeploy.monitor.live import Monitor
from nbdeploy.monitor.timeline import Timeline
from nbdeploy.store import Store
from nbdeploy.store.alerts import record_alert
from nbdeploy.store.canary import end_canary, start_canary
from nbdeploy.store.events import PredictionEvent
from nbdeploy.store.log import PredictionLog

PROFILE = reference_profile(pd.DataFrame({"x": np.linspace(-2, 2, 100)}))
FIDELITY = {"passed": True, "precision": "FP32", "agreement": 1.0, "n": 300, "max_abs_diff": 1e-7}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A model with a story: deployed, traffic whose accuracy falls, an alert, a retrain, a canary."""
    store = Store(tmp_path)
    meta = {"task": "classification", "classes": [0, 1], "profile": PROFILE, "fidelity": FIDELITY, "gated": True}
    store.register("bend", b"onnx", {**meta, "metrics": {"metrics": {"accuracy": 0.97}},
                                     "gate": {"passed": True, "reason": "no production version to beat"}})
    store.set_alias("bend", "production", 1)
    log = PredictionLog(tmp_path, profiles=lambda m, v: PROFILE, start=False)
    now = time.time()
    for i in range(200):
        log.put(PredictionEvent(id=str(i), ts=now - 200 + i, model="bend", version=1,
                                inputs={"x": np.array([0.0 if i < 100 else 5.0])}, outputs={"label": np.array([1])},
                                latency_ms=2.0, status=200, error=None))
    log.flush()
    log.feedback("bend", [{"id": str(i), "label": int(i < 100 or i % 3 == 0)} for i in range(200)])
    log.close()
    record_alert(store, "bend", "ALERT", ["accuracy 0.62 is 0.35 below the baseline 0.97"], "monitor")
    store.register("bend", b"onnx", {**meta, "retrained_from": 1, "metrics": {"metrics": {"accuracy": 0.95}},
                                     "gate": {"passed": True, "reason": "challenger accuracy 0.95 >= champion 0.62"}})
    store.set_alias("bend", "production", 2)
    store.register("bend", b"onnx", {**meta, "metrics": {"metrics": {"accuracy": 0.96}}})
    store.set_serving("bend", True)
    start_canary(store, "bend", 3, 10)
    end_canary(store, "bend", "aborted", "error rate 5 % above production's")
    return tmp_path


def test_the_report_shows_versions_events_alerts_canaries_and_charts(home: Path) -> None:
    page = nbdeploy.report("bend", home=str(home))
    body = page._repr_html_()
    assert "nbdeploy report: bend" in body and "production → v2" in body
    assert "retrained from v1" in body and "challenger accuracy 0.95 &gt;= champion 0.62" in body
    assert "labels agree 100.00 % on 300 rows" in body and "0.9700" in body
    for label in ("deploy v1", "ALERT", "retrain → v2", "canary v3 10%", "canary v3 aborted"):
        assert label in body
    assert "accuracy 0.62 is 0.35 below the baseline 0.97" in body and "error rate 5 % above" in body
    png = re.search(r'src="data:image/png;base64,([^"]+)"', body)
    assert png and base64.b64decode(png.group(1)).startswith(b"\x89PNG")


def test_written_to_a_file_it_needs_nothing_from_the_network(home: Path, tmp_path: Path) -> None:
    path = nbdeploy.report("bend", to=tmp_path / "bend.html", home=str(home))
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<title>nbdeploy report: bend</title>" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.I)  # no assets to fetch
    assert "<script" not in page and "@import" not in page and "url(" not in page


def test_the_magic_shows_it_or_writes_it(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture, ipython) -> None:
    shell = ipython
    shell.run_line_magic("load_ext", "nbdeploy")
    shell.run_line_magic("config", f"DeployMagics.home = {str(home)!r}")
    try:
        target = tmp_path / "out.html"
        shell.run_line_magic("deploy", f"report bend --to {target}")
        assert f"wrote the report of 'bend' to {target}" in capsys.readouterr().out
        assert "retrained from v1" in target.read_text()
        with pytest.raises(UsageError, match="report"):
            shell.run_line_magic("deploy", "report")
        missing = tmp_path / "no-such-folder" / "out.html"
        with pytest.raises(UsageError) as info:
            shell.run_line_magic("deploy", f"report bend --to {missing}")
        assert str(info.value) == (f"%deploy report: cannot write the report to {missing}: "
                                   "No such file or directory")
    finally:
        shell.run_line_magic("config", "DeployMagics.home = ''")


def test_an_unknown_model_is_named_with_a_hint(home: Path) -> None:
    with pytest.raises(NbdeployError, match="bend"):
        nbdeploy.report("bnd", home=str(home))


def test_each_version_has_the_state_the_model_list_gives_it(home: Path) -> None:
    body = nbdeploy.report("bend", home=str(home))._repr_html_()
    states = dict(re.findall(r"<tr><td><b>v(\d)</b></td><td>[^<]*</td><td>(\w+)</td>", body))
    assert states == {"1": "registered", "2": "serving", "3": "registered"}  # v2 is production, served
    assert nbdeploy.models(home=str(home))["bend"]["states"] == {1: "registered", 2: "serving", 3: "registered"}
    Store(home).set_serving("bend", False)
    body = nbdeploy.report("bend", home=str(home))._repr_html_()
    assert dict(re.findall(r"<tr><td><b>v(\d)</b></td><td>[^<]*</td><td>(\w+)</td>", body))["2"] == "stopped"



def test_deleting_a_version_that_once_served_leaves_the_report_and_the_monitor_readable(tmp_path: Path) -> None:
    store = Store(tmp_path)
    meta = {"task": "classification", "classes": [0, 1], "profile": PROFILE, "fidelity": FIDELITY}
    store.register("bend", b"onnx", {**meta, "metrics": {"metrics": {"accuracy": 0.97}}})
    store.set_alias("bend", "production", 1)
    time.sleep(1.5)  # version 1 serves a while: the charts' first seconds compare with its baseline
    store.register("bend", b"onnx", {**meta, "retrained_from": 1, "metrics": {"metrics": {"accuracy": 0.95}}})
    store.set_alias("bend", "production", 2)
    print(nbdeploy.delete("bend", 1, home=str(tmp_path)))  # the alias history still names it
    body = nbdeploy.report("bend", home=str(tmp_path))._repr_html_()
    assert "v1 live" in body and "retrain → v2" in body and "<b>v1</b>" not in body  # its event stays
    monitor = Monitor(str(tmp_path), "bend", store=store, timeline=Timeline(store, "bend"))
    try:
        snap = monitor.snapshot()
    finally:
        monitor.close()
    assert snap["version"] == 2 and [e["label"] for e in snap["timeline"]["events"]] == ["v1 live", "retrain → v2"]
