"""The quickstart as a user sees it: JupyterLab in a real Chromium, then the saved notebook as static HTML.

``test_quickstart_in_jupyterlab_and_static_html``, in order: open ``01-quickstart`` in JupyterLab,
run all cells, check what is on screen (the deployment card drawn by the widget manager with its
URL, ready status and curl call; no "Loading widget..." left), screenshot it; save it from
JupyterLab, convert the saved file with nbconvert, open the HTML offline and check the card is
still readable, screenshot it; then stop everything and check no process is left. When the
quickstart shows the live monitor (a ``.monitor(`` or ``%deploy monitor`` call), the same run
checks its figures and charts are drawn, in JupyterLab and in the HTML.

The screenshots are overwritten in ``docs/images/`` on every run (the README shows one).
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


def assert_images_rendered(region: Any, what: str) -> None:
    """Every <img> in ``region`` has loaded with a real size, and there is at least one <img>/<canvas>."""
    sizes = region.evaluate("""el => [...el.querySelectorAll('img, canvas')].map(i =>
        i.tagName === 'IMG' ? [i.complete, i.naturalWidth, i.naturalHeight] : [true, i.width, i.height])""")
    assert sizes, f"{what}: no chart (<img> or <canvas>) in {region.inner_text()[:300]!r}"
    assert all(done and w > 50 and h > 50 for done, w, h in sizes), f"{what}: charts not rendered: {sizes}"


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

def open_notebook(page: Any, lab: Any, name: str) -> None:
    """Open a notebook in JupyterLab, wait for its kernel to be idle, fold the side panels away."""
    page.goto(lab.page_url(f"/lab/tree/{name}"))
    page.wait_for_function("""() => {
      const w = window.jupyterapp?.shell?.currentWidget;
      return w?.sessionContext?.session?.kernel?.status === 'idle' && w.content?.widgets?.length > 0;
    }""", timeout=60_000)
    page.evaluate("() => { window.jupyterapp.shell.collapseLeft(); window.jupyterapp.shell.collapseRight(); }")


def run_all_cells(page: Any, home: Path) -> set[int]:
    """Run all cells and wait until every cell ran and the kernel is idle. Returns the pids of the
    nbdeploy server the store recorded meanwhile (the quickstart stops it in its last cell)."""
    page.evaluate("""() => { delete window.__nbdeployRunAll;
      window.jupyterapp.commands.execute('notebook:run-all-cells')
        .then(ok => { window.__nbdeployRunAll = ok; }, err => { window.__nbdeployRunAll = String(err); }); }""")
    pids: set[int] = set()
    store = None
    deadline = time.monotonic() + RUN_TIMEOUT
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
            pytest.fail(f"the cells did not finish within {RUN_TIMEOUT:.0f} s: {state}{_server_log(home)}")
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
        lab.shutdown()  # sessions (and their kernels) first, then JupyterLab
        nbdeploy.shutdown(str(lab.home))
    for pid in pids:
        assert not pid_alive(pid), f"the nbdeploy server (pid {pid}) is still running"
    left = lab.processes()
    assert not left, f"processes left behind: {left}"
