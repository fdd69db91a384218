"""The registry (versions, aliases, runs, serving state); the prediction log is in store.log."""

from nbdeploy.store.registry import (
    PRODUCTION,
    SHADOW,
    IntegrityError,
    ServerRecord,
    Store,
    VersionRecord,
    check_name,
    default_home,
    open_store,
    process_start,
    store_path,
    version_number,
)

__all__ = ["PRODUCTION", "SHADOW", "IntegrityError", "ServerRecord", "Store", "VersionRecord", "check_name",
           "default_home", "open_store", "process_start", "store_path", "version_number"]
