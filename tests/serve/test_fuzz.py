"""Property: no request built from the OpenAPI document's routes, however malformed, gets a 500."""

from __future__ import annotations

import json
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nbdeploy.serve.routes import openapi_document


def dumps(value: object) -> bytes:
    return json.dumps(value).encode()  # also integers beyond 64 bits and Infinity, which orjson refuses


OPERATIONS = sorted((path, method) for path, item in openapi_document()["paths"].items() for method in item)
DATATYPES = ["BOOL", "INT8", "INT64", "UINT8", "UINT64", "FP16", "FP32", "FP64", "BYTES", "FLOAT", ""]
COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)", "input", "x"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                    st.text(max_size=5))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["name", "data", "shape", "datatype", "inputs",
                                                                  "parameters", "outputs", "id", "x"]), inner,
                                                 max_size=4)), max_leaves=12)
shapes = st.lists(st.integers(-1, 4), max_size=3) | json_values
tensors = st.fixed_dictionaries({"name": st.sampled_from(COLUMNS) | json_values,
                                 "datatype": st.sampled_from(DATATYPES) | json_values,
                                 "shape": shapes,
                                 "data": st.lists(scalars, max_size=12) | json_values},
                                optional={"parameters": st.fixed_dictionaries(
                                    {}, optional={"binary_data_size": st.integers(-2, 40) | json_values})})
v2_bodies = st.fixed_dictionaries({"inputs": st.lists(tensors, max_size=5) | json_values},
                                  optional={"id": json_values, "outputs": json_values, "parameters": json_values})
mlflow_bodies = st.one_of(
    st.fixed_dictionaries({"dataframe_split": st.fixed_dictionaries(
        {"columns": st.lists(st.sampled_from(COLUMNS), max_size=5) | json_values,
         "data": st.lists(st.lists(scalars, max_size=5), max_size=3) | json_values})}),
    st.fixed_dictionaries({"dataframe_records": st.lists(st.dictionaries(st.sampled_from(COLUMNS), scalars))}),
    st.dictionaries(st.sampled_from(["instances", "inputs", "params", "dataframe_split"]), json_values, max_size=2),
)
bodies = st.one_of(v2_bodies.map(dumps), mlflow_bodies.map(dumps), json_values.map(dumps),
                   st.binary(max_size=64), st.text(max_size=40).map(str.encode))
requests = st.tuples(
    st.sampled_from(OPERATIONS),
    st.sampled_from(["iris", "diabetes", "nope", "", "..", "iris%2F1"]) | st.text(min_size=1, max_size=8),
    st.sampled_from(["1", "2", "production", "staging", "0", "-1", "99999999999999999999"]) | st.text(max_size=6),
    bodies,
    st.sampled_from([None, "application/json", "text/csv", "application/octet-stream", "text/plain"]),
    st.none() | st.integers(-5, 200).map(str)
    | st.text(st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=4),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests)
def test_no_request_gets_a_500(client, request):
    (path, method), name, version, body, content_type, header_length = request
    url = path.replace("{name}", quote(name, safe="") or "x").replace("{version}", quote(version, safe="") or "1")
    headers = {}
    if content_type:
        headers["Content-Type"] = content_type
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = header_length
    resp = client.request(method.upper(), url, content=body if method == "post" else None, headers=headers)
    assert resp.status_code < 500 or resp.status_code == 503, (url, body, resp.text)
    if resp.status_code >= 400 and method != "head":
        assert "error" in resp.json()
