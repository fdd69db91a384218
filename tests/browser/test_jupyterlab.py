"""The quickstart as a user sees it: JupyterLab in a real Chromium, then the saved notebook as static HTML.

``test_quickstart_in_jupyterlab_and_static_html``, in order: open ``01-quickstart`` in JupyterLab,
run all cells, check what is on screen (the deployment card drawn by the widget manager with its
URL, ready status and curl call; no "Loading widget..." left), screenshot it; save it from
JupyterLab, convert the saved file with nbconvert, open the HTML offline and check the card is
still readable, screenshot it; then stop everything and check no process is left. When the
quickstart shows the live monitor (a ``.monitor(`` or ``%deploy monitor`` call), the same run
checks its figures and charts are drawn, in JupyterLab and in the HTML.

``test_models_panel_in_the_side_area``, in the same JupyterLab: a notebook deploys two models (one gets
traffic, labels and a retrain), shows that model's monitor, then opens ``%deploy panel``; the test checks
the side area (both models, status lights, versions and aliases, sparklines, buttons), rolls a model back
from it and checks the production version it shows, and opens a monitor from it.

The screenshots are overwritten in ``docs/images/`` on every run (the README and the user guide show them).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import nbdeploy
from nbdeploy.serve.process import pid_alive
from nbdeploy.store import Store

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
IMAGES, NOTEBOOKS = ROOT / "docs" / "images", ROOT / "notebooks"
NOTEBOOK = "01-quickstart.ipynb"
WIDGET_FAILURES = ("Loading widget...", "Error displaying widget")
MONITOR_CALL = re.compile(r"\.monitor\(|%deploy monitor")
RUN_TIMEOUT = 60.0
WIDTH = 1000

# The open notebook's state, as JupyterLab's own models report it.
NOTEBOOK_STATE = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cells = panel.content.widgets.filter(c => c.model.type === 'code');
  const errors = [];
  for (const cell of cells) {
    for (const out of cell.model.outputs.toJSON()) {
      if (out.output_type === 'error') errors.push(out.ename + ': ' + out.evalue);
    }
  }
  return {kernel: panel.sessionContext.session?.kernel?.status ?? null,
          pending: cells.filter(c => c.model.executionCount === null).length,
          errors, finished: window.__nbdeployRunAll !== undefined, result: window.__nbdeployRunAll ?? null};
}"""


# -- what a user sees ----------------------------------------------------------------------------

