"""A small V2 client for the kernel side: user data in, numpy arrays out. Standard library HTTP.

Large inputs go in several requests (:func:`infer_in_requests`), one after another over one
kept-alive connection, with a progress bar for long runs.
"""

from __future__ import annotations

import http.client
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson

from nbdeploy.errors import Conflict, InvalidInput, NbdeployError, NotFound, Unavailable
from nbdeploy.signature import Signature

Tensors = dict[str, np.ndarray]

PROGRESS_AFTER_S = 2.0
"""A large prediction shows a progress bar once it has taken this long (``progress=None``, the default)."""


JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
"""Request bodies are written by orjson, numeric arrays as they are (NaN as null: JSON has none), about
twice as fast as through Python lists."""


def v2_inputs(signature: Signature, X: Any) -> list[dict[str, Any]]:
    """The V2 ``inputs`` list for user data (DataFrame, records, 2-D array) under ``signature``, as plain
    JSON values (lists, ``None`` for a missing number)."""
    return v2_tensors(signature, signature.encode(X), plain=True)  # encode() refuses bad values, as the server


def v2_tensors(signature: Signature, tensors: Tensors, start: int = 0, stop: int | None = None, *,
               plain: bool = False) -> list[dict[str, Any]]:
    """The V2 ``inputs`` list for rows ``start:stop`` of tensors from ``signature.encode``; numeric data
    stays a NumPy array for :data:`JSON_OPTIONS` unless ``plain``."""
    inputs = []
    for spec in signature.inputs:
        values = np.asarray(tensors[spec.name])[start:stop]
        shape = [len(values), *spec.shape[1:]] if values.ndim == 1 else list(values.shape)
        if not plain and values.dtype.kind in "fiub":
            data: Any = np.ascontiguousarray(values).ravel()
        else:
            data = values.ravel().tolist()
            if values.dtype.kind == "f" and np.isnan(values).any():
                data = [None if v != v else v for v in data]  # NaN -> null: JSON has no NaN
        inputs.append({"name": spec.name, "datatype": spec.datatype, "shape": shape, "data": data})
    return inputs


def rows_of(tensors: Tensors) -> int:
    return len(next(iter(tensors.values()))) if tensors else 0


