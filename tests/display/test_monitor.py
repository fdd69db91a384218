"""widgets/monitor.py: the live monitor updates from a thread, stops cleanly and leaves a static view."""

from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nbdeploy.display import monitor as mw
from nbdeploy.errors import NbdeployError
from nbdeploy.monitor.live import Monitor
from nbdeploy.store.events import PredictionEvent
from nbdeploy.store.log import PredictionLog

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    log = PredictionLog(tmp_path, start=False)
    now = time.time()
    for i in range(30):
        log.put(PredictionEvent(id=str(i), ts=now - 30 + i, model="m", version=1, inputs={"x": np.array([i * 1.0])},
                                outputs={"label": np.array([i % 2])}, latency_ms=2.0, status=200, error=None))
    log.flush()
    log.feedback("m", [{"id": str(i), "label": 0} for i in range(30)])
    log.close()
    return tmp_path


def wait_for(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_updates_from_a_thread_and_stops_cleanly(home: Path) -> None:
    widget = mw.MonitorWidget(Monitor(home, "m", baseline={"accuracy": 0.9}), interval=0.05)
    assert widget.running
    assert wait_for(lambda: widget.refreshes >= 3)
    thread = widget._thread
    widget.stop()
    assert thread is not None and not thread.is_alive()
    assert widget.comm is None  # closed
    count = widget.refreshes
    time.sleep(0.15)
    assert widget.refreshes == count
    widget.stop()  # twice is fine


def test_the_view_shows_status_figures_chart_and_inputs(home: Path) -> None:
    widget = mw.MonitorWidget(Monitor(home, "m", baseline={"accuracy": 0.9}), autostart=False)
    assert bytes(widget._chart.value).startswith(b"\x89PNG") and widget.png == bytes(widget._chart.value)
    header = widget._header.value
    assert "model <b>m</b> v1" in header and "requests/s" in header and "p50 / p99" in header
    assert "0.500" in header and "baseline 0.900" in header and "ALERT" in header
    assert "x" in widget._table.value
    bundle = widget._repr_mimebundle_()
    assert WIDGET_MIME in bundle
    assert 'src="data:image/png;base64,' in bundle["text/html"] and "accuracy" in bundle["text/html"]
    assert bundle["text/plain"].startswith("nbdeploy monitor: m v1 ALERT")
    widget.stop()


def test_display_then_stop_leaves_the_static_view(home: Path, shown: list) -> None:
    widget = mw.MonitorWidget(Monitor(home, "m"), interval=60)
    widget._ipython_display_()
    kind, bundle, display_id = shown[0]
    assert kind == "display" and WIDGET_MIME in bundle and display_id
    widget.stop()
    kind, final, final_id = shown[-1]
    assert kind == "update" and final_id == display_id
    assert WIDGET_MIME not in final and "nbdeploy-monitor" in final["text/html"]


def test_closing_the_widget_stops_the_thread(home: Path) -> None:
    widget = mw.MonitorWidget(Monitor(home, "m"), interval=0.05)
    thread = widget._thread
    widget.close()
    assert thread is not None and wait_for(lambda: not thread.is_alive(), 5)


def test_a_failing_refresh_is_shown_and_the_thread_goes_on(home: Path) -> None:
    mon = Monitor(home, "m")
    widget = mw.MonitorWidget(mon, interval=0.05)
    original = mon.snapshot
    mon.snapshot = lambda now=None: (_ for _ in ()).throw(OSError("disk gone"))  # type: ignore[method-assign]
    assert wait_for(lambda: "disk gone" in widget._header.value)
    mon.snapshot = original  # type: ignore[method-assign]
    assert wait_for(lambda: "requests/s" in widget._header.value)
    widget.stop()


def test_one_live_monitor_per_model(home: Path) -> None:
    first = mw.monitor_widget(Monitor(home, "m"), interval=60)
    second = mw.monitor_widget(Monitor(home, "m"), interval=60)
    assert not first.running and second.running
    assert mw.stop_monitors("m") == 1 and not second.running
    assert mw.stop_monitors() == 0


def test_sidecar_without_the_package_says_how_to_install_it(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sidecar", None)
    with pytest.raises(NbdeployError, match="pip install sidecar"):
        mw.monitor_widget(Monitor(home, "m"), interval=60, sidecar=True)
    assert mw.stop_monitors() == 0  # nothing left running


def test_docked_in_a_sidecar(home: Path, sidecars: list[Any], shown: list) -> None:
    panels = sidecars
    widget = mw.monitor_widget(Monitor(home, "m"), interval=60, sidecar=True)
    assert panels[0].title == "monitor: m"
    assert shown[0][0] == "display"  # the live view went into the panel
    widget._ipython_display_()  # the cell gets a static placeholder, not a second live view
    assert WIDGET_MIME not in shown[-1][1] and "docked in the side panel" in shown[-1][1]["text/html"]
    widget.stop()
    assert panels[0].closed and shown[-1][0] == "update"
    assert "docked" not in shown[-1][1]["text/html"]


def test_many_threads_do_not_leak(home: Path) -> None:
    before = threading.active_count()
    widgets = [mw.MonitorWidget(Monitor(home, "m"), interval=0.05) for _ in range(3)]
    for w in widgets:
        w.stop()
    assert threading.active_count() <= before


def test_each_display_keeps_the_state_of_its_own_cell_in_the_saved_notebook(home: Path) -> None:
    """A real kernel runs a notebook: the monitor is shown, more traffic arrives, it is shown again, stopped.
    The saved outputs hold two different states, and no live widget once it stopped."""
    import nbformat
    from nbclient import NotebookClient

    cells = [
        "import time\nimport numpy as np\nfrom nbdeploy.display.monitor import MonitorWidget\n"
        "from nbdeploy.monitor.live import Monitor\nfrom nbdeploy.store.events import PredictionEvent\n"
        f"from nbdeploy.store.log import PredictionLog\nhome = {str(home)!r}",
        "widget = MonitorWidget(Monitor(home, 'm', baseline={'accuracy': 0.9}), interval=0.1)\nwidget",
        "log = PredictionLog(home, start=False)\n"
        "for i in range(30, 100):\n"
        "    log.put(PredictionEvent(id=str(i), ts=time.time(), model='m', version=1, inputs={'x': np.array([1.0])},\n"
        "                            outputs={'label': np.array([0])}, latency_ms=2.0, status=200, error=None))\n"
        "log.flush()\nlog.close()\ntime.sleep(0.5)  # the live view refreshes: the first display must not follow",
        "widget",
        "widget.stop()",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(nb, kernel_name="python3", timeout=60).execute()
    first, second = (nb.cells[i].outputs[0]["data"] for i in (1, 3))
    assert WIDGET_MIME not in first and WIDGET_MIME not in second  # stopped: static views only
    assert "requests / dropped</div><div>30 / 0" in first["text/html"]
    assert "requests / dropped</div><div>100 / 0" in second["text/html"]
    assert first["text/plain"].startswith("nbdeploy monitor: m v1") and nb.cells[2].outputs == []


@pytest.fixture
def story(home: Path) -> Monitor:
    """A monitor of ``m`` with its timeline: deployed, then an alert, over the traffic of ``home``."""
    from nbdeploy.monitor.timeline import Timeline
    from nbdeploy.store import Store
    from nbdeploy.store.alerts import record_alert

    store = Store(home)
    store.register("m", b"onnx", {"task": "classification", "classes": [0, 1],
                                  "metrics": {"metrics": {"accuracy": 0.9}}})
    store.set_alias("m", "production", 1)
    record_alert(store, "m", "ALERT", ["accuracy 0.500 vs baseline 0.900 (drop 0.400)"], "monitor")
    return Monitor(home, "m", store=store, timeline=Timeline(store, "m", window=120))


def test_the_charts_mark_the_events_on_a_wall_clock(story: Monitor) -> None:
    from matplotlib import rc_context

    snap = story.snapshot()
    with rc_context({"svg.fonttype": "none"}):  # text as text, to read it back
        svg = mw.Charts().render(snap, fmt="svg").decode()
    assert svg.count("deploy v1") == 2 and svg.count("ALERT") == 2  # on the traffic and the quality charts
    assert re.search(r">\d\d:\d\d:\d\d<", svg)  # a short window: clock times to the second
    for title in ("predictions/s", "accuracy (by prediction time)", "latency (ms)", "inputs outside"):
        assert title in svg


def test_an_event_label_drawn_left_of_its_line_does_not_cover_the_one_before() -> None:
    from nbdeploy.display.charts import _tiers

    # labels span 4 to the right of their lines: 13 and 19 are free of each other at one height...
    assert _tiers([0.0, 13.0, 19.0], 4.0) == [0, 0, 0]
    # ...but near the right edge the last one is drawn to the left (15 to 19), over the one at 13 (13 to 17)
    assert _tiers([0.0, 13.0, 19.0], 4.0, leftward=[False, False, True]) == [0, 0, 1]
    assert _tiers([0.0, 13.0, 21.0], 4.0, leftward=[False, False, True]) == [0, 0, 0]  # 17 to 21: free


def test_the_static_view_lists_the_events_the_estimate_and_a_canary(story: Monitor) -> None:
    snap = story.snapshot()
    snap["estimated"] = {"metric": "accuracy", "value": 0.8, "low": 0.75, "high": 0.85, "n": 30, "series": [
        {"t": snap["at"] - 5, "value": 0.8, "low": 0.75, "high": 0.85, "n": 30}]}
    snap["canary"] = {"version": 2, "production": 1, "percent": 10.0, "state": "running", "reason": None,
                      "progress": 12, "promote_after": 100,
                      "arms": {"production": {"version": 1, "requests": 100, "error_rate": 0.0, "accuracy": 0.5},
                               "canary": {"version": 2, "requests": 12, "error_rate": 0.25, "accuracy": None}}}
    page = mw.static_html(snap, mw.Charts().render(snap))
    assert "<b>Timeline</b>" in page and "deploy v1</span>" in page and "ALERT</span>" in page
    assert "estimated accuracy" in page and "0.800 [0.750–0.850] on 30" in page
    assert "<b>Canary</b> v2 gets 10 % of the traffic against v1 · running · 12 of 100 requests" in page
    assert "<td>canary</td><td>2</td><td>12</td><td>25.00 %</td>" in page
    del snap["estimated"], snap["canary"]  # without them (another version of the snapshot): no trace of them
    page = mw.static_html(snap)
    assert "<b>Canary</b>" not in page and "estimated accuracy" not in page