def assert_no_widget_failures(page: Any, timeout: float = 15.0) -> None:
    """No output says "Loading widget..." or "Error displaying widget" (loading ones get ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while True:
        text = page.locator("body").inner_text()
        left = [t for t in WIDGET_FAILURES if t in text]
        if not left:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"widget outputs still show {left} after {timeout:.0f} s")
        time.sleep(0.2)


def wait_for_widget_output(page: Any, text: str, timeout: float = 30.0) -> Any:
    """The output drawn by the widget manager that contains ``text``, once visible, with no
    "Loading widget..."/"Error displaying widget" left on the page. Returns its locator."""
    return _wait_for(page, ".jp-OutputArea-output > .jupyter-widgets", text, timeout)


def wait_for_output(page: Any, text: str, timeout: float = 30.0) -> Any:
    """The same for any output (a widget, or HTML such as a stopped monitor's final view)."""
    return _wait_for(page, ".jp-OutputArea-output", text, timeout)


def _wait_for(page: Any, selector: str, text: str, timeout: float) -> Any:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    output = page.locator(selector, has_text=text).first
    try:
        output.wait_for(state="visible", timeout=timeout * 1000)
    except PlaywrightTimeout:
        shown = page.locator(".jp-OutputArea-output").all_inner_texts()
        pytest.fail(f"no output ({selector}) containing {text!r} after {timeout:.0f} s; the outputs show: {shown}")
    assert_no_widget_failures(page)
    return output


def assert_images_rendered(region: Any, what: str, timeout: float = 10.0) -> None:
    """Every <img> in ``region`` has loaded with a real size, and there is at least one <img>/<canvas>
    (a live view replaces its chart every few seconds: a new one gets ``timeout`` s to load)."""
    deadline = time.monotonic() + timeout
    while True:
        sizes = region.evaluate("""el => [...el.querySelectorAll('img, canvas')].map(i =>
            i.tagName === 'IMG' ? [i.complete, i.naturalWidth, i.naturalHeight] : [true, i.width, i.height])""")
        if sizes and all(done and w > 50 and h > 50 for done, w, h in sizes):
            return
        if time.monotonic() > deadline:
            assert sizes, f"{what}: no chart (<img> or <canvas>) in {region.inner_text()[:300]!r}"
            pytest.fail(f"{what}: charts not rendered after {timeout:.0f} s: {sizes}")
        time.sleep(0.2)


def check_card(page: Any, lab_url: str) -> str:
    """The deployment card, drawn by the widget manager: ready, its endpoint URL and a curl call
    of that URL. Returns the URL."""
    card = wait_for_widget_output(page, "nbdeploy · model iris")
    text = card.inner_text()
    assert "ready" in text, text
    url = re.search(r"http://127\.0\.0\.1:(\d+)/v2/models/iris\b", text)
    assert url, text
    # Where the card also gives the browser's way in (jupyter-server-proxy), it is this JupyterLab's.
    proxied = re.search(r"\S+/proxy/\d+/v2/models/iris\b", text)
    if proxied:
        assert proxied.group(0) == f"{lab_url}/proxy/{url.group(1)}/v2/models/iris", text
    card.locator("summary", has_text="Call it").click()
    curl = card.locator("pre").first.inner_text()
    assert curl.startswith(f"curl -s -X POST {url.group(0)}/infer "), curl
    assert '"inputs": [{"name": "sepal length (cm)"' in curl, curl
    return url.group(0)


def check_monitor(page: Any) -> None:
    """The monitor of iris: its figures and its charts drawn, live (a widget with a Stop button)
    or, once stopped, as its final static view."""
    output = wait_for_output(page, "requests/s")
    text = output.inner_text()
    assert "model iris" in text, text
    for figure in ("requests/s", "latency p50 / p99", "error rate"):
        assert figure in text, text
    if output.locator(".jupyter-widgets").count():
        assert output.get_by_role("button", name="Stop").is_visible()
    assert_images_rendered(output, "monitor in JupyterLab")


def check_static_card(page: Any, url: str) -> None:
    card = page.locator(".nbdeploy-card").first
    card.wait_for(state="visible", timeout=10_000)
    text = card.inner_text()
    assert "ready" in text, text
    assert url in text, text
    card.locator("summary", has_text="Call it").click()
    assert card.locator("pre").first.inner_text().startswith(f"curl -s -X POST {url}/infer "), text


def check_static_monitor(page: Any) -> None:
    monitor = page.locator(".nbdeploy-monitor").first
    monitor.wait_for(state="visible", timeout=10_000)
    assert "requests/s" in monitor.inner_text()
    assert_images_rendered(monitor, "monitor in static HTML")


# -- driving JupyterLab and nbconvert --------------------------------------------------------------

def open_notebook(page: Any, lab: Any, name: str, workspace: str | None = None) -> None:
    """Open a notebook in JupyterLab (in a fresh ``workspace``: no tab left open by an earlier test), wait for
    its kernel to be idle, fold the side panels away."""
    page.goto(lab.page_url(f"/lab/workspaces/{workspace}/tree/{name}" if workspace else f"/lab/tree/{name}"))
    page.wait_for_function("""() => {
      const w = window.jupyterapp?.shell?.currentWidget;
      return w?.sessionContext?.session?.kernel?.status === 'idle' && w.content?.widgets?.length > 0;
    }""", timeout=60_000)
    page.evaluate("() => { window.jupyterapp.shell.collapseLeft(); window.jupyterapp.shell.collapseRight(); }")


def run_all_cells(page: Any, home: Path, timeout: float = RUN_TIMEOUT) -> set[int]:
    """Run all cells and wait until every cell ran and the kernel is idle. Returns the pids of the
    nbdeploy server the store recorded meanwhile (the quickstart stops it in its last cell)."""
    page.evaluate("""() => { delete window.__nbdeployRunAll;
      window.jupyterapp.commands.execute('notebook:run-all-cells')
        .then(ok => { window.__nbdeployRunAll = ok; }, err => { window.__nbdeployRunAll = String(err); }); }""")
    pids: set[int] = set()
    store = None
    deadline = time.monotonic() + timeout
    while True:
        if store is None and (home / "nbdeploy.db").exists():
            store = Store(home)
        record = store.server() if store is not None else None
        if record is not None:
            pids.add(record.pid)
        state = page.evaluate(NOTEBOOK_STATE)
        if state["errors"]:
            pytest.fail(f"a cell failed in JupyterLab: {state['errors']}{_server_log(home)}")
        if state["finished"] and state["kernel"] == "idle" and state["pending"] == 0:
            assert state["result"] is True, state
            return pids
        if time.monotonic() > deadline:
            pytest.fail(f"the cells did not finish within {timeout:.0f} s: {state}{_server_log(home)}")
        time.sleep(0.05)


def _server_log(home: Path, lines: int = 15) -> str:
    log = home / "server.log"
    if not log.exists():
        return ""
    return "\nnbdeploy server.log:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def save_notebook(page: Any) -> None:
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty")


def notebook_screenshot(page: Any, path: Path) -> None:
    """The notebook panel from its toolbar to its last cell (JupyterLab scrolls inside the panel,
    so the window first grows to the notebook's whole height)."""
    measure = """() => {
      const panel = window.jupyterapp.shell.currentWidget;
      const nb = panel.content.node, box = panel.node.getBoundingClientRect();
      const inner = nb.querySelector('.jp-WindowedPanel-inner') || nb;
      const last = panel.content.widgets[panel.content.widgets.length - 1].node.getBoundingClientRect();
      return {x: box.left, y: box.top, width: box.width, full: nb.getBoundingClientRect().top + inner.scrollHeight,
              bottom: last.bottom};
    }"""
    page.set_viewport_size({"width": WIDTH, "height": int(page.evaluate(measure)["full"]) + 60})
    page.evaluate("() => window.jupyterapp.shell.currentWidget.content.node.scrollTo(0, 0)")
    assert_no_widget_failures(page)
    box = page.evaluate(measure)
    clip = {"x": box["x"], "y": box["y"], "width": box["width"], "height": box["bottom"] - box["y"] + 16}
    _save_png(page.screenshot(clip=clip), path)


def _save_png(png: bytes, path: Path) -> None:
    """As a 256-colour PNG: UI screenshots stay sharp and a few times smaller."""
    import io

    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(io.BytesIO(png)) as img:
        img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def to_html(notebook: Path, out: Path, env: dict[str, str], *extra: str) -> Path:
    done = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", *extra, str(notebook),
                           "--output-dir", str(out)], capture_output=True, text=True, timeout=120, env=env)
    if done.returncode:
        pytest.fail(f"nbconvert failed: {done.stderr[-3000:]}")
    return out / notebook.with_suffix(".html").name