def rows_per_request(signature: Signature, tensors: Tensors, request_bytes: int) -> int:
    """How many rows make a V2 JSON body of about ``request_bytes`` (judged on the first 256 rows)."""
    sample = min(rows_of(tensors), 256)
    per_row = len(orjson.dumps(v2_tensors(signature, tensors, 0, sample), option=JSON_OPTIONS)) / max(sample, 1)
    return max(1, int(request_bytes // max(per_row, 1)))


def prediction_key(answer: dict[str, Any]) -> str:
    """The key the server logged a request under (``parameters.prediction_id``; ``id`` before it had one)."""
    return str((answer.get("parameters") or {}).get("prediction_id") or answer.get("id"))


def post_json(url: str, payload: Any, timeout: float = 60.0, token: str | None = None) -> Any:
    """POST ``payload`` as JSON; the decoded answer, or the server's ``{"error"}`` as an NbdeployError
    with its status (:class:`Unavailable` when the server cannot be reached at all)."""
    parts = urlsplit(url)
    with Connection(f"{parts.scheme}://{parts.netloc}", token=token, timeout=timeout) as conn:
        return conn.post_json(parts.path, payload)


class Connection:
    """One keep-alive HTTP connection to a server: requests split in chunks go over it one after another."""

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 60.0) -> None:
        parts = urlsplit(base_url)
        self.base_url = base_url
        self.headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        self.http = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)

    def post_json(self, path: str, payload: Any) -> Any:
        body = orjson.dumps(payload, option=JSON_OPTIONS)
        try:
            self.http.request("POST", path, body=body, headers=self.headers)
            answer = self.http.getresponse()
            data = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            self.http.close()
            raise Unavailable(f"cannot reach the nbdeploy server at {self.base_url}{path}: {exc}") from None
        if answer.status >= 400:
            raise _refusal(answer.status, data, len(body))
        return orjson.loads(data)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def infer_in_requests(base_url: str, path: str, signature: Signature, tensors: Tensors, outputs: list[str], *,
                      rows_per_request: int, token: str | None = None,
                      progress: bool | None = None) -> tuple[Tensors, list[tuple[str, int]]]:
    """V2 ``outputs`` for every row of ``tensors`` (from ``signature.encode``) in requests of ``rows_per_request``
    rows, one after another over one kept-alive connection; also (prediction key, rows) of each request, in order.

    A 413 (a server limit below the default) halves the rows per request from then on. ``progress``: a
    progress bar (a widget in notebooks) — True shows it, False never, None once the run has taken
    :data:`PROGRESS_AFTER_S`. A request that fails raises an error naming its rows (``error.rows``); the
    requests after it are not sent, and nothing is returned.
    """
    total = rows_of(tensors)
    wanted = [{"name": o} for o in outputs]
    parts: list[Tensors] = []
    keys: list[tuple[str, int]] = []
    with _progress_bar(total, progress) as bar, Connection(base_url, token=token) as conn:
        start = 0
        while start < total:
            stop = min(start + rows_per_request, total)
            try:
                body = {"inputs": v2_tensors(signature, tensors, start, stop), "outputs": wanted}
                answer = conn.post_json(path, body)
            except NbdeployError as exc:
                if exc.status == 413 and stop - start > 1:
                    rows_per_request = max(1, (stop - start) // 2)
                    continue
                raise _failed_rows(exc, start, stop, total) from None
            parts.append(outputs_by_name(answer))
            keys.append((prediction_key(answer), stop - start))
            bar.update(stop - start)
            start = stop
    return {o: np.concatenate([p[o] for p in parts]) for o in outputs}, keys


def _failed_rows(error: NbdeployError, start: int, stop: int, total: int) -> NbdeployError:
    """The server's refusal of some rows, saying which; its row numbers (which count from the request's
    first row) become rows of the whole input, and the error keeps its kind (InvalidInput for a 400)."""
    message = re.sub(r"\bat row (\d+)\b", lambda m: f"at row {start + int(m.group(1)):,}", error.message)
    done = f"rows 0-{start - 1:,} were answered" if start else "no row was answered"
    failed = _BY_STATUS.get(error.status, NbdeployError)(
        f"rows {start:,}-{stop - 1:,} of {total:,} were not predicted: {message} ({done}; nothing is returned)",
        error.status)
    failed.rows = range(start, stop)  # type: ignore[attr-defined]
    return failed


@contextmanager
def _progress_bar(total: int, progress: bool | None) -> Iterator[Any]:
    if progress is False:
        yield _NoBar()
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="rows", unit_scale=True, desc="predict", delay=0 if progress else PROGRESS_AFTER_S)
    try:
        yield bar
    finally:
        bar.close()


class _NoBar:
    def update(self, n: int) -> None:
        pass


def _refusal(status: int, data: bytes, sent: int) -> NbdeployError:
    """The server's own words (the message the library and the client's own checks give for the same
    data), with what to do when the body was too large."""
    try:
        message = str(orjson.loads(data).get("error") or data.decode("utf-8", "replace"))
    except (orjson.JSONDecodeError, AttributeError):
        message = data.decode("utf-8", "replace") or f"HTTP {status}"
    if status == 413:
        message += (f" (this request was {sent:,} bytes: send fewer rows per request — Deployment.predict splits "
                    "large inputs by itself — or raise the server's limit, NBDEPLOY_MAX_BODY_BYTES)")
    return _BY_STATUS.get(status, NbdeployError)(message, status)


#: the error a refusal raises in the kernel, by status: what the same check raises in-process
_BY_STATUS: dict[int, type[NbdeployError]] = {400: InvalidInput, 404: NotFound, 409: Conflict, 503: Unavailable}


def outputs_by_name(response: dict[str, Any]) -> dict[str, np.ndarray]:
    """Decode a V2 JSON response's outputs into arrays of their declared shapes."""
    result = {}
    for out in response.get("outputs", []):
        data = out["data"]
        if out["datatype"] == "BYTES":
            arr = np.array(data, dtype=object)
        elif out["datatype"].startswith("FP"):
            arr = np.array(data, dtype=np.float64)  # null (NaN in the server) becomes NaN again
        else:
            arr = np.array(data)
        result[out["name"]] = arr.reshape(out["shape"])
    return result
