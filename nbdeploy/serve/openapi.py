"""The OpenAPI 3.1 document of the server, and a self-contained page to read and try it (``/docs``).

The page needs no CDN: it renders the document with a few lines of script, with a form per
operation that sends the request from the browser (same origin, so the Host check passes).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from nbdeploy import __version__

_ERROR = {"description": "Refused: the body names the field and gives expected vs got",
          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "A version number or an alias (production, staging, ...)"}


def _json(schema: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _ok(schema: str, text: str = "OK") -> dict[str, Any]:
    return {"description": text, **_json(schema)}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _ERROR for c in codes}


def _versioned(paths: dict[str, Any], base: str, suffix: str, op: dict[str, Any], method: str = "get") -> None:
    """One operation, documented at the plain path and under /versions/{version}."""
    paths[f"{base}/{{name}}{suffix}"] = {method: {**op, "parameters": [_NAME]}}
    paths[f"{base}/{{name}}/versions/{{version}}{suffix}"] = {
        method: {**op, "operationId": op["operationId"] + "_version", "parameters": [_NAME, _VERSION]}}


@cache
def openapi_document() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/v2": {"get": {"operationId": "server_metadata", "summary": "Server metadata (V2)",
                        "responses": {"200": _ok("ServerMetadata")}}},
        "/v2/health/live": {"get": {"operationId": "live", "summary": "Liveness (V2)",
                                    "responses": {"200": _ok("Live")}}},
        "/v2/health/ready": {"get": {"operationId": "ready", "summary": "Readiness: 503 while starting or draining",
                                     "responses": {"200": _ok("Ready"), "503": _ok("Ready", "Not ready")}}},
        "/v2/repository/index": {"post": {
            "operationId": "repository_index", "summary": "Served versions (read-only)",
            "requestBody": {"required": False, **_json("Object")},
            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {
                "type": "array", "items": {"$ref": "#/components/schemas/IndexEntry"}}}}}, **_errors(400)}}},
        "/ping": {"get": {"operationId": "ping", "summary": "MLflow health check",
                          "responses": {"200": {"description": "Serving"}, "503": {"description": "Not ready"}}}},
        "/health": {"get": {"operationId": "health", "summary": "MLflow health check (alias of /ping)",
                            "responses": {"200": {"description": "Serving"}, "503": {"description": "Not ready"}}}},
        "/version": {"get": {"operationId": "version", "summary": "Server version (text)",
                             "responses": {"200": {"description": "The version",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics",
                             "responses": {"200": {"description": "Text exposition format",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document",
                                  "responses": {"200": _ok("Object")}}},
        "/v2/models/{name}/feedback": {"post": {
            "operationId": "feedback", "summary": "Ground-truth labels for logged predictions, by prediction id",
            "parameters": [_NAME], "requestBody": {"required": True, **_json("FeedbackRequest")},
            "responses": {"200": _ok("FeedbackResult", "Every label recorded"),
                          "207": _ok("FeedbackResult", "Some labels recorded: see errors"),
                          **_errors(400, 404, 503)}}},
    }
    _versioned(paths, "/v2/models", "", {"operationId": "model_metadata", "summary": "Model metadata (V2)",
                                        "responses": {"200": _ok("ModelMetadata"), **_errors(404, 503)}})
    _versioned(paths, "/v2/models", "/ready", {"operationId": "model_ready", "summary": "Model readiness (V2)",
                                               "responses": {"200": _ok("ModelReady"), **_errors(404, 503)}})
    _versioned(paths, "/v2/models", "/infer", {
        "operationId": "infer", "summary": "Inference (V2, JSON or binary tensor data extension)",
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        "responses": {"200": _ok("InferResponse"), **_errors(400, 404, 413, 415, 422, 503)}}, method="post")
    _versioned(paths, "/models", "/invocations", {
        "operationId": "invocations", "summary": "MLflow-compatible scoring (JSON or CSV)",
        "parameters": [], "requestBody": {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ScoringRequest"}},
            "text/csv": {"schema": {"type": "string"}}}},
        "responses": {"200": _ok("Predictions"), **_errors(400, 404, 413, 415, 422, 503)}}, method="post")
    for suffix in ("/ping", "/health"):
        _versioned(paths, "/models", suffix, {"operationId": "model_ping" + suffix[1:], "summary": "MLflow health",
                                              "responses": {"200": {"description": "Serving"}, **_errors(404, 503)}})
    tensor = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string", "minLength": 1},
        "datatype": {"enum": ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
                              "FP16", "FP32", "FP64", "BYTES"]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "data": {"type": "array"}, "parameters": {"type": "object"}}}
    schemas: dict[str, Any] = {
        "Object": {"type": "object"},
        "FeedbackItem": {"type": "object", "required": ["id", "label"], "properties": {
            "id": {"type": "string", "minLength": 1, "maxLength": 256,
                   "description": "The response id of a one-row request, else <id>:<row>"},
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
        "Ready": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
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
        "IndexEntry": {"type": "object", "properties": {
            "name": {"type": "string"}, "version": {"type": "string"}, "state": {"type": "string"},
            "reason": {"type": "string"}}},
        "InputTensor": tensor,
        "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"}, "parameters": {"type": "object"},
            "inputs": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/InputTensor"}},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                "name": {"enum": ["label", "probabilities"]}, "parameters": {"type": "object"}}}}}},
        "InferResponse": {"type": "object", "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
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
    return {"openapi": "3.1.0",
            "info": {"title": "nbdeploy inference server", "version": __version__,
                     "description": "Open Inference Protocol V2 and MLflow-compatible scoring over ONNX Runtime."},
            "paths": paths, "components": {"schemas": schemas,
                                           "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}}}


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
