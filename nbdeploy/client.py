"""A small V2 client for the kernel side: user data in, numpy arrays out. Standard library HTTP."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

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


def post_json(url: str, payload: Any, timeout: float = 60.0) -> Any:
    """POST ``payload`` as JSON; the decoded answer, or the server's ``{"error"}`` as an NbdeployError
    with its status (:class:`Unavailable` when the server cannot be reached at all)."""
    body = orjson.dumps(payload)
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            message = orjson.loads(exc.read()).get("error", exc.reason)
        except (orjson.JSONDecodeError, AttributeError):
            message = exc.reason
        # the server's own words: the same message the library and the client's own checks give
        raise NbdeployError(str(message), exc.code) from None
    except (urllib.error.URLError, OSError) as exc:
        raise Unavailable(f"cannot reach the nbdeploy server at {request.full_url}: {exc}") from None


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
