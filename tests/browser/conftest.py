"""Real-browser fixtures: Debian's Chromium driven by Playwright, a JupyterLab server on loopback.

Everything lives in one temporary directory (notebooks, nbdeploy store, Jupyter config, runtime,
settings and workspaces), so the run touches nothing of the user's and every process it starts
can be found again by that path and checked to be gone.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("NBDEPLOY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
LAB_START_TIMEOUT = 60.0
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

# No news or update toasts over the notebook in screenshots.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                       "checkForUpdates": False},
}


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """The system Chromium; missing is a failure with the fix, never a silent skip (CI installs it)."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"Chromium not found at {CHROMIUM}: the browser tests need Debian's chromium package. "
                    "Install it with `apt-get install -y chromium` (.ci/run does this), "
                    "or point NBDEPLOY_CHROMIUM at a Chromium binary.", pytrace=False)
    return CHROMIUM


@pytest.fixture(scope="module")  # Playwright holds a running event loop: release it after the module
def browser(chromium_path: str) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the browser tests need the playwright package: .venv/bin/pip install -e '.[dev]' "
                    "(do not run `playwright install`: the tests use the system Chromium)", pytrace=False)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _processes_mentioning(text: str) -> dict[int, str]:
    """Live processes whose command line contains ``text`` (pid -> command line)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        if text in cmdline and state != "Z":
            found[int(entry.name)] = cmdline
    return found


@dataclass
class Lab:
    """A running JupyterLab: its URL and token, the notebooks folder and the nbdeploy store it uses."""

    url: str
    token: str
    base: Path
    root: Path
    home: Path
    proc: subprocess.Popen
    log: Path
    env: dict[str, str]

    def api(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            text = resp.read()
        return json.loads(text) if text else None

    def page_url(self, path: str) -> str:
        return f"{self.url}{path}?token={self.token}"

    def write_notebook(self, name: str, cells: list[str]) -> Path:
        """A notebook of code cells written for a test (nothing from ``notebooks/``)."""
        nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": f"cell-{i}", "metadata": {},
                         "outputs": [], "source": source} for i, source in enumerate(cells)],
              "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
              "nbformat": 4, "nbformat_minor": 5}
        path = self.root / name
        path.write_text(json.dumps(nb, indent=1))
        return path

    def add_notebook(self, name: str) -> Path:
        """Copy a notebook from ``notebooks/`` without its outputs or saved widget state, so nothing
        on screen can be left over from the run that saved it."""
        nb = json.loads((NOTEBOOKS / name).read_text())
        nb["metadata"].pop("widgets", None)
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                cell["outputs"], cell["execution_count"] = [], None
        path = self.root / name
        path.write_text(json.dumps(nb, indent=1))
        return path

    def processes(self) -> dict[int, str]:
        """Live processes started for this lab (their command lines name its directory)."""
        return _processes_mentioning(str(self.base))

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def end_sessions(self, timeout: float = 20.0) -> None:
        """Shut down every session, then any kernel left, and wait for their processes to go; JupyterLab
        itself keeps running for the next test."""
        if self.proc.poll() is None:
            for path, key in (("/api/sessions", "id"), ("/api/kernels", "id")):
                try:
                    for item in self.api("GET", path):
                        self.api("DELETE", f"{path}/{item[key]}", timeout=30)
                except (urllib.error.URLError, OSError):
                    pass
        kernels = str(self.base / "jupyter-runtime")  # a kernel's command line names its connection file there
        deadline = time.monotonic() + timeout
        while _processes_mentioning(kernels) and time.monotonic() < deadline:
            time.sleep(0.2)

    def leftovers(self) -> dict[int, str]:
        """Processes started for this lab that are still running, besides JupyterLab itself."""
        return {pid: cmd for pid, cmd in self.processes().items() if pid != self.proc.pid}

    def shutdown(self) -> None:
        """Sessions first (their kernels outlive a killed server), then any kernel left, then the server."""
        if self.proc.poll() is None:
            self.end_sessions()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def start_lab(base: Path) -> Lab:
    root, home = base / "notebooks", base / "home"
    root.mkdir(parents=True)
    home.mkdir()
    settings = base / "lab-settings"
    for rel, value in LAB_SETTINGS.items():
        path = settings / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    env = {
        **os.environ,
        "NBDEPLOY_HOME": str(home),
        "JUPYTER_CONFIG_DIR": str(base / "jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(base / "jupyter-runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(base / "lab-workspaces"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    port, token = free_port(), secrets.token_hex(24)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
           "--LabApp.expose_app_in_browser=True"]
    log = base / "jupyterlab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    lab = Lab(url=f"http://127.0.0.1:{port}", token=token, base=base, root=root, home=home, proc=proc, log=log,
              env=env)
    deadline = time.monotonic() + LAB_START_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited at start-up (code {proc.returncode}):\n{lab.log_tail()}")
        try:
            lab.api("GET", "/api/status", timeout=2)
            return lab
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                lab.shutdown()
                pytest.fail(f"JupyterLab did not answer /api/status within {LAB_START_TIMEOUT:.0f} s:\n"
                            f"{lab.log_tail()}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """JupyterLab on loopback with a random token, started once for the module's tests (each ends its own
    sessions); at the end nothing it started may be left running."""
    lab = start_lab(tmp_path_factory.mktemp("lab"))
    try:
        yield lab
    finally:
        lab.shutdown()
    left = lab.processes()
    assert not left, f"processes left behind: {left}"

