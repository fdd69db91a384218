"""The floor: a raw ASGI app that reads the request body and answers a constant JSON document.

Run on uvicorn with uvloop and httptools; nothing can answer an HTTP request faster in Python.
"""

BODY = b'{"model_name":"m","model_version":"1","outputs":[{"name":"label","datatype":"INT64","shape":[1],"data":[0]}]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send):
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
