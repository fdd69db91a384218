"""Refused requests reach the server log: the first at once, then a summary a minute, per model."""

from __future__ import annotations

import logging

import pytest


def test_refused_requests_are_summarised_in_the_server_log(make_client, caplog: pytest.LogCaptureFixture) -> None:
    client = make_client()
    bad = {"inputs": [{"name": "sepal length (cm)", "datatype": "FP32", "shape": [1, 1], "data": ["x"]}]}
    with caplog.at_level(logging.WARNING, logger="nbdeploy.server"):
        for _ in range(3):
            assert client.post("/v2/models/iris/infer", json=bad).status_code == 400
        lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert lines == ["iris: 1 request refused (400 ×1); last: input 'sepal length (cm)': expected numbers "
                         "(FP32), got the text 'x' at row 0"]  # the next two wait for the minute's summary
        client.app.state.ctx.refusals.flush()
        lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert lines[-1].startswith("iris: 2 requests refused (400 ×2); last: input 'sepal length (cm)'")
