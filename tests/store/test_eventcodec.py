"""store/eventcodec.py: a prediction event as bytes for the log's writer process, and back, exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nbdeploy.store.eventcodec import pack, pack_many, unpack, unpack_group
from nbdeploy.store.events import PredictionEvent


def event(**changes) -> PredictionEvent:
    base = dict(id="0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", ts=1_765_000_000.123456, model="churn", version=3,
                inputs={"age": np.array([[31.0], [47.5]], np.float32), "plan": np.array([["basic"], ["pro"]], object)},
                outputs={"label": np.array([0, 1]), "probabilities": np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)},
                latency_ms=0.42, status=200, error=None, client_id=None)
    base.update(changes)
    return PredictionEvent(**base)


def same(a: PredictionEvent, b: PredictionEvent) -> None:
    assert (a.id, a.ts, a.model, a.version, a.latency_ms, a.status, a.error, a.client_id) == \
           (b.id, b.ts, b.model, b.version, b.latency_ms, b.status, b.error, b.client_id)
    for mine, theirs in ((a.inputs, b.inputs), (a.outputs, b.outputs)):
        assert list(mine) == list(theirs)  # order too: the log names columns in it
        for name in mine:
            x, y = np.asarray(mine[name]), theirs[name]
            assert (x.dtype, x.shape) == (y.dtype, y.shape), name
            assert x.tolist() == y.tolist(), name


def test_a_served_prediction_comes_back_exactly() -> None:
    original = event(client_id="my-request-7")
    same(original, unpack(pack(original)))


def test_numbers_keep_their_dtype_and_bits() -> None:
    original = event(inputs={"x": np.array([[0.1, -0.0, 1e-30]], np.float64), "n": np.array([[2**40]], np.int64),
                             "flag": np.array([[True]]), "small": np.array([[1.5]], np.float16)},
                     outputs={"variable": np.array([[3.25]], np.float32)})
    back = unpack(pack(original))
    same(original, back)
    assert back.inputs["x"].tobytes() == original.inputs["x"].tobytes()


def test_a_refused_request_keeps_its_raw_values() -> None:
    """What a client sent that failed validation: strings in a number column, nulls, NaN, raw bytes."""
    raw = np.array([["12", None, math.nan, b"\xffraw"]], dtype=object)
    original = event(inputs={"age": raw}, outputs={}, status=400, error="input 'age': 'abc' is not a number")
    back = unpack(pack(original))
    assert back.status == 400 and back.error == original.error and back.outputs == {}
    # as the log writes them: NaN as null, bytes decoded
    assert back.inputs["age"].tolist() == [["12", None, None, "\ufffdraw"]]


def test_a_column_view_of_a_wide_tensor_is_packed_as_its_values() -> None:
    wide = np.arange(12, dtype=np.float32).reshape(4, 3)
    original = event(inputs={"a": wide[:, 1:2], "b": wide[:, 2:3]}, outputs={"label": np.arange(4)})
    same(original, unpack(pack(original)))


def test_unicode_names_and_values() -> None:
    original = event(model="préstamo", inputs={"región": np.array([["São Paulo"]], object)},
                     outputs={"label": np.array(["sí"], object)}, error=None, client_id="ü")
    same(original, unpack(pack(original)))


def numeric() -> PredictionEvent:
    return event(inputs={"age": np.array([[31.0], [47.5]], np.float32), "n": np.array([[1], [2]])})


def test_requests_of_one_kind_share_one_description() -> None:
    """Two answers of one kind (names, dtypes, widths) differ only in their values and row counts."""
    one, two = numeric(), event(inputs={"age": np.array([[1.0]], np.float32), "n": np.array([[7]])},
                                outputs={"label": np.array([1]), "probabilities": np.array([[0.5, 0.5]], np.float32)})
    same(one, unpack(pack(one)))
    same(two, unpack(pack(two)))
    assert len(pack(one)) - len(pack(two)) == 4 + 8 + 8 + 2 * 4  # one more row: its values, no more description


@pytest.mark.parametrize("make", [event, numeric])
@pytest.mark.parametrize("cut", [1, 10, 40, -1])
def test_damaged_bytes_are_refused_not_misread(cut: int, make) -> None:
    data = pack(make())
    with pytest.raises(ValueError, match="packed prediction event"):
        unpack(data[:cut])
    with pytest.raises(ValueError, match="packed prediction event"):
        unpack(data + b"\x00")


def unpack_all(payloads: list[tuple[bool, bytes]]) -> list[PredictionEvent]:
    return [e for grouped, data in payloads for e in (unpack_group(data) if grouped else [unpack(data)])]


def test_a_batch_travels_in_groups_and_comes_back_exactly() -> None:
    """What waited for the flusher: answers of one kind go together; a refused request, string inputs and an
    answer whose arrays have another dtype go alone; every event comes back as it was."""
    answers = [numeric() for _ in range(5)]
    for i, e in enumerate(answers):
        e.id, e.ts, e.latency_ms, e.client_id = f"key-{i}", 1_765_000_000.0 + i, 0.1 * i, None if i % 2 else f"c{i}"
    answers[3].inputs = {"age": np.array([[1.0]] * 4, np.float32), "n": np.array([[5]] * 4)}  # more rows
    answers[3].outputs = {"label": np.zeros(4, np.int64), "probabilities": np.zeros((4, 2), np.float32)}
    wider = numeric()
    wider.inputs = {"age": np.array([[31.0], [47.5]], np.float64), "n": np.array([[1], [2]])}  # another dtype
    refused = event(inputs={"age": np.array([["abc"]], object)}, outputs={}, status=400, error="not a number")
    strings = event()
    batch = [*answers[:2], refused, *answers[2:], strings, wider]
    payloads = pack_many(batch)
    assert [grouped for grouped, _ in payloads].count(True) == 1
    assert len(unpack_group(next(d for g, d in payloads if g))) == 5
    back = {e.id: e for e in unpack_all(payloads)}
    assert len(back) == 6  # the five answers; refused, strings and wider share the default id
    for e in answers:
        same(e, back[e.id])
    assert sorted(e.status for e in unpack_all(payloads)) == [200] * 7 + [400]
    wider_back = [e for e in unpack_all(payloads) if e.inputs["age"].dtype == np.float64]
    assert len(wider_back) == 1 and wider_back[0].inputs["age"].tolist() == [[31.0], [47.5]]


def test_a_damaged_group_is_refused() -> None:
    (grouped, data), = pack_many([numeric(), numeric()])
    assert grouped
    for broken in (data[:20], data[:-1], data + b"\x00"):
        with pytest.raises(ValueError, match="packed group"):
            unpack_group(broken)


def test_a_request_refused_before_it_had_arrays() -> None:
    """An unreadable body is refused before any tensor exists: the event has no arrays at all."""
    original = event(inputs={}, outputs={}, status=400, error="request body is not valid JSON")
    same(original, unpack(pack(original)))
    [(grouped, data)] = pack_many([original])
    assert not grouped
    same(original, unpack(data))
