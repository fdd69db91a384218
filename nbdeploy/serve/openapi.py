"""The OpenAPI 3.1 document of the server, built from the route table, and a self-contained page to
read and try it (``/docs``).

The page needs no CDN: it renders the document with a few lines of script, with a form per
operation that sends the request from the browser (same origin, so the Host check passes).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from nbdeploy._version import __version__
from nbdeploy.serve.routing import Reply, RouteSpec, path_parameters
from nbdeploy.signature import DATATYPE_TO_NUMPY

ERROR = Reply("Refused: the body names the field and gives expected vs got", "Error")
PARAMETERS = {
    "name": {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
    "version": {"name": "version", "in": "path", "required": True, "schema": {"type": "string"},
                "description": "A version number or an alias (production, staging, ...)"},
}


def document(specs: Iterable[RouteSpec]) -> dict[str, Any]:
    """The document of every operation in ``specs``, with the schemas they name."""
    paths: dict[str, dict[str, Any]] = {}
    for spec in specs:
        for path, operation_id in spec.documented():
            op: dict[str, Any] = {"operationId": operation_id, "summary": spec.summary}
            if params := path_parameters(path):
                op["parameters"] = [PARAMETERS[p] for p in params]
            if spec.request:
                op["requestBody"] = {"required": spec.request_required,
                                     "content": {media: _schema(name) for media, name in spec.request.items()}}
            replies = {**spec.responses, **dict.fromkeys(spec.errors, ERROR)}
            op["responses"] = {str(status): _reply(reply) for status, reply in sorted(replies.items())}
            paths.setdefault(path, {})[spec.method.lower()] = op
    return {"openapi": "3.1.0",
            "info": {"title": "nbdeploy inference server", "version": __version__,
                     "description": "Open Inference Protocol V2 and MLflow-compatible scoring over ONNX Runtime."},
            "paths": paths, "components": {"schemas": SCHEMAS,
                                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}}


def _schema(name: str) -> dict[str, Any]:
    return {"schema": {"$ref": f"#/components/schemas/{name}"}}


def _reply(reply: Reply) -> dict[str, Any]:
    if reply.schema is None:
        return {"description": reply.description}
    return {"description": reply.description, "content": {reply.media_type: _schema(reply.schema)}}


_TENSOR = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string", "minLength": 1},
    "datatype": {"enum": list(DATATYPE_TO_NUMPY)},
    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    "data": {"type": "array"}, "parameters": {"type": "object"}}}

SCHEMAS: dict[str, Any] = {
    "Text": {"type": "string"},
    "Binary": {"type": "string", "format": "binary"},
    "Object": {"type": "object"},
    "FeedbackItem": {"type": "object", "required": ["id", "label"], "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": 256,
               "description": "A prediction id (X-Request-ID / parameters.prediction_id; <id>:<row> for the "
                              "rows of a request), or a request's own id when exactly one logged request has it"},
        "label": {"type": ["string", "number", "boolean"]}}},
    "FeedbackRequest": {"oneOf": [{"$ref": "#/components/schemas/FeedbackItem"}, {
        "type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/FeedbackItem"}}]},
    "FeedbackResult": {"type": "object", "properties": {
        "accepted": {"type": "integer"}, "updated": {"type": "integer"}, "unchanged": {"type": "integer"},
        "errors": {"type": "array", "items": {"type": "object", "properties": {
            "index": {"type": "integer"}, "id": {"type": ["string", "null"]}, "status": {"type": "integer"},
            "error": {"type": "string"}}}},
        "error": {"type": "string"}}},
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Live": {"type": "object", "properties": {"live": {"type": "boolean"}}},
    "Ready": {"type": "object", "properties": {"ready": {"type": "boolean"}, "prediction_log": {"type": "object"}}},
    "ServerMetadata": {"type": "object", "properties": {
        "name": {"type": "string"}, "version": {"type": "string"},
        "extensions": {"type": "array", "items": {"type": "string"}}}},
    "TensorMetadata": {"type": "object", "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}}}},
    "ModelMetadata": {"type": "object", "properties": {
        "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"},
        "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/TensorMetadata"}},
        "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/TensorMetadata"}},
        "parameters": {"type": "object"}}},
    "ModelReady": {"type": "object", "properties": {
        "name": {"type": "string"}, "version": {"type": "string"}, "ready": {"type": "boolean"}}},
    "Index": {"type": "array", "items": {"$ref": "#/components/schemas/IndexEntry"}},
    "IndexEntry": {"type": "object", "properties": {
        "name": {"type": "string"}, "version": {"type": "string"}, "state": {"type": "string"},
        "reason": {"type": "string"}}},
    "InputTensor": _TENSOR,
    "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string", "maxLength": 256}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/InputTensor"}},
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"enum": ["label", "probabilities"]}, "parameters": {"type": "object"}}}}}},
    "InferResponse": {"type": "object", "properties": {
        "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
        "parameters": {"type": "object", "properties": {"prediction_id": {"type": "string"}}},
        "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/InputTensor"}}}},
    "ScoringRequest": {"type": "object", "minProperties": 1, "maxProperties": 2, "properties": {
        "dataframe_split": {"type": "object", "properties": {
            "columns": {"type": "array", "items": {"type": "string"}},
            "data": {"type": "array", "items": {"type": "array"}}}},
        "dataframe_records": {"type": "array", "items": {"type": "object"}},
        "instances": {"type": ["array", "object"]}, "inputs": {"type": ["array", "object"]},
        "params": {"type": "object", "properties": {"predict_method": {"enum": ["predict", "predict_proba"]}}}}},
    "Predictions": {"type": "object", "properties": {"predictions": {"type": "array"}}},
}


DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nbdeploy API</title>
<style>body{font:14px system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}
details{border:1px solid #ccc;border-radius:4px;margin:.4em 0;padding:.3em .6em}
summary{cursor:pointer}code{font-weight:600}.m{display:inline-block;width:4em;font-weight:700}
textarea,input{width:100%;font:12px monospace;box-sizing:border-box}pre{background:#f5f5f5;padding:.5em;
white-space:pre-wrap;max-height:20em;overflow:auto}</style></head>
<body><h1>nbdeploy inference server</h1>
<p>Every route, from <a href="openapi.json">openapi.json</a>. Fill in the path, edit the body, send.</p>
<div id="ops">Loading…</div>
<script>
const example = {"infer": '{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]}',
  "invocations": '{"dataframe_split": {"columns": ["a", "b"], "data": [[0, 0]]}}'};
fetch("openapi.json").then(r => r.json()).then(doc => {
  const ops = document.getElementById("ops"); ops.textContent = "";
  for (const [path, item] of Object.entries(doc.paths)) for (const [method, op] of Object.entries(item)) {
    const d = document.createElement("details");
    const s = document.createElement("summary");
    s.innerHTML = `<span class="m">${method.toUpperCase()}</span><code></code> ${op.summary || ""}`;
    s.querySelector("code").textContent = path; d.appendChild(s);
    const url = document.createElement("input"); url.value = path; d.appendChild(url);
    let body = null;
    if (op.requestBody) { body = document.createElement("textarea"); body.rows = 6;
      body.value = example[op.operationId.replace("_version", "")] || "{}"; d.appendChild(body); }
    const btn = document.createElement("button"); btn.textContent = "Send"; d.appendChild(btn);
    const out = document.createElement("pre"); d.appendChild(out);
    btn.onclick = async () => {
      const init = {method: method.toUpperCase(), headers: {}};
      if (body) { init.body = body.value; init.headers["Content-Type"] = "application/json"; }
      const r = await fetch(url.value, init);
      out.textContent = r.status + " " + r.statusText + "\\n" + await r.text();
    };
    ops.appendChild(d);
  }
});
</script></body></html>
"""
