"""Ground truth for logged predictions: parse a feedback payload, resolve and judge each item, record it.

Used by :meth:`nbdeploy.store.log.PredictionLog.feedback`, which reads what the log holds about
the ids through :class:`nbdeploy.store.reader.LogReader` and owns the transaction. Light on
imports (no pandas, scipy or scikit-learn): the server process loads it.

An item's ``id`` is a prediction's key (the server's: ``<key>`` for a one-row request,
``<key>:<row>`` for rows), or the ``id`` a client sent with its request when that names exactly
one logged request (``<client id>`` for one row, ``<client id>:<row>`` for rows). A client id
several logged requests share is refused with 409: only the server's keys are unique.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from nbdeploy.errors import InvalidInput

if TYPE_CHECKING:  # the reader imports this module's neighbours; only its types are needed here
    from nbdeploy.store.reader import LoggedPrediction

MAX_ITEMS = 100_000
MAX_ID_CHARS = 256  # request ids, prediction ids and text labels alike
MAX_LABEL_CHARS = 256
# ``rollup.<column>``: the row already there, named by its table (a bare name is ambiguous on PostgreSQL)
_ROLLUP_ADD = """
INSERT INTO rollup (model, version, bucket, labelled, correct, err_n, abs_err, sq_err) VALUES (?,?,?,?,?,?,?,?)
ON CONFLICT (model, version, bucket) DO UPDATE SET labelled = rollup.labelled + excluded.labelled,
correct = rollup.correct + excluded.correct, err_n = rollup.err_n + excluded.err_n,
abs_err = rollup.abs_err + excluded.abs_err, sq_err = rollup.sq_err + excluded.sq_err"""


def label_key(value: Any) -> str | None:
    """Labels and categories compare by key: ``1``, ``1.0`` and ``"1"`` are one class (integral
    floats map like ints, so keys survive a JSON round trip); None/NaN is no label.
    """
    if value is None or (isinstance(value, numbers.Real) and value != value):
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def label_keys(values: Iterable[Any]) -> list[str | None]:
    """:func:`label_key` of each value, worked out once per distinct value (labels repeat a few classes)."""
    values = list(values)
    typed = list(zip(map(type, values), values, strict=True))  # by type too: 1, 1.0 and True are equal dict keys
    keys = {t: label_key(t[1]) for t in set(typed)}
    return [keys[t] for t in typed]


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def _problem(item: Any) -> str | None:
    if not isinstance(item, Mapping):
        return 'expected an object {"id": ..., "label": ...}'
    ident = item.get("id")
    if not isinstance(ident, str) or not ident or len(ident) > MAX_ID_CHARS:
        return f"'id' must be a non-empty string of at most {MAX_ID_CHARS} characters"
    if "label" not in item:
        return "'label' is missing"
    label = item["label"]
    if isinstance(label, str):
        return None if len(label) <= MAX_LABEL_CHARS else f"'label' must be at most {MAX_LABEL_CHARS} characters"
    if isinstance(label, bool):
        return None
    if isinstance(label, numbers.Integral):
        return None if -(2**63) <= int(label) < 2**63 else "'label' is outside the 64-bit integer range"
    if isinstance(label, numbers.Real):
        return None if math.isfinite(label) else "'label' must be a finite number"
    return f"'label' must be a string, number or boolean, not {type(label).__name__ if label is not None else 'null'}"


def _plain(label: Any) -> Any:
    return label.item() if isinstance(label, np.generic) else label


def parse(items: Any) -> tuple[list[tuple[int, str, Any]], list[dict[str, Any]]]:
    """Valid ``(index, id, label)`` items, and a 400 error for each invalid one."""
    if isinstance(items, Mapping):
        items = [items]
    if not isinstance(items, list) or not items:
        raise InvalidInput('feedback is one {"id": ..., "label": ...} object or a non-empty list of them')
    if len(items) > MAX_ITEMS:
        raise InvalidInput(f"at most {MAX_ITEMS} feedback items per request, got {len(items)}")
    parsed, errors = [], []
    for index, item in enumerate(items):
        problem = _problem(item)
        if problem is None:
            parsed.append((index, item["id"], _plain(item["label"])))
        else:
            ident = item.get("id") if isinstance(item, Mapping) else None
            errors.append({"index": index, "id": ident if isinstance(ident, str) else None, "status": 400,
                           "error": problem})
    return parsed, errors


def _contribution(predicted: Any, true: Any) -> tuple[int, int, float, float]:
    """(correct, has a numeric error, |error|, error²) of one label against its prediction."""
    correct = int(label_key(predicted) == label_key(true))
    if _is_number(predicted) and _is_number(true):
        diff = float(predicted) - float(true)
        return correct, 1, abs(diff), diff * diff
    return correct, 0, 0.0, 0.0


Problem = tuple[int, str]
"""An item that cannot be recorded: its HTTP status and why."""
Requests = Mapping[str, list[tuple[str, "LoggedPrediction"]]]
"""Per client id, the logged requests that carry it: the key of each one's first row, and that row."""


class Target(NamedTuple):
    """The logged prediction a feedback id names, and its key."""

    key: str
    pred: LoggedPrediction


def _row_of(ident: str) -> tuple[str, int] | None:
    """``("abc", 2)`` for ``"abc:2"``: an id that may be a client id and a row."""
    prefix, sep, row = ident.rpartition(":")
    return (prefix, int(row)) if sep and prefix and row.isdigit() else None


