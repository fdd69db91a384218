"""Fixtures of the store's tests: a store's log on either backend."""

from __future__ import annotations

import pytest

from nbdeploy.store import Store


@pytest.fixture
def log_home(store_home: str) -> str:
    """A store's location on each backend (a directory, then a PostgreSQL URL), the store created:
    on PostgreSQL that creates the log's tables."""
    Store(store_home)
    return store_home
