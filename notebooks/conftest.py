"""nbval runs these notebooks as tests; their kernels inherit this process's environment."""

import os
import tempfile


def pytest_configure(config):
    # Each test session starts from an empty store, so the versions the notebooks print are the
    # ones saved in them (a user's own runs keep ./.nbdeploy and count up).
    os.environ["NBDEPLOY_HOME"] = tempfile.mkdtemp(prefix="nbdeploy-notebooks-")
