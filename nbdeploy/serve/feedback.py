"""``POST /v2/models/{name}/feedback``: ground-truth labels for logged predictions.

Needs the server's :class:`nbdeploy.store.log.PredictionLog` as ``request.app.state.log``, or as
``request.app.state.sink`` (where ``create_app(..., sink=...)`` puts the event sink).

The body is one ``{"id": ..., "label": ...}`` or a list of them; ids are the prediction ids the
V2 response carries (``<id>`` for a one-row request, ``<id>:<row>`` for more rows). The answer
comes after the labels are committed (``synchronous=FULL``): an acknowledged label survives a
crash of the server right after. Labelling is idempotent by id; a different label for a labelled
id replaces it (last write wins) and is counted in ``updated``. Answer::

    {"accepted": 2, "updated": 0, "unchanged": 0,
     "errors": [{"index": 1, "id": "abc", "status": 404, "error": "no logged prediction with id 'abc'"}]}

Status 200 when every item was recorded, 207 when some were, else the items' 4xx (400 if they
differ); with errors the body also has ``error`` (a one-line summary), as every error answer does.
"""

from __future__ import annotations

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nbdeploy.errors import InvalidInput, Unavailable
from nbdeploy.store.log import feedback_status


async def feedback(request: Request) -> Response:
    state = request.app.state
    log = getattr(state, "log", None) or getattr(state, "sink", None)
    if not callable(getattr(log, "feedback", None)):
        raise Unavailable("this server keeps no prediction log, so it cannot take feedback")
    try:
        items = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the feedback body is not valid JSON: {exc}") from None
    result = await run_in_threadpool(log.feedback, request.path_params["name"], items)
    status = feedback_status(result)
    if result["errors"]:
        first = result["errors"][0]
        more = f" (and {len(result['errors']) - 1} more)" if len(result["errors"]) > 1 else ""
        result["error"] = (f"{len(result['errors'])} of {len(result['errors']) + result['accepted']} labels "
                           f"not recorded: item {first['index']}: {first['error']}{more}")
    return Response(orjson.dumps(result), status_code=status, media_type="application/json")


routes = [Route("/v2/models/{name}/feedback", feedback, methods=["POST"])]
