"""The registry (versions, aliases, runs, serving state); the prediction log is in store.log."""

from nbdeploy.store.registry import PRODUCTION, SHADOW, ServerRecord, Store, VersionRecord, check_name

__all__ = ["PRODUCTION", "SHADOW", "ServerRecord", "Store", "VersionRecord", "check_name"]
