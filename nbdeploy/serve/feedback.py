"""``POST /v2/models/{name}/feedback``: ground-truth labels for logged predictions.

Needs the server's :class:`nbdeploy.store.log.PredictionLog` as ``request.app.state.log``, or as
``request.app.state.sink`` (where ``create_app(..., sink=...)`` puts the event sink).

The body is one ``{"id": ..., "label": ...}`` or a list of them; ids are the prediction ids the
server answered (``X-Request-ID``, V2 ``parameters.prediction_id``: ``<key>`` for a one-row
request, ``<key>:<row>`` for more rows), or a client's own request id when it names exactly one
logged request (409 when several requests share it). Ids and text labels are at most 256
characters. The answer comes after the labels are committed (``synchronous=FULL``): an
acknowledged label survives a crash of the server right after. Labelling is idempotent by
prediction; a different label for a labelled one replaces it (last write wins) and is counted in
``updated``. Answer::

    {"accepted": 2, "updated": 0, "unchanged": 0,
     "errors": [{"index": 1, "id": "abc", "status": 404, "error": "no logged prediction with id 'abc'"}]}

Status 200 when every item was recorded, 207 when some were, else the items' 4xx (400 if they
differ); with errors the body also has ``error`` (a one-line summary), as every error answer does.
A log another process holds locked for longer than ``NBDEPLOY_LOG_FEEDBACK_TIMEOUT_S`` (5 s), or a
full disk, answers 503 with ``Retry-After``: nothing was recorded, send the labels again.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from nbdeploy.errors import InvalidInput, Unavailable
from nbdeploy.serve.responses import error_response, json_response
from nbdeploy.store.log import feedback_status


def server_log(state: Any) -> Any | None:
    """The server's prediction log (``app.state.log``, or the event sink when it takes feedback), if any."""
    log = getattr(state, "log", None) or getattr(state, "sink", None)
    return log if callable(getattr(log, "feedback", None)) else None


def log_details(state: Any) -> dict[str, Any]:
    """``{"prediction_log": {"ok": ..., ...}}`` for readiness details, or ``{}`` for a server without a log.

    The log is optional: a log that cannot write (``ok`` false) does not make the server unready.
    """
    health = getattr(server_log(state), "health", None)
    return {"prediction_log": health()} if callable(health) else {}


async def feedback(request: Request) -> Response:
    log = server_log(request.app.state)
    if log is None:
        raise Unavailable("this server keeps no prediction log, so it cannot take feedback")
    try:
        items = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the feedback body is not valid JSON: {exc}") from None
    result = await run_in_threadpool(log.feedback, request.path_params["name"], items)
    status = feedback_status(result)
    errors = result["errors"]
    if not errors:
        return json_response(result, status)
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    summary = (f"{len(errors)} of {len(errors) + result['accepted']} labels not recorded: "
               f"item {first['index']}: {first['error']}{more}")
    return error_response(status, summary, fields=result)  # 207 too: the tally, and a one-line error
