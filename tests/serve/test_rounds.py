"""A failed background round is reported: one line a minute while the database is out of reach, a
traceback for anything else."""

from __future__ import annotations

import logging

import psycopg
import pytest

from nbdeploy.serve import rounds


def _fail(exc: BaseException, what: str) -> None:
    try:
        raise exc
    except Exception:
        rounds.failed(what)


def test_an_unreachable_database_is_one_line_a_minute(caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rounds, "_last", {})
    caplog.set_level(logging.WARNING, logger="nbdeploy.server")
    for _ in range(3):
        _fail(psycopg.OperationalError("connection to server at \"127.0.0.1\", port 5432 failed\nmore"), "cannot sync")
    lines = [r for r in caplog.records if r.name == "nbdeploy.server"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING and lines[0].exc_info is None
    assert lines[0].getMessage() == ("cannot sync: the store's database is out of reach for now (connection to "
                                     "server at \"127.0.0.1\", port 5432 failed); trying again")
    monkeypatch.setattr(rounds, "_last", {"cannot sync": -1e9})  # a minute later: said again
    _fail(psycopg.OperationalError("down"), "cannot sync")
    assert len([r for r in caplog.records if r.name == "nbdeploy.server"]) == 2


def test_anything_else_is_a_traceback_every_time(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="nbdeploy.server")
    for _ in range(2):
        _fail(KeyError("version"), "cannot judge alert levels")
    lines = [r for r in caplog.records if r.name == "nbdeploy.server"]
    assert len(lines) == 2 and all(r.levelno == logging.ERROR and r.exc_info for r in lines)
