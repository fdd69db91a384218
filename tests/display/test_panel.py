"""display/panel.py: the models panel, live from a thread, its buttons, its static view; api.panel and %deploy panel."""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

import nbdeploy
from nbdeploy import api
from nbdeploy.display import overview as ov
from nbdeploy.display import panel as pn
from nbdeploy.errors import Conflict
from nbdeploy.store import Store
from nbdeploy.store.alerts import record_alert
from nbdeploy.store.canary import start_canary

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def model_row(name: str, **extra: Any) -> dict[str, Any]:
    row = {"name": name, "versions": [1, 2], "states": {1: "registered", 2: "serving"}, "refused": [],
           "aliases": {"production": 2}, "status": "ready", "previous": 1, "level": None, "alert": None,
           "canary": None, "traffic": {"start": 0.0, "step": 60.0, "requests": [0] * 58 + [4, 7], "total": 11}}
    return {**row, **extra}


class Fetch:
    """Rows the panel is given, changed by the test; counts the calls."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows, self.calls = rows, 0

    def __call__(self) -> list[dict[str, Any]]:
        self.calls += 1
        return [dict(r) for r in self.rows]


@pytest.fixture
def no_side_area(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)


@pytest.fixture
def fake_sidecar(sidecars: list[Any], monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """A JupyterLab kernel with the sidecar package: records the side panels opened and closed."""
    monkeypatch.setenv("JPY_SESSION_NAME", "/lab/models.ipynb")
    monkeypatch.delenv("VSCODE_PID", raising=False)
    return sidecars


def wait_for(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_each_model_shows_light_versions_traffic_alert_and_canary() -> None:
    alert = {"at": time.time() - 120, "level": "ALERT", "reasons": ["accuracy 0.61 vs baseline 0.95"],
             "source": "monitor"}
    canary = {"version": 3, "production": 2, "percent": 10.0, "promote_after": 200, "state": "running",
              "started_at": 0.0, "progress": 50, "breach": None,
              "hold": "not promoted automatically: the promotion gate refused it (accuracy below production)"}
    fetch = Fetch([model_row("iris", level="ALERT", alert=alert, aliases={"production": 2, "canary": 3},
                             versions=[1, 2, 3], canary=canary),
                   model_row("wine", status="stopped", previous=None)])
    panel = pn.ModelsPanel(fetch, pn.PanelActions(rollback=str, stop_canary=str, monitor=str), autostart=False)
    assert list(panel.model_rows) == ["iris", "wine"] and "2 models" in panel._header.value
    iris, wine = panel.model_rows["iris"], panel.model_rows["wine"]
    html = iris.summary.value
    assert 'class="nbdeploy-light"' in html and f"color:{pn.COLOURS['ALERT']}" in html and "serving · ALERT" in html
    assert "versions v1, v2, v3" in html and "production → <b>v2</b>" in html and "canary → <b>v3</b>" in html
    assert '<svg class="nbdeploy-sparkline"' in html and "7 req/min now · 11 in the last hour" in html
    assert "last alert <b" in html and "2 min ago (monitor): accuracy 0.61 vs baseline 0.95" in html
    assert "canary <b>v3</b> gets 10 % of the traffic · 50 / 200 requests before promotion" in html
    assert 'class="nbdeploy-canary-progress"' in html and "width:25%" in html
    assert "not promoted automatically: the promotion gate refused it (accuracy below production)" in html
    assert iris.canary_button.layout.display is None and iris.rollback_button.description == "Roll back to v1"
    assert "stopped" in wine.summary.value and "no alerts" in wine.summary.value
    assert wine.canary_button.layout.display == "none"  # only while a canary runs
    assert wine.monitor_button.layout.display is None and wine.rollback_button.layout.display is None
    assert iris.canary_button.layout.display is None
    assert wine.rollback_button.disabled and "no earlier production version" in wine.rollback_button.tooltip
    panel.stop()


def test_the_sparkline_has_one_bar_per_busy_minute_in_proportion() -> None:
    svg = ov.sparkline_svg([0] * 57 + [3, 0, 6])
    bars = re.findall(r'<rect x="([\d.]+)" y="[\d.]+" width="[\d.]+" height="([\d.]+)"/>', svg)
    assert [(float(x), float(h)) for x, h in bars] == [(142.5, 11.5), (147.5, 23.0)]  # the last minute is the right end
    assert "<rect" not in ov.sparkline_svg([0] * 60) and "highest 6" in svg


def test_roll_back_asks_first_then_shows_what_happened() -> None:
    calls: list[str] = []
    fetch = Fetch([model_row("iris")])

    def rollback(name: str) -> str:
        calls.append(name)
        fetch.rows = [model_row("iris", aliases={"production": 1}, previous=None)]
        return "production → v1"

    panel = pn.ModelsPanel(fetch, pn.PanelActions(rollback=rollback), autostart=False)
    row = panel.model_rows["iris"]
    row.rollback_button.click()
    assert calls == [] and row.confirm.layout.display is None and row.buttons.layout.display == "none"
    assert "Serve v1 instead of v2 for every request to <b>iris</b>?" in row.question.value
    row.cancel_button.click()
    assert calls == [] and row.confirm.layout.display == "none"
    row.rollback_button.click()
    row.confirm_button.click()
    assert calls == ["iris"]
    assert "production → v1" in row.message.value and "production → <b>v1</b>" in row.summary.value  # refreshed
    assert row.rollback_button.disabled
    panel.stop()


def test_a_failing_action_is_one_line_in_the_row() -> None:
    def refuse(name: str) -> str:
        raise Conflict(f"model {name!r} has no canary running")

    def crash(name: str) -> str:
        raise RuntimeError("the store moved")

    panel = pn.ModelsPanel(Fetch([model_row("iris")]), pn.PanelActions(rollback=crash, stop_canary=refuse),
                           autostart=False)
    row = panel.model_rows["iris"]
    row.canary_button.click()
    assert "model &#x27;iris&#x27; has no canary running" in row.message.value and "Traceback" not in row.message.value
    row.run("rollback", "rolling back…")
    assert "RuntimeError: the store moved" in row.message.value
    panel.stop()


def test_monitor_opens_in_the_row_and_closes() -> None:
    import ipywidgets

    class FakeMonitor(ipywidgets.HTML):
        """Like the monitor widget: a snapshot, and stop() closes it."""

        snap: ClassVar[dict] = {"alert": {"level": "WARN"}, "canary": {"progress": 120, "promote_after": 200}}

        def stop(self) -> None:
            self.close()

    opened: list[FakeMonitor] = []

    def monitor(name: str) -> Any:
        opened.append(FakeMonitor(f"monitor of {name}"))
        return opened[-1]

    canary = {"version": 3, "production": 2, "percent": 5.0, "promote_after": 200, "state": "running",
              "started_at": 0.0, "progress": 100}
    panel = pn.ModelsPanel(Fetch([model_row("iris", canary=canary)]), pn.PanelActions(monitor=monitor),
                           autostart=False)
    row = panel.model_rows["iris"]
    assert "serving</span>" in row.summary.value and "100 / 200 requests" in row.summary.value
    row.monitor_button.click()
    assert row.monitor_box.children == (opened[0],) and row.monitor_button.description == "Hide monitor"
    panel.refresh()  # the open monitor's level and canary count show in the row
    assert "serving · WARN" in row.summary.value and "120 / 200 requests" in row.summary.value
    row.monitor_button.click()
    assert opened[0].comm is None and row.monitor_box.children == () and row.monitor_button.description == "Monitor"
    row.monitor_button.click()
    opened[1].stop()  # stopped by its own Stop button: the row lets it go at the next refresh
    panel.refresh()
    assert row.monitor is None and row.monitor_box.children == () and "serving · WARN" not in row.summary.value
    panel.stop()


def test_refreshes_from_a_thread_follows_new_models_and_stops_cleanly() -> None:
    fetch = Fetch([model_row("iris")])
    panel = pn.ModelsPanel(fetch, interval=0.05)
    assert panel.running and wait_for(lambda: panel.refreshes >= 3)
    fetch.rows = [model_row("iris"), model_row("wine")]
    assert wait_for(lambda: len(panel._list.children) == 2)
    fetch.rows = [model_row("wine")]
    assert wait_for(lambda: list(panel.model_rows) == ["wine"])
    thread = panel._thread
    panel.stop()
    assert thread is not None and not thread.is_alive() and panel.comm is None
    calls = fetch.calls
    time.sleep(0.15)
    assert fetch.calls == calls
    panel.stop()  # twice is fine


def test_a_failing_refresh_is_shown_and_the_thread_goes_on() -> None:
    fetch = Fetch([model_row("iris")])
    panel = pn.ModelsPanel(fetch, interval=0.05)
    good = fetch.rows
    fetch.rows = None  # type: ignore[assignment]
    assert wait_for(lambda: "refresh failed" in panel._header.value)
    fetch.rows = good
    assert wait_for(lambda: "refresh failed" not in panel._header.value)
    panel.stop()


def test_inline_without_a_side_area_says_why(no_side_area: None, shown: list) -> None:
    panel = pn.models_panel(Fetch([model_row("iris")]), key="store", interval=60)
    assert not panel.docked and "side area is not available in this frontend" in panel.note
    panel._ipython_display_()
    kind, bundle, display_id = shown[-1]
    assert kind == "display" and WIDGET_MIME in bundle and display_id
    assert "nbdeploy-panel" in bundle["text/html"] and "side area is not available" in bundle["text/html"]
    assert "side area is not available" in panel._header.value  # the live view says it too
    panel.stop()
    kind, final, final_id = shown[-1]
    assert kind == "update" and final_id == display_id and WIDGET_MIME not in final
    assert "iris" in final["text/html"] and final["text/plain"].startswith("nbdeploy models: 1 model")


def test_without_the_sidecar_package_it_shows_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sidecar", None)
    monkeypatch.setenv("JPY_SESSION_NAME", "/lab/models.ipynb")
    panel = pn.models_panel(Fetch([]), key="store", interval=60)
    assert "pip install sidecar" in panel.note and not panel.docked
    assert "No models in this store yet" in panel.static_bundle()["text/html"]
    panel.stop()


def test_docked_in_the_side_area(fake_sidecar: list, shown: list) -> None:
    panel = pn.models_panel(Fetch([model_row("iris")]), key="store", interval=60)
    assert panel.docked and fake_sidecar[0].title == "nbdeploy models" and panel.note == ""
    assert shown[0][0] == "display" and WIDGET_MIME in shown[0][1]  # the live view went into the side area
    assert "nbdeploy-panel" in shown[0][1]["text/html"]
    panel._ipython_display_()  # the cell gets the summary and a pointer, not a second live view
    assert WIDGET_MIME not in shown[-1][1] and "Live in JupyterLab's side area" in shown[-1][1]["text/html"]
    panel.stop()
    assert fake_sidecar[0].closed and shown[-1][0] == "update" and "Live in" not in shown[-1][1]["text/html"]


def test_one_live_panel_per_store(no_side_area: None) -> None:
    stopped: list[str] = []
    first = pn.models_panel(Fetch([]), key="a", interval=60, on_stop=lambda: stopped.append("first"))
    second = pn.models_panel(Fetch([]), key="a", interval=60)
    other = pn.models_panel(Fetch([]), key="b", interval=60)
    assert not first.running and stopped == ["first"] and second.running and other.running
    assert pn.stop_panels() == 2 and not second.running and not other.running
    assert pn.stop_panels() == 0


def test_threads_do_not_leak() -> None:
    before = threading.active_count()
    for panel in [pn.ModelsPanel(Fetch([model_row("iris")]), interval=0.05) for _ in range(3)]:
        panel.stop()
    assert threading.active_count() <= before


# -- api.panel over a real store (no server: rolling back is a store write) ----------------------

@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path)
    for content in (b"one", b"two"):
        store.register("iris", content, {})
    store.set_alias("iris", "production", 1)
    store.set_alias("iris", "production", 2)
    store.register("wine", b"three", {})
    store.set_alias("wine", "production", 1)
    return store


def test_api_panel_lists_the_store_and_rolls_back(store: Store, no_side_area: None) -> None:
    record_alert(store, "iris", "WARN", ["p99 latency 150 ms"], "monitor")
    panel = nbdeploy.panel(str(store.home), interval=60)
    try:
        assert [r["name"] for r in panel.rows] == ["iris", "wine"]
        iris = panel.model_rows["iris"]
        assert iris.row["previous"] == 1 and iris.rollback_button.description == "Roll back to v1"
        assert "WARN" in iris.summary.value and "p99 latency 150 ms" in iris.summary.value
        assert panel.model_rows["wine"].rollback_button.disabled
        iris.rollback_button.click()
        iris.confirm_button.click()
        assert "production → v1" in iris.message.value
        assert store.aliases("iris")["production"] == 1 and "production → <b>v1</b>" in iris.summary.value
        iris.canary_button.click()  # hidden while no canary runs; what it says when clicked anyway
        assert "model &#x27;iris&#x27; has no canary running" in iris.message.value
    finally:
        panel.stop()
    assert api.stop_panels() == 0


def test_api_panel_shows_and_stops_a_canary(store: Store, no_side_area: None) -> None:
    store.set_serving("iris", True)
    start_canary(store, "iris", 1, 20, promote_after=100)
    panel = nbdeploy.panel(str(store.home), interval=60)
    try:
        iris = panel.model_rows["iris"]
        assert iris.canary_button.layout.display is None
        assert "canary <b>v1</b> gets 20 % of the traffic · 0 / 100 requests before promotion" in iris.summary.value
        iris.canary_button.click()
        assert "canary stopped: production answers every request again" in iris.message.value
        assert "canary" not in store.aliases("iris") and iris.canary_button.layout.display == "none"
        assert "nbdeploy-canary" not in iris.summary.value
    finally:
        panel.stop()


def test_api_panel_refuses_a_bad_interval(store: Store) -> None:
    with pytest.raises(nbdeploy.NbdeployError, match="interval must be a positive"):
        nbdeploy.panel(str(store.home), interval=0)


def test_the_magic(store: Store, no_side_area: None, capsys: pytest.CaptureFixture[str], ipython) -> None:
    from IPython.core.error import UsageError

    shell = ipython
    shell.run_line_magic("load_ext", "nbdeploy")
    shell.run_line_magic("config", f"DeployMagics.home = {str(store.home)!r}")
    try:
        shell.run_line_magic("deploy", "panel --inline --interval 60")
        assert api.stop_panels() == 1
        shell.run_line_magic("deploy", "panel --interval 60")
        shell.run_line_magic("deploy", "panel --stop")
        shell.run_line_magic("deploy", "panel --stop")
        out = capsys.readouterr().out
        assert "stopped the models panel" in out and "no live models panel in this kernel" in out
        with pytest.raises(UsageError, match="interval must be a positive"):
            shell.run_line_magic("deploy", "panel --interval 0")
    finally:
        api.stop_panels()
        shell.run_line_magic("config", "DeployMagics.home = ''")
