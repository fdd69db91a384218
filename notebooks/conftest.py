"""nbval runs these notebooks as tests; each notebook's kernel gets a store of its own."""

import os
import tempfile
from pathlib import Path

import pytest

_HOMES: list[str] = []


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    # The kernel starts when the notebook's first cell is set up and inherits this environment:
    # a fresh store per notebook, so the versions and model lists it prints are the ones saved in
    # it (a user's own runs keep ./.nbdeploy and count up).
    notebook = item.parent
    if getattr(notebook, "nbdeploy_home", None) is None:
        notebook.nbdeploy_home = tempfile.mkdtemp(prefix=f"nbdeploy-{Path(str(notebook.path)).stem}-")
        os.environ["NBDEPLOY_HOME"] = notebook.nbdeploy_home
        _HOMES.append(notebook.nbdeploy_home)


def pytest_sessionfinish(session, exitstatus):
    # Servers outlive the kernels that started them (by design); a notebook that failed half-way
    # must not leave its server running after the tests.
    import nbdeploy

    for home in _HOMES:
        nbdeploy.shutdown(home)
