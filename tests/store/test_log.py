"""store/log.py: the batched prediction writer, rollups, dropped events and durable feedback."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from logtables import log_db

from nbdeploy.errors import InvalidInput
from nbdeploy.monitor import reference_profile
from nbdeploy.store.events import PredictionEvent
from nbdeploy.store.log import (
    BUCKET_SECONDS,
    N_LATENCY,
    LogSettings,
    PredictionLog,
    feedback_status,
    label_key,
    registry_profiles,
    row_ids,
)

COLUMNS = ["a", "colour"]


def event(i: int | str, *, n: int = 1, model: str = "m", version: int = 1, status: int = 200,
          a: float = 1.0, colour: str = "red", ts: float | None = None, latency: float = 2.0) -> PredictionEvent:
    inputs = {"a": np.full(n, a), "colour": np.array([colour] * n, dtype=object)}
    outputs = {} if status != 200 else {
        "label": np.arange(n) % 2, "probabilities": np.tile(np.array([[0.25, 0.75]], np.float32), (n, 1))}
    return PredictionEvent(id=str(i), ts=time.time() if ts is None else ts, model=model, version=version,
                           inputs=inputs, outputs=outputs, latency_ms=latency, status=status,
                           error=None if status == 200 else "bad input")


def db(log: PredictionLog) -> Any:
    """A new connection to the log's tables, on the log's backend."""
    return log_db(log.location.text)


def rollup(log: PredictionLog, column: str, model: str = "m") -> int:
    return db(log).execute(f"SELECT COALESCE(SUM({column}), 0) FROM rollup WHERE model = ?", (model,)).fetchone()[0]


@pytest.fixture
def log(log_home: str):
    log = PredictionLog(log_home, start=False)
    yield log
    log.close()


def test_predictions_are_logged_with_ids_inputs_outputs_and_status(log: PredictionLog) -> None:
    log.put(event("r1"))
    log.put(event("r2", n=3))
    log.put(event("r3", status=400))
    log.flush()
    rows = db(log).execute("SELECT id, model, version, inputs, label, proba, latency_ms, status, error "
                           "FROM predictions ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == ["r1", "r2:0", "r2:1", "r2:2", "r3"]
    assert rows[0][1:] == ("m", 1, b'[1.0,"red"]', 0, b"[0.25,0.75]", 2.0, 200, None)
    assert [r[4] for r in rows[1:4]] == [0, 1, 0]
    assert rows[4][4:] == (None, None, 2.0, 400, "bad input")
    names = db(log).execute("SELECT names FROM columns WHERE model = 'm'").fetchone()[0]
    assert orjson.loads(names) == COLUMNS
    assert (rollup(log, "requests"), rollup(log, "rows"), rollup(log, "errors")) == (3, 4, 1)
    assert row_ids("x", 1) == ["x"] and row_ids("x", 2) == ["x:0", "x:1"]


def test_array_inputs_become_positional_features_and_float32_stays_short(log: PredictionLog) -> None:
    arr = np.array([[5.1, 3.5, 1.4]], np.float32)
    log.put(PredictionEvent(id="a", ts=time.time(), model="arr", version=2, inputs={"input": arr},
                            outputs={"label": np.array([1.5], np.float32)}, latency_ms=1, status=200, error=None))
    log.flush()
    row = db(log).execute("SELECT inputs, label FROM predictions WHERE id = 'a'").fetchone()
    assert row == (b"[5.1,3.5,1.4]", 1.5)
    names = db(log).execute("SELECT names FROM columns WHERE model = 'arr'").fetchone()[0]
    assert orjson.loads(names) == ["x0", "x1", "x2"]


def test_latency_histogram_and_buckets(log: PredictionLog) -> None:
    ts = 1_000_000.0
    for i, ms in enumerate([1.0, 2.0, 3.0, 250.0]):
        log.put(event(i, ts=ts + i, latency=ms))
    log.put(event("later", ts=ts + 3 * BUCKET_SECONDS))
    log.flush()
    rows = db(log).execute("SELECT bucket, requests, latency_sum, latency FROM rollup ORDER BY bucket").fetchall()
    assert [r[0] for r in rows] == [int(ts // BUCKET_SECONDS), int(ts // BUCKET_SECONDS) + 3]
    assert rows[0][1:3] == (4, 256.0)
    hist = np.frombuffer(rows[0][3], np.int64)
    assert len(hist) == N_LATENCY and hist.sum() == 4


def test_a_full_queue_drops_and_counts_and_the_count_is_persisted(log_home: str) -> None:
    log = PredictionLog(log_home, start=False, max_queue=3)
    for i in range(5):
        log.put(event(i))
    assert log.dropped == 2
    log.flush()
    assert db(log).execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 3
    assert rollup(log, "dropped") == 2  # the monitor in another process sees the loss too
    log.close()


def test_put_never_raises_and_bad_events_are_counted(log: PredictionLog) -> None:
    log.put(None)  # type: ignore[arg-type]
    ragged = event("ragged")
    ragged.inputs["a"] = np.array([1.0, 2.0])  # two values, one label
    log.put(ragged)
    log.put(event("ok"))
    log.flush()
    assert log.dropped == 2
    assert db(log).execute("SELECT id FROM predictions").fetchall() == [("ok",)]


def test_put_after_close_counts_a_drop(log_home: str) -> None:
    log = PredictionLog(log_home)
    log.put(event("before"))
    log.close()  # commits what was queued
    log.put(event("after"))
    assert log.dropped == 1
    assert db(log).execute("SELECT id FROM predictions").fetchall() == [("before",)]


def test_duplicate_keys_are_logged_once_and_counted_as_dropped(log: PredictionLog) -> None:
    log.put(event("same"))  # the server never makes one key twice; a caller of the log might
    log.put(event("same", a=2.0))
    log.flush()
    assert log.duplicates == log.dropped == 1
    assert db(log).execute("SELECT inputs FROM predictions").fetchall() == [(b'[1.0,"red"]',)]


def test_writer_thread_commits_within_its_interval(log_home: str) -> None:
    log = PredictionLog(log_home, interval=0.02)
    log.put(event("t"))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not db(log).execute("SELECT 1 FROM predictions").fetchone():
        time.sleep(0.01)
    assert db(log).execute("SELECT id FROM predictions").fetchall() == [("t",)]
    log.close()


def test_out_of_range_missing_and_unseen_inputs_are_counted_per_feature(log_home: str) -> None:
    train = pd.DataFrame({"a": [0.0, 1.0, 2.0] * 10, "colour": ["red", "blue", "red"] * 10})
    profile = reference_profile(train)
    log = PredictionLog(log_home, profiles=lambda m, v: profile, start=False)
    for i, (a, colour) in enumerate([(1.0, "red"), (5.0, "blue"), (-1.0, "green"), (float("nan"), "red")]):
        log.put(event(i, a=a, colour=colour))
    log.flush()
    rows = db(log).execute("SELECT feature, n, missing, out_of_range, unseen FROM feature_rollup "
                           "ORDER BY feature").fetchall()
    assert rows == [("a", 4, 1, 2, 0), ("colour", 4, 0, 0, 1)]
    log.close()


def test_registry_profiles_read_model_json(tmp_path: Path) -> None:
    from nbdeploy.store import Store

    store = Store(tmp_path / "home")
    store.register("m", b"onnx", {"profile": {"columns": {}}})
    assert registry_profiles(store)("m", 1) == {"columns": {}}


@pytest.mark.parametrize(("values", "key"), [([1, 1.0, "1", np.int64(1)], "1"), ([True, np.bool_(True)], "True"),
                                             (["setosa", "setosa"], "setosa")])
def test_labels_and_profile_categories_share_one_key(values: list, key: str) -> None:
    import pandas as pd

    assert {label_key(v) for v in values} == {key}
    profile = reference_profile(pd.DataFrame({"c": pd.Series(values, dtype=object)}))
    assert list(profile["columns"]["c"]["counts"]) == [key]
    assert label_key(None) is None and label_key(float("nan")) is None


# -- feedback ----------------------------------------------------------------------------
def test_feedback_records_labels_and_updates_rollups(log: PredictionLog) -> None:
    for i in range(3):
        log.put(event(f"p{i}"))  # predicted label 0
    log.flush()
    result = log.feedback("m", [{"id": "p0", "label": 0}, {"id": "p1", "label": "1"}])
    assert result == {"accepted": 2, "updated": 0, "unchanged": 0, "errors": []}
    assert feedback_status(result) == 200
    assert (rollup(log, "labelled"), rollup(log, "correct")) == (2, 1)
    assert rollup(log, "err_n") == 1  # "1" is not a number: only p0 has a numeric error


def test_feedback_is_idempotent_and_a_new_label_replaces_the_old(log: PredictionLog) -> None:
    log.put(event("p"))
    log.flush()
    log.feedback("m", {"id": "p", "label": 0})
    assert log.feedback("m", {"id": "p", "label": 0.0}) == {"accepted": 1, "updated": 0, "unchanged": 1,
                                                           "errors": []}
    assert log.feedback("m", {"id": "p", "label": 1})["updated"] == 1
    assert (rollup(log, "labelled"), rollup(log, "correct"), rollup(log, "sq_err")) == (1, 0, 1.0)
    assert db(log).execute("SELECT label, updates FROM feedback WHERE id = 'p'").fetchone() == (1, 1)


def test_feedback_errors_are_per_item(log: PredictionLog) -> None:
    log.put(event("p"))
    log.put(event("multi", n=2))
    log.put(event("failed", status=400))
    log.put(event("other", model="other"))
    log.flush()
    result = log.feedback("m", [
        {"id": "p", "label": 1}, {"id": "nope", "label": 1}, {"id": "multi", "label": 1},
        {"id": "failed", "label": 1}, {"id": "other", "label": 1}, {"id": "p", "label": None},
        {"label": 1}, "text", {"id": "p", "label": float("inf")}, {"id": "p", "label": [1]}])
    assert result["accepted"] == 1
    errors = {e["index"]: (e["status"], e["error"]) for e in result["errors"]}
    assert errors[1][0] == 404 and "no logged prediction with id 'nope'" in errors[1][1]
    assert errors[2][0] == 404 and "'multi:0'" in errors[2][1]
    assert errors[3][0] == 400 and "failed request" in errors[3][1]
    assert errors[4][0] == 404 and "model 'other'" in errors[4][1]
    assert {errors[i][0] for i in (5, 6, 7, 8, 9)} == {400}
    assert feedback_status(result) == 207
    assert feedback_status(log.feedback("m", [{"id": "x", "label": 1}])) == 404
    assert feedback_status(log.feedback("m", [{"id": "x", "label": 1}, {"id": "p"}])) == 400


@pytest.mark.parametrize("payload", [[], "x", 3, None])
def test_a_payload_that_is_not_feedback_is_refused(log: PredictionLog, payload: object) -> None:
    with pytest.raises(InvalidInput, match="non-empty list"):
        log.feedback("m", payload)


def test_a_label_may_overtake_its_prediction_in_the_queue(log_home: str) -> None:
    log = PredictionLog(log_home, interval=30)  # the writer would not commit for 30 s on its own
    log.put(event("queued"))
    started = time.monotonic()
    assert log.feedback("m", {"id": "queued", "label": 0})["accepted"] == 1
    assert time.monotonic() - started < 5
    log.close()


# -- keys: the server's, with the client's id beside them ---------------------------------
def test_a_repeated_client_id_loses_nothing(log: PredictionLog) -> None:
    # Many V2 clients send one fixed id: the log key is the server's, the client's id is kept beside it.
    for i in range(5):
        log.put(_with_client(event(f"key{i}"), "1"))
    log.put(_with_client(event("multi", n=3), "1"))
    log.flush()
    rows = db(log).execute("SELECT id, client_id FROM predictions ORDER BY seq").fetchall()
    assert rows == [*((f"key{i}", "1") for i in range(5)), ("multi:0", "1"), ("multi:1", None), ("multi:2", None)]
    assert log.dropped == log.duplicates == 0


def _with_client(e: PredictionEvent, client_id: str) -> PredictionEvent:
    e.client_id = client_id
    return e


def test_feedback_by_key_or_by_a_client_id_naming_one_request(log: PredictionLog) -> None:
    log.put(_with_client(event("k1"), "mine"))
    log.put(_with_client(event("k2", n=2), "rows"))
    log.put(_with_client(event("k3"), "same"))
    log.put(_with_client(event("k4"), "same"))
    log.flush()
    result = log.feedback("m", [{"id": "k1", "label": 0}, {"id": "k2:1", "label": 1}, {"id": "mine", "label": 1},
                                {"id": "rows:0", "label": 0}, {"id": "same", "label": 0}, {"id": "rows", "label": 0},
                                {"id": "rows:7", "label": 0}])
    assert result["accepted"] == 4 and result["updated"] == 1  # "mine" is k1: its label replaced
    errors = {e["index"]: (e["status"], e["error"]) for e in result["errors"]}
    assert errors[4][0] == 409 and "client id of 2 logged requests" in errors[4][1] and "prediction_id" in errors[4][1]
    assert errors[5][0] == 404 and "'k2:0', 'k2:1'" in errors[5][1]
    assert errors[6][0] == 404 and "no row 7" in errors[6][1]
    stored = dict(db(log).execute("SELECT id, label FROM feedback").fetchall())
    assert stored == {"k1": 1, "k2:1": 1, "k2:0": 0}  # always under the server's keys
    assert feedback_status(log.feedback("m", {"id": "same", "label": 1})) == 409


def test_ids_and_text_labels_are_capped(log: PredictionLog) -> None:
    log.put(event("p"))
    log.flush()
    result = log.feedback("m", [{"id": "x" * 257, "label": 1}, {"id": "p", "label": "y" * 257}])
    assert [e["status"] for e in result["errors"]] == [400, 400]
    assert "'id' must be" in result["errors"][0]["error"] and "256" in result["errors"][0]["error"]
    assert "'label' must be at most 256 characters" in result["errors"][1]["error"]


# -- large requests and the queue's bounds ------------------------------------------------
def test_a_large_request_is_written_in_parts_and_counted_once(log_home: str) -> None:
    log = PredictionLog(log_home, start=False, batch_rows=1_000)
    log.put(event("big", n=2_500))
    log.put(event("small"))
    log.flush()
    ids = [r[0] for r in db(log).execute("SELECT id FROM predictions ORDER BY seq")]
    assert ids == [f"big:{i}" for i in range(2_500)] + ["small"]
    assert (rollup(log, "requests"), rollup(log, "rows")) == (2, 2_501)
    hist = np.frombuffer(db(log).execute("SELECT latency FROM rollup").fetchone()[0], np.int64)
    assert hist.sum() == 2  # one latency per request, not per part
    log.close()


def test_the_queue_is_bounded_by_rows_too(log_home: str) -> None:
    log = PredictionLog(log_home, start=False, settings=LogSettings(max_queue_rows=10))
    log.put(event("a", n=6))
    log.put(event("b", n=6))  # 12 rows would wait: dropped, counted
    log.put(event("c", n=4))
    assert (log.dropped, log.dropped_rows, log.health()["queued_rows"]) == (1, 6, 10)
    log.flush()
    assert rollup(log, "dropped") == 1 and rollup(log, "rows") == 10
    log.close()


def test_a_batch_of_rows_holds_right_sized_bytes(log: PredictionLog) -> None:
    # orjson's own result keeps a 4 KiB buffer: one per row made a 200,000-row request cost 1.6 GB.
    import tracemalloc

    from nbdeploy.store.batch import Batch

    batch = Batch(lambda m, v: {}, {})
    batch.add(event("big", n=20_000))
    tracemalloc.start()
    try:
        batch.finish()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < 20_000 * 600, f"{held / 20_000:.0f} bytes per row"


# -- settings -----------------------------------------------------------------------------
def test_settings_come_from_the_environment() -> None:
    settings = LogSettings.from_env({"NBDEPLOY_LOG_MAX_AGE_DAYS": "7.5", "NBDEPLOY_LOG_MAX_ROWS": "1000",
                                     "NBDEPLOY_LOG_FEEDBACK_TIMEOUT_S": "2"})
    assert (settings.max_age_days, settings.max_rows, settings.feedback_timeout_s) == (7.5, 1000, 2.0)
    assert LogSettings.from_env({}) == LogSettings() and LogSettings().max_age_days == 30
    with pytest.raises(InvalidInput, match="NBDEPLOY_LOG_MAX_ROWS must be an integer"):
        LogSettings.from_env({"NBDEPLOY_LOG_MAX_ROWS": "lots"})
    with pytest.raises(InvalidInput, match="NBDEPLOY_LOG_MAX_BYTES must be a non-negative number"):
        LogSettings(max_bytes=-1)