def open_offline(context: Any, path: Path) -> Any:
    """A page showing a local HTML file with the network cut, as for anyone reading it offline."""
    page = context.new_page()
    page.route(re.compile(r"^https?://"), lambda route: route.abort())
    page.goto(path.as_uri(), wait_until="load")
    return page


# -- the tests -------------------------------------------------------------------------------------

def test_quickstart_in_jupyterlab_and_static_html(lab: Any, browser: Any) -> None:
    source = lab.add_notebook(NOTEBOOK)
    has_monitor = bool(MONITOR_CALL.search(source.read_text()))
    pids: set[int] = set()
    context = browser.new_context(viewport={"width": WIDTH, "height": 2400})
    context.set_default_timeout(30_000)
    page = context.new_page()
    try:
        open_notebook(page, lab, NOTEBOOK)
        pids = run_all_cells(page, lab.home)
        assert pids, "the store never recorded an nbdeploy server while the notebook ran"

        url = check_card(page, lab.url)
        if has_monitor:
            check_monitor(page)
        notebook_text = page.locator(".jp-Notebook").inner_text()
        assert "(1, 'ready')" in notebook_text  # the plain-Python cells below the card saw it too
        notebook_screenshot(page, IMAGES / "quickstart-jupyterlab.png")

        # Saved from JupyterLab as a user would (default settings: no widget state in the file),
        # then rendered by nbconvert and read with no network: the text/html twins must carry it.
        save_notebook(page)
        html = to_html(lab.root / NOTEBOOK, lab.base / "html", lab.env)
        static = open_offline(context, html)
        check_static_card(static, url)
        if has_monitor:
            check_static_monitor(static)
        assert not [t for t in WIDGET_FAILURES if t in static.locator("body").inner_text()]
        static.set_viewport_size({"width": WIDTH, "height": 1000})
        _save_png(static.screenshot(full_page=True), IMAGES / "quickstart-static-html.png")
    except BaseException:
        page.screenshot(path=str(lab.base / "failure.png"))  # what JupyterLab showed, for the record
        raise
    finally:
        context.close()
        lab.end_sessions()  # sessions (and their kernels) first; JupyterLab serves the next test
        nbdeploy.shutdown(str(lab.home))
    for pid in pids:
        assert not pid_alive(pid), f"the nbdeploy server (pid {pid}) is still running"
    left = lab.leftovers()
    assert not left, f"processes left behind: {left}"