def client_ids(ident: str) -> list[str]:
    """The client ids a feedback id may name a request by: itself, and ``abc`` for ``abc:2``."""
    row = _row_of(ident)
    return [ident] if row is None else [ident, row[0]]


def derived_keys(ident: str, requests: Requests) -> list[str]:
    """Keys to read for an id that is no key: the row a client id and row name, and ``<id>:0`` (for a hint)."""
    keys = [f"{ident}:0"]
    row = _row_of(ident)
    named = requests.get(row[0], []) if row else []
    if row and len(named) == 1 and named[0][0].endswith(":0"):
        keys.append(f"{named[0][0][:-2]}:{row[1]}")
    return keys


def _ambiguous(ident: str, n: int) -> Problem:
    return 409, (f"id {ident!r} is the client id of {n} logged requests, so it names no one prediction: label them "
                 "by the prediction ids the server answered (V2 parameters.prediction_id, header X-Request-ID)")


def resolve(ident: str, found: Mapping[str, LoggedPrediction], requests: Requests) -> Target | Problem:
    """What one feedback id names: ``found`` holds the logged predictions by key (with those of
    :func:`derived_keys`), ``requests`` the requests by client id (:data:`Requests`)."""
    if ident in found:
        return Target(ident, found[ident])
    named = requests.get(ident, [])
    if len(named) > 1:
        return _ambiguous(ident, len(named))
    if named:
        key, pred = named[0]
        if not key.endswith(":0"):
            return Target(key, pred)
        return 404, (f"request {ident!r} had several rows: label them as '{key[:-2]}:0', '{key[:-2]}:1', … "
                     f"(or '{ident}:0', '{ident}:1', …)")
    row = _row_of(ident)
    named = requests.get(row[0], []) if row else []
    if row and len(named) > 1:
        return _ambiguous(row[0], len(named))
    if row and named:
        key = f"{named[0][0][:-2]}:{row[1]}" if named[0][0].endswith(":0") else None
        if key is not None and key in found:
            return Target(key, found[key])
        return 404, f"request {row[0]!r} has no row {row[1]}"
    several = f"{ident}:0" in found
    hint = f"; that request had several rows: label them as '{ident}:0', '{ident}:1', …" if several else ""
    return 404, f"no logged prediction with id {ident!r}{hint}"


def _not_recordable(ident: str, model: str, pred: LoggedPrediction) -> Problem | None:
    if pred.model != model:
        return 404, f"id {ident!r} is a prediction of model {pred.model!r}, not {model!r}"
    if pred.status != 200:
        return 400, f"id {ident!r} is a failed request (status {pred.status}): it has no prediction to label"
    return None


def record(db: Any, model: str, parsed: list[tuple[int, str, Any]], errors: list[dict[str, Any]],
           targets: Mapping[str, Target | Problem], existing: dict[str, Any], bucket_seconds: int) -> dict[str, Any]:
    """Write labels and their rollup contributions in the caller's transaction on ``db``.

    ``targets``: what each item id names (:func:`resolve`). ``existing``: the labels already
    recorded for those predictions, by key, read in the same transaction.
    """
    errors = list(errors)
    accepted = updated = unchanged = 0
    deltas: dict[tuple[str, int, int], list[float]] = {}
    now = time.time()
    existing = dict(existing)
    # written after the loop, a statement each (one round trip per batch on PostgreSQL, not per label);
    # inserts before updates: a key labelled twice in one request is inserted, then updated
    inserts: list[tuple[Any, ...]] = []
    updates: list[tuple[Any, ...]] = []
    for index, ident, label in parsed:
        target = targets[ident]
        problem = _not_recordable(ident, model, target.pred) if isinstance(target, Target) else target
        if problem is not None:
            errors.append({"index": index, "id": ident, "status": problem[0], "error": problem[1]})
            continue
        assert isinstance(target, Target)
        key, pred = target
        accepted += 1
        add = list(_contribution(pred.label, label))
        if key in existing:
            if label_key(existing[key]) == label_key(label):
                unchanged += 1
                continue
            add = [a - b for a, b in zip(add, _contribution(pred.label, existing[key]), strict=True)]
            updates.append((label, key))
            updated += 1
            add.insert(0, 0)
        else:
            inserts.append((key, model, pred.version, label, now, pred.seq, pred.ts))
            add.insert(0, 1)
        existing[key] = label
        acc = deltas.setdefault((model, pred.version, int(pred.ts // bucket_seconds)), [0, 0, 0, 0.0, 0.0])
        for i, value in enumerate(add):
            acc[i] += value
    db.executemany("INSERT INTO feedback (id, model, version, label, ts, pred_seq, pred_ts) VALUES (?,?,?,?,?,?,?)",
                   inserts)
    db.executemany("UPDATE feedback SET label = ?, updates = updates + 1 WHERE id = ?", updates)
    db.executemany(_ROLLUP_ADD, [(*key, *values) for key, values in deltas.items()])
    errors.sort(key=lambda e: e["index"])
    return {"accepted": accepted, "updated": updated, "unchanged": unchanged, "errors": errors}


def status_of(result: Mapping[str, Any]) -> int:
    """HTTP status of a feedback answer: 200 all recorded, 207 some, else the items' 4xx (400 if they differ)."""
    errors = result.get("errors") or []
    if not errors:
        return 200
    if result.get("accepted"):
        return 207
    statuses = {e["status"] for e in errors}
    return statuses.pop() if len(statuses) == 1 else 400
