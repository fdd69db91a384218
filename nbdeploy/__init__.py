"""nbdeploy: from a notebook cell to a monitored ONNX Runtime endpoint.

``%load_ext nbdeploy`` registers the ``%deploy`` magic; the same workflow is plain Python here.
Names load on first use, so ``import nbdeploy`` stays cheap (the server and an in-process
predictor never pay for scikit-learn or IPython).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nbdeploy._version import __version__

_LAZY = {
    "Deployment": "nbdeploy.deployment",
    "FidelityRefused": "nbdeploy.convert.fidelity",
    "GateRefused": "nbdeploy.lifecycle.promotion",
    "NbdeployError": "nbdeploy.errors",
    "alerts": "nbdeploy.api",
    "canary": "nbdeploy.api",
    "delete": "nbdeploy.api",
    "deploy": "nbdeploy.api",
    "deployments": "nbdeploy.api",
    "evaluate": "nbdeploy.lifecycle.evaluation",
    "export": "nbdeploy.api",
    "get": "nbdeploy.api",
    "load": "nbdeploy.local",
    "models": "nbdeploy.api",
    "panel": "nbdeploy.api",
    "promote": "nbdeploy.api",
    "prune": "nbdeploy.api",
    "report": "nbdeploy.api",
    "retrain": "nbdeploy.api",
    "rollback": "nbdeploy.api",
    "shadow": "nbdeploy.api",
    "shutdown": "nbdeploy.api",
    "train": "nbdeploy.api",
    "upgrade": "nbdeploy.api",
}

__all__ = [
    "Deployment",
    "FidelityRefused",
    "GateRefused",
    "NbdeployError",
    "__version__",
    "alerts",
    "canary",
    "delete",
    "deploy",
    "deployments",
    "evaluate",
    "export",
    "get",
    "load",
    "load_ipython_extension",
    "models",
    "panel",
    "promote",
    "prune",
    "report",
    "retrain",
    "rollback",
    "shadow",
    "shutdown",
    "train",
    "upgrade",
]

if TYPE_CHECKING:
    from nbdeploy.api import (
        alerts,
        canary,
        delete,
        deploy,
        deployments,
        export,
        get,
        models,
        panel,
        promote,
        prune,
        report,
        retrain,
        rollback,
        shadow,
        shutdown,
        train,
        upgrade,
    )
    from nbdeploy.convert.fidelity import FidelityRefused
    from nbdeploy.deployment import Deployment
    from nbdeploy.errors import NbdeployError
    from nbdeploy.lifecycle.evaluation import evaluate
    from nbdeploy.lifecycle.promotion import GateRefused
    from nbdeploy.local import load


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nbdeploy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbdeploy``: IPython is imported only here, never by the rest of the package."""
    from nbdeploy.magics import DeployMagics

    ipython.register_magics(DeployMagics(ipython))