# -- the models panel in JupyterLab's side area, and the monitor after a retrain -------------------

PANEL_NOTEBOOK = "models-panel.ipynb"
PANEL_RUN_TIMEOUT = 240.0


def panel_cells(home: Path) -> list[str]:
    """Two models: ``bend`` gets traffic, labels and a retrain (two production versions), ``iris`` one version;
    then the monitor of ``bend`` and the models panel."""
    return [
        f"%env NBDEPLOY_HOME={home}\n%load_ext nbdeploy",
        "import numpy as np\nimport pandas as pd\nfrom sklearn.datasets import load_iris\n"
        "from sklearn.ensemble import HistGradientBoostingClassifier\nfrom sklearn.linear_model import "
        "LogisticRegression\n\nimport nbdeploy\n\nrng = np.random.default_rng(0)\n\n\n"
        "def world(n, shift=0.0):\n    X = rng.normal(size=(n, 3))\n    X[:, 0] += shift\n"
        "    y = (X[:, 1] > np.where(X[:, 0] > 1.5, 2 * (X[:, 0] - 1.5), 0.0)).astype(int)\n"
        "    return pd.DataFrame(X, columns=['x0', 'x1', 'x2']), y\n\n\n"
        "X, y = world(1500)\nmodel = HistGradientBoostingClassifier(max_iter=50)",
        "%deploy train model X y --name bend --seed 0\n%deploy model --name bend --sample X",
        "dep = nbdeploy.get('bend')\npending = []\nfor shift in [0.0] * 4 + [3.0] * 4:\n"
        "    Xb, yb = world(200, shift)\n    predicted, ids = dep.predict(Xb, return_ids=True)\n"
        "    pending.append((ids, yb))\n    if len(pending) > 1:\n        dep.feedback(*pending.pop(0))\n"
        "dep.feedback(*pending.pop(0))",
        "result = nbdeploy.retrain('bend', with_feedback=True, promote=True)\n"
        "if not result.promoted:  # the panel rolls production back: it needs an earlier production version\n"
        "    nbdeploy.promote('bend', result.version, force=True)\n"
        "for _ in range(3):\n    Xb, yb = world(200, 3.0)\n    predicted, ids = dep.predict(Xb, return_ids=True)\n"
        "    dep.feedback(ids, yb)\ndep.version",
        "%deploy monitor bend --interval 2",
        "iris = load_iris(as_frame=True)\nXi, yi = iris.data, iris.target\n"
        "clf = LogisticRegression(max_iter=1000).fit(Xi, yi)\n%deploy clf --name iris --sample Xi\n"
        "nbdeploy.get('iris').predict(Xi.iloc[:60]).shape",
        "%deploy panel --interval 2",
    ]


def show_last_cell(page: Any, cell: Any, tries: int = 20) -> None:
    """Scroll the notebook to its last cell (``cell``) until that cell is in the window: the live outputs above
    it change height while the notebook lays itself out."""
    height = page.viewport_size["height"]
    for _ in range(tries):
        page.evaluate("""async () => { const nb = window.jupyterapp.shell.currentWidget.content;
          nb.activeCellIndex = nb.widgets.length - 1; await nb.scrollToItem(nb.widgets.length - 1, 'end'); }""")
        page.wait_for_timeout(250)
        box = cell.bounding_box()
        if box and box["y"] > 60 and box["y"] + box["height"] < height:
            return
    pytest.fail(f"the last cell did not scroll into view: {cell.bounding_box()}")


def model_row(side: Any, name: str) -> Any:
    """The panel's row of ``name`` (its summary, buttons and messages)."""
    return side.locator(".nbdeploy-panel-row", has=side.page.locator(f'.nbdeploy-model[data-model="{name}"]'))


