"""A small V2 client for the kernel side: user data in, numpy arrays out. Standard library HTTP."""

from __future__ import annotations

import http.client
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson

from nbdeploy.errors import NbdeployError, Unavailable
from nbdeploy.signature import Signature


def v2_inputs(signature: Signature, X: Any) -> list[dict[str, Any]]:
    """The V2 ``inputs`` list for user data (DataFrame, records, 2-D array) under ``signature``."""
    tensors = signature.encode(X)  # refuses bad values here, with the server's message
    inputs = []
    for spec in signature.inputs:
        values = np.asarray(tensors[spec.name])
        shape = [len(values), *spec.shape[1:]] if values.ndim == 1 else list(values.shape)
        data = values.ravel().tolist()
        if values.dtype.kind == "f":
            data = [None if v != v else v for v in data]  # NaN -> null: JSON has no NaN
        inputs.append({"name": spec.name, "datatype": spec.datatype, "shape": shape, "data": data})
    return inputs


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
        body = orjson.dumps(payload)
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
    return NbdeployError(message, status)


def outputs_by_name(response: dict[str, Any]) -> dict[str, np.ndarray]:
    """Decode a V2 JSON response's outputs into arrays of their declared shapes."""
    result = {}
    for out in response.get("outputs", []):
        data = out["data"]
        if out["datatype"] == "BYTES":
            arr = np.array(data, dtype=object)
        else:
            arr = np.array([np.nan if v is None else v for v in data])
        result[out["name"]] = arr.reshape(out["shape"])
    return result
