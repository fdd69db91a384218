"""widgets/monitor.py: the live monitor updates from a thread, stops cleanly and leaves a static view."""

from __future__ import annotations

import sys
import threading
import time
import types
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


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict, str]]:
    """What the widget would put in the notebook: (kind, bundle, display_id)."""
    calls: list[tuple[str, dict, str]] = []
    import IPython.display

    monkeypatch.setattr(IPython.display, "display",
                        lambda obj, raw=False, display_id=None: calls.append(("display", obj, display_id)))
    monkeypatch.setattr(IPython.display, "update_display",
                        lambda obj, raw=False, display_id=None: calls.append(("update", obj, display_id)))
    return calls


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


def test_docked_in_a_sidecar(home: Path, monkeypatch: pytest.MonkeyPatch, shown: list) -> None:
    panels = []

    class Sidecar:
        def __init__(self, title: str) -> None:
            self.title, self.closed = title, False
            panels.append(self)

        def __enter__(self) -> Sidecar:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def close(self) -> None:
            self.closed = True

    monkeypatch.setitem(sys.modules, "sidecar", types.SimpleNamespace(Sidecar=Sidecar))
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
