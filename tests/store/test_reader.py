"""store/reader.py: named, typed reads of a log written by the real writer."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from logtables import log_db

from nbdeploy.store.batch import BUCKET_SECONDS, N_LATENCY
from nbdeploy.store.events import PredictionEvent
from nbdeploy.store.log import PredictionLog
from nbdeploy.store.reader import InputCounts, LabelledInput, LoggedPrediction, LogReader, ShadowAnswer

T0 = 1_700_000_000.0


def event(i: int | str, *, model: str = "m", version: int = 1, ts: float = T0, status: int = 200,
          inputs: dict | None = None, label: int = 1) -> PredictionEvent:
    inputs = inputs if inputs is not None else {"a": np.array([float(i) if isinstance(i, int) else 0.0]),
                                                "colour": np.array(["red"], dtype=object)}
    p = 0.75 if label else 0.25
    outputs = {} if status != 200 else {"label": np.array([label]), "probabilities": np.array([[1 - p, p]])}
    return PredictionEvent(id=str(i), ts=ts, model=model, version=version, inputs=inputs, outputs=outputs,
                           latency_ms=2.0, status=status, error=None if status == 200 else "bad")


@pytest.fixture
def log(log_home: str):
    log = PredictionLog(log_home, start=False)
    yield log
    log.close()


@pytest.fixture
def reader(log_home: str):
    with LogReader(log_home) as reader:
        yield reader


def _reads_as_empty(reader: LogReader) -> None:
    assert not reader.exists()
    rollups = reader.rollups("m", 0)
    assert len(rollups) == 0 and rollups.latency.shape == (0, N_LATENCY)
    assert reader.latest_version("m") is None and reader.latest_prediction("m", 1) is None
    assert len(reader.labelled("m", 1, 10)) == 0 and reader.recent_inputs("m", 1, 10) == []
    assert reader.input_counts("m", 1, 0) == {} and reader.shadow_answers("m", 10) == []
    assert reader.predictions(["x"]) == {} and reader.labels(["x"]) == {} and reader.labelled_traffic("m") == []
    with reader.consistent():
        pass


def test_an_empty_home_reads_as_empty_and_is_not_created(tmp_path: Path) -> None:
    with LogReader(tmp_path) as reader:
        _reads_as_empty(reader)
    assert not (tmp_path / "log.db").exists()


def test_a_database_without_a_store_reads_as_empty(postgres_url: str) -> None:
    with LogReader(postgres_url) as reader:
        _reads_as_empty(reader)


def test_rollups_by_name(log: PredictionLog, reader: LogReader) -> None:
    for i in range(3):
        log.put(event(i, ts=T0 + i))
    log.put(event("bad", status=400, ts=T0 + 2 * BUCKET_SECONDS))
    log.put(event("v2", version=2, ts=T0 + 2 * BUCKET_SECONDS))
    log.flush()
    log.feedback("m", [{"id": "0", "label": 1}, {"id": "1", "label": 0}])
    r = reader.rollups("m", 0)
    first = int(T0 // BUCKET_SECONDS)
    assert r.bucket.tolist() == [first, first + 2, first + 2] and r.bucket.dtype == np.int64
    assert sorted(zip(r.version.tolist(), r.requests.tolist(), r.errors.tolist(), strict=True)) == [
        (1, 1, 1), (1, 3, 0), (2, 1, 0)]
    assert r.labelled.sum() == 2 and r.correct.sum() == 1 and r.latency_sum.sum() == pytest.approx(10.0)
    assert r.latency.sum() == 5 and r.latency.shape == (3, N_LATENCY)
    recent = r.where(r.bucket > first)
    assert len(recent) == 2 and recent.version.tolist() in ([1, 2], [2, 1])
    assert len(reader.rollups("m", first + 1)) == 2
    assert reader.latest_version("m") == 2


def test_labelled_predictions_oldest_first_with_probabilities_on_demand(log: PredictionLog, reader: LogReader) -> None:
    for i in range(5):
        log.put(event(i, ts=T0 + i, label=i % 2))
    log.flush()
    log.feedback("m", [{"id": str(i), "label": "yes"} for i in (3, 0, 4)])
    rows = reader.labelled("m", 1, 2)
    assert len(rows) == 2 and rows.pred_ts == (T0 + 3, T0 + 4) and rows.label == ("yes", "yes")
    assert rows.predicted == (1, 0) and all(ts > T0 for ts in rows.feedback_ts)
    assert rows.probabilities([1, 0]) == [[0.75, 0.25], [0.25, 0.75]]
    assert hash(rows) == hash(reader.labelled("m", 1, 2))  # unchanged log, same key
    log.feedback("m", {"id": "4", "label": "no"})
    assert reader.labelled("m", 1, 2) != rows
    assert len(reader.labelled("m", 2, 10)) == 0


def test_recent_inputs_decode_through_the_columns_table(log: PredictionLog, reader: LogReader) -> None:
    for e in (event(1), event("other names", inputs={"b": np.array([7.0])}), event(2), event("failed", status=500)):
        log.put(e)
        log.flush()  # one event per batch: rows in this order (a batch groups rows by input names)
    assert reader.recent_inputs("m", 1, 10) == [{"a": 1.0, "colour": "red"}, {"b": 7.0}, {"a": 2.0, "colour": "red"}]
    assert reader.recent_inputs("m", 1, 1) == [{"a": 2.0, "colour": "red"}]
    seq = reader.latest_prediction("m", 1)
    log.put(event(3))
    log.flush()
    assert reader.latest_prediction("m", 1) > seq


def test_input_counts_sum_over_buckets(log_home: str, reader: LogReader) -> None:
    profile = {"columns": {"a": {"kind": "numeric", "min": 0.0, "max": 1.0}}}
    log = PredictionLog(log_home, profiles=lambda m, v: profile, start=False)
    for i, a in enumerate([0.5, 3.0, float("nan")]):
        log.put(event(i, ts=T0 + i * BUCKET_SECONDS, inputs={"a": np.array([a])}))
    log.flush()
    assert reader.input_counts("m", 1, 0) == {"a": InputCounts(n=3, missing=1, out_of_range=1, unseen=0)}
    assert reader.input_counts("m", 1, int(T0 // BUCKET_SECONDS) + 1)["a"].n == 2
    totals = reader.input_totals("m", 0)
    assert [type(n) for n in totals[0][2]] == [int] * 4 and sum(c.n for _, _, c in totals) == 3  # ints on both
    log.close()


def test_shadow_answers_pair_with_production(log: PredictionLog, reader: LogReader) -> None:
    log.put(event("r1", label=1))
    log.put(event("r2", label=0))
    log.put(event("shadow:r1", model="m@shadow", version=2, label=1))
    log.put(event("shadow:r2", model="m@shadow", version=2, label=1))
    log.put(event("shadow:r3", model="m@shadow", version=2, status=500))  # no production answer to pair with
    log.flush()
    assert reader.shadow_answers("m", 10) == [ShadowAnswer(2, 1, 0, 200), ShadowAnswer(2, 1, 1, 200)]
    assert reader.shadow_answers("m", 1) == [ShadowAnswer(2, 1, 0, 200)]


def test_feedback_lookups(log: PredictionLog, reader: LogReader) -> None:
    log.put(event("p", ts=T0))
    log.put(event("f", status=400))
    log.flush()
    found = reader.predictions(["p", "f", "nope"])
    assert set(found) == {"p", "f"} and found["f"].status == 400
    assert found["p"] == LoggedPrediction(found["p"].seq, "m", 1, T0, 1, 200)
    log.feedback("m", {"id": "p", "label": 0})
    assert reader.labels(["p", "f"]) == {"p": 0}
    many = [f"id{i}" for i in range(1_200)]  # more than one IN (...) chunk
    assert reader.predictions([*many, "p"]).keys() == {"p"}


def test_labelled_traffic_names_inputs_per_version(log: PredictionLog, reader: LogReader) -> None:
    log.put(event(1, ts=T0 + 2))
    log.put(event("v2", version=2, ts=T0 + 1, inputs={"input": np.array([[1.5, 2.5]])}))  # an array model: x0, x1
    log.put(event("unlabelled", ts=T0 + 3))
    log.flush()
    log.feedback("m", [{"id": "1", "label": "a"}, {"id": "v2", "label": "b"}])
    assert reader.labelled_traffic("m") == [LabelledInput({"x0": 1.5, "x1": 2.5}, "b", T0 + 1),
                                            LabelledInput({"a": 1.0, "colour": "red"}, "a", T0 + 2)]
    assert reader.labelled_traffic("other") == []


def test_consistent_reads_see_one_state_of_the_log(log: PredictionLog, reader: LogReader) -> None:
    log.put(event(1, ts=time.time()))
    log.flush()
    with reader.consistent():
        before = reader.rollups("m", 0).requests.sum()
        log.put(event(2, ts=time.time()))
        log.flush()
        assert reader.rollups("m", 0).requests.sum() == before
    assert reader.rollups("m", 0).requests.sum() == before + 1


def test_a_reader_on_a_borrowed_connection_leaves_it_open(log: PredictionLog) -> None:
    log.put(event(1))
    log.flush()
    db = log_db(log.location.text)
    with LogReader.on(db) as reader:
        assert set(reader.predictions(["1"])) == {"1"}
    assert db.execute("SELECT COUNT(*) FROM predictions").fetchone() == (1,)
    db.close()


def test_recent_answers_say_labelled_with_a_number(log: PredictionLog, reader: LogReader) -> None:
    log.put(event("p", ts=T0, label=1))
    log.put(event("q", ts=T0 + 1, label=0))
    log.flush()
    log.feedback("m", {"id": "p", "label": 0})
    rows = reader.recent_answers("m", 1, 10)
    assert [r[3:] for r in rows] == [(0, None, 0), (1, 0, 1)]
    assert [type(r[5]) for r in rows] == [int, int]
