"""nbdeploy: from a notebook cell to a monitored ONNX Runtime endpoint.

``%load_ext nbdeploy`` registers the ``%deploy`` magic; the same workflow is plain Python here.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

from nbdeploy.api import Deployment, deploy, deployments, get, shutdown
from nbdeploy.errors import NbdeployError

__all__ = [
    "Deployment",
    "NbdeployError",
    "__version__",
    "deploy",
    "deployments",
    "get",
    "load_ipython_extension",
    "shutdown",
]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbdeploy``: IPython is imported only here, never by the rest of the package."""
    from nbdeploy.magics import DeployMagics

    ipython.register_magics(DeployMagics(ipython))