def check_monitor_after_retrain(page: Any) -> None:
    """The monitor of ``bend`` after traffic, labels and a retrain: drawn by the widget manager, its charts
    rendered; screenshot for the docs."""
    cell = page.locator(".jp-CodeCell", has_text="%deploy monitor bend")
    output = cell.locator(".jp-OutputArea-output .jupyter-widgets").first
    output.wait_for(state="visible", timeout=30_000)
    assert_no_widget_failures(page)
    assert "bend" in output.inner_text()
    assert_images_rendered(output, "monitor of bend")
    output.scroll_into_view_if_needed()
    _save_png(output.screenshot(), IMAGES / "monitor-timeline.png")


def check_panel(page: Any) -> None:
    """What the side area shows: both models with a status light, versions and aliases, a sparkline and the
    buttons; rolling ``bend`` back (after the confirmation) changes the production version it shows; a
    model's monitor opens under it and closes."""
    from playwright.sync_api import expect

    side = page.locator("#jp-right-stack")
    side.wait_for(state="visible", timeout=30_000)
    # As wide as a user might drag it (JupyterLab opens the side area narrow); the notebook stays beside it.
    page.evaluate("() => window.jupyterapp.shell._hsplitPanel?.setRelativeSizes([0, 0.7, 0.3])")
    bend, iris = model_row(side, "bend"), model_row(side, "iris")
    bend.wait_for(state="visible", timeout=30_000)
    iris.wait_for(state="visible", timeout=30_000)
    assert_no_widget_failures(page)
    assert side.locator(".nbdeploy-models-panel").inner_text().startswith("nbdeploy models · 2 models")
    for row, versions in ((bend, "versions v1, v2"), (iris, "versions v1")):
        text = row.inner_text()
        assert versions in text and "production → v" in text, text
        assert row.locator(".nbdeploy-light").is_visible(), text
        assert "serving" in row.locator(".nbdeploy-status").inner_text(), text
        sparkline = row.locator("svg.nbdeploy-sparkline")
        assert sparkline.is_visible() and sparkline.bounding_box()["width"] > 50, text
        assert row.get_by_role("button", name="Monitor").is_visible(), text
        assert "in the last hour" in text, text
    assert "production → v2" in bend.inner_text()
    assert iris.get_by_role("button", name="Roll back").is_disabled()  # one version: nothing to go back to
    bend.get_by_role("button", name="Roll back to v1").click()
    confirm = bend.locator(".widget-hbox", has_text="Serve v1 instead of v2")
    confirm.wait_for(state="visible")
    confirm.get_by_role("button", name="Roll back").click()
    bend.locator(".nbdeploy-versions", has_text="production → v1").wait_for(state="visible", timeout=30_000)
    assert bend.locator(".nbdeploy-action").inner_text() == "production → v1"  # what the click did, in the row
    assert_no_widget_failures(page)
    page.set_viewport_size({"width": 1400, "height": 820})  # the notebook's last cells beside the side area
    show_last_cell(page, page.locator(".jp-CodeCell", has_text="%deploy panel"))
    _save_png(page.screenshot(), IMAGES / "panel.png")

    # The monitor opens inside the panel, under its model, and closes again.
    iris.get_by_role("button", name="Monitor").click()
    iris.locator("img").first.wait_for(state="visible")
    assert_images_rendered(iris.locator(".jupyter-widgets", has=page.locator("img")).last, "monitor in the panel")
    iris.get_by_role("button", name="Hide monitor").click()
    expect(iris.locator("img")).to_have_count(0)
    expect(iris.get_by_role("button", name="Monitor")).to_be_visible()


def test_models_panel_in_the_side_area(lab: Any, browser: Any) -> None:
    home = lab.base / "panel-home"
    lab.write_notebook(PANEL_NOTEBOOK, panel_cells(home))
    pids: set[int] = set()
    context = browser.new_context(viewport={"width": 1400, "height": 2400})
    context.set_default_timeout(30_000)
    page = context.new_page()
    try:
        open_notebook(page, lab, PANEL_NOTEBOOK, workspace="panel")
        pids = run_all_cells(page, home, timeout=PANEL_RUN_TIMEOUT)
        check_monitor_after_retrain(page)
        check_panel(page)
    except BaseException:
        page.screenshot(path=str(lab.base / "panel-failure.png"))
        raise
    finally:
        context.close()
        lab.end_sessions()
        nbdeploy.shutdown(str(home))
    for pid in pids:
        assert not pid_alive(pid), f"the nbdeploy server (pid {pid}) is still running"
    left = lab.leftovers()
    assert not left, f"processes left behind: {left}"
