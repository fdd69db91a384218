"""Ground truth for logged predictions: parse a feedback payload, find its predictions, record it.

Used by :meth:`nbdeploy.store.log.PredictionLog.feedback`. Light on imports (no pandas, scipy
or scikit-learn): the server process loads it.
"""

from __future__ import annotations

import math
import numbers
import sqlite3
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from nbdeploy.errors import InvalidInput

MAX_ITEMS = 100_000
MAX_ID_CHARS = 256
_CHUNK = 500
_ROLLUP_ADD = """
INSERT INTO rollup (model, version, bucket, labelled, correct, err_n, abs_err, sq_err) VALUES (?,?,?,?,?,?,?,?)
ON CONFLICT (model, version, bucket) DO UPDATE SET labelled = labelled + excluded.labelled,
correct = correct + excluded.correct, err_n = err_n + excluded.err_n, abs_err = abs_err + excluded.abs_err,
sq_err = sq_err + excluded.sq_err"""

Found = dict[str, tuple[int, str, int, float, Any, int]]  # id -> seq, model, version, ts, label, status


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
    if isinstance(label, (str, bool)):
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


def lookup(db: sqlite3.Connection, ids: list[str]) -> Found:
    """The logged predictions among ``ids``."""
    found: Found = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        rows = db.execute(f"SELECT id, seq, model, version, ts, label, status FROM predictions "
                          f"WHERE id IN ({','.join('?' * len(chunk))})", chunk).fetchall()
        found.update({r[0]: tuple(r[1:]) for r in rows})  # type: ignore[misc]
    return found


def _contribution(predicted: Any, true: Any) -> tuple[int, int, float, float]:
    """(correct, has a numeric error, |error|, error²) of one label against its prediction."""
    correct = int(label_key(predicted) == label_key(true))
    if _is_number(predicted) and _is_number(true):
        diff = float(predicted) - float(true)
        return correct, 1, abs(diff), diff * diff
    return correct, 0, 0.0, 0.0


def _not_recordable(db: sqlite3.Connection, ident: str, model: str, pred: tuple | None) -> tuple[int, str] | None:
    if pred is None:
        several = db.execute("SELECT 1 FROM predictions WHERE id = ?", (f"{ident}:0",)).fetchone()
        hint = f"; that request had several rows: label them as '{ident}:0', '{ident}:1', …" if several else ""
        return 404, f"no logged prediction with id {ident!r}{hint}"
    if pred[1] != model:
        return 404, f"id {ident!r} is a prediction of model {pred[1]!r}, not {model!r}"
    if pred[5] != 200:
        return 400, f"id {ident!r} is a failed request (status {pred[5]}): it has no prediction to label"
    return None


def record(db: sqlite3.Connection, model: str, parsed: list[tuple[int, str, Any]],
           errors: list[dict[str, Any]], found: Found, bucket_seconds: int) -> dict[str, Any]:
    """Write labels and their rollup contributions in one transaction, committed before returning."""
    errors = list(errors)
    accepted = updated = unchanged = 0
    deltas: dict[tuple[str, int, int], list[float]] = {}
    now = time.time()
    db.execute("BEGIN IMMEDIATE")
    try:
        existing: dict[str, Any] = {}
        ids = list(dict.fromkeys(i for _, i, _ in parsed))
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            existing.update(db.execute(f"SELECT id, label FROM feedback WHERE id IN ({','.join('?' * len(chunk))})",
                                       chunk).fetchall())
        for index, ident, label in parsed:
            pred = found.get(ident)
            problem = _not_recordable(db, ident, model, pred)
            if problem is not None or pred is None:
                status, message = problem or (404, "")
                errors.append({"index": index, "id": ident, "status": status, "error": message})
                continue
            seq, _, version, ts, predicted, _ = pred
            accepted += 1
            add = list(_contribution(predicted, label))
            if ident in existing:
                if label_key(existing[ident]) == label_key(label):
                    unchanged += 1
                    continue
                add = [a - b for a, b in zip(add, _contribution(predicted, existing[ident]), strict=True)]
                db.execute("UPDATE feedback SET label = ?, updates = updates + 1 WHERE id = ?", (label, ident))
                updated += 1
                add.insert(0, 0)
            else:
                db.execute("INSERT INTO feedback (id, model, version, label, ts, pred_seq, pred_ts) VALUES "
                           "(?,?,?,?,?,?,?)", (ident, model, version, label, now, seq, ts))
                add.insert(0, 1)
            existing[ident] = label
            acc = deltas.setdefault((model, version, int(ts // bucket_seconds)), [0, 0, 0, 0.0, 0.0])
            for i, value in enumerate(add):
                acc[i] += value
        db.executemany(_ROLLUP_ADD, [(*key, *values) for key, values in deltas.items()])
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    errors.sort(key=lambda e: e["index"])
    return {"accepted": accepted, "updated": updated, "unchanged": unchanged, "errors": errors}


def status_of(result: Mapping[str, Any]) -> int:
    """HTTP status of a feedback answer: 200 all recorded, 207 some, else the items' 4xx (400 if mixed)."""
    errors = result.get("errors") or []
    if not errors:
        return 200
    if result.get("accepted"):
        return 207
    statuses = {e["status"] for e in errors}
    return statuses.pop() if len(statuses) == 1 else 400
