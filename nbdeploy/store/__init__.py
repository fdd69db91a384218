"""The registry (versions, aliases, serving state) and, later, the prediction log."""

from nbdeploy.store.registry import PRODUCTION, ServerRecord, Store, VersionRecord, check_name

__all__ = ["PRODUCTION", "ServerRecord", "Store", "VersionRecord", "check_name"]
