"""The V2 codec, through its public functions, against hand-written bodies and tritonclient."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import orjson
import pytest
import tritonclient.http as triton

from nbdeploy.errors import InvalidInput, NbdeployError
from nbdeploy.serve.codecs.v2 import MAX_ELEMENTS, decode_infer_request, encode_infer_response
from nbdeploy.serve.responses import error_body
from nbdeploy.signature import DATATYPE_TO_NUMPY, NUMPY_TO_DATATYPE

SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "INT8": np.array([[-128, 0, 127], [1, 2, 3]], dtype=np.int8),
    "INT16": np.array([[-32768, 0, 32767], [1, 2, 3]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1], [1, 2, 3]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1], [1, 2, 3]], dtype=np.int64),
    "UINT8": np.array([[0, 255, 7], [1, 2, 3]], dtype=np.uint8),
    "UINT16": np.array([[0, 65535, 7], [1, 2, 3]], dtype=np.uint16),
    "UINT32": np.array([[0, 2**32 - 1, 7], [1, 2, 3]], dtype=np.uint32),
    "UINT64": np.array([[0, 2**64 - 1, 7], [1, 2, 3]], dtype=np.uint64),
    "FP16": np.array([[-1.5, 0.0, 65504.0], [1, 2, 3]], dtype=np.float16),
    "FP32": np.array([[-1.5, 0.25, 3.4e38], [1, 2, 3]], dtype=np.float32),
    "FP64": np.array([[-1.5, 0.1, 1.7e308], [1, 2, 3]], dtype=np.float64),
    "BYTES": np.array([["a", "", "héllo"], ["x", "y", "z"]], dtype=object),
}


def request(*inputs: dict, **extra) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def tensor(data, shape=None, datatype="FP32", name="x", **extra) -> dict:
    spec = {"name": name, "datatype": datatype, "shape": shape, **extra}
    if data is not ...:
        spec["data"] = data
    return spec


def rejects(body: bytes, header_length: int | str | None = None, **kwargs) -> str:
    with pytest.raises(InvalidInput) as info:
        decode_infer_request(body, header_length, **kwargs)
    assert info.value.status == 400
    return str(info.value)


def triton_body(arrays: dict[str, np.ndarray], binary: bool, **kwargs) -> tuple[bytes, int | None]:
    inputs = []
    for name, arr in arrays.items():
        item = triton.InferInput(name, list(arr.shape), NUMPY_TO_DATATYPE[arr.dtype])
        inputs.append(item.set_data_from_numpy(arr, binary_data=binary))
    return triton.InferenceServerClient.generate_request_body(inputs, **kwargs)


def test_maps_are_inverse_and_resolve_dtype_likes():
    assert {NUMPY_TO_DATATYPE[d]: d for d in DATATYPE_TO_NUMPY.values()} == DATATYPE_TO_NUMPY
    assert NUMPY_TO_DATATYPE[np.float32] == "FP32"
    assert NUMPY_TO_DATATYPE[np.dtype(">i2")] == "INT16"
    assert NUMPY_TO_DATATYPE[np.dtype("<U7")] == NUMPY_TO_DATATYPE[np.dtype("S3")] == "BYTES"
    with pytest.raises(KeyError):
        NUMPY_TO_DATATYPE[np.dtype("datetime64[s]")]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_every_datatype_decodes_from_tritonclient(datatype: str, binary: bool):
    arr = SAMPLES[datatype]
    body, header_length = triton_body({"x": arr}, binary)
    assert (header_length is not None) == binary
    (got,) = decode_infer_request(body, header_length).inputs
    assert (got.name, got.datatype, got.shape) == ("x", datatype, [2, 3])
    assert got.data.dtype == DATATYPE_TO_NUMPY[datatype]
    np.testing.assert_array_equal(got.data, arr)
    got.data[0, 0] = arr[1, 1]  # binary data is copied out of the body: writable


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_every_datatype_encodes_for_tritonclient(datatype: str, binary: bool):
    arr = SAMPLES[datatype]
    body, headers = encode_infer_response("m", "3", "r1", [("y", arr)], binary=binary)
    length = headers.get("Inference-Header-Content-Length")
    assert (length is not None) == binary
    assert headers["Content-Type"] == ("application/octet-stream" if binary else "application/json")
    result = triton.InferResult.from_response_body(body, verbose=False, header_length=length)
    got = result.as_numpy("y").reshape(arr.shape)
    if datatype == "BYTES" and binary:  # tritonclient hands back binary BYTES as bytes
        got = np.vectorize(bytes.decode, otypes=[object])(got)
    np.testing.assert_array_equal(got, arr)
    assert result.get_response()["id"] == "r1"


def test_tritonclient_mixed_binary_request_and_binary_response():
    x = np.array([[1.5, np.nan], [3.0, 4.0]], dtype=np.float32)
    n = np.array([[7], [-8]], dtype=np.int64)
    s = np.array([["a"], [b"\xff\xfe"]], dtype=object)  # not UTF-8: stays bytes
    outputs = [triton.InferRequestedOutput("label", binary_data=True)]
    body, length = triton_body({"x": x, "n": n, "s": s}, True, outputs=outputs)
    req = decode_infer_request(body, length)
    assert [t.name for t in req.inputs] == ["x", "n", "s"]
    np.testing.assert_array_equal(req.inputs[0].data, x)
    np.testing.assert_array_equal(req.inputs[1].data, n)
    assert req.inputs[2].data.tolist() == [["a"], [b"\xff\xfe"]]
    assert req.binary_outputs() == {"label"}

    labels = np.array(["setosa", "virginica"], dtype=object)
    out, headers = encode_infer_response("iris", "1", req.id, [("label", labels)], binary=req.binary_outputs())
    result = triton.InferResult.from_response_body(
        out, verbose=False, header_length=int(headers["Inference-Header-Content-Length"])
    )
    assert result.as_numpy("label").tolist() == [b"setosa", b"virginica"]


def test_no_requested_outputs_means_binary_outputs_for_tritonclient():
    body, length = triton_body({"x": SAMPLES["FP32"]}, True)
    req = decode_infer_request(body, length)
    assert req.outputs is None
    assert req.binary_outputs() is True


def test_requested_outputs_and_binary_data_output_default():
    body = request(
        tensor([1.0], [1]),
        outputs=[{"name": "a"}, {"name": "b", "parameters": {"binary_data": False}}],
        parameters={"binary_data_output": True},
    )
    req = decode_infer_request(body, None)
    assert [(o.name, o.binary_data) for o in req.outputs] == [("a", True), ("b", False)]
    assert req.binary_outputs() == {"a"}
    assert decode_infer_request(request(tensor([1.0], [1])), None).binary_outputs() is False


def test_nested_and_flat_data_are_row_major():
    nested = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    for data in (nested, list(range(1, 9))):
        (got,) = decode_infer_request(request(tensor(data, [2, 2, 2], "INT32")), None).inputs
        np.testing.assert_array_equal(got.data, np.arange(1, 9).reshape(2, 2, 2))


def test_id_parameters_and_empty_tensor():
    body = request(tensor([], [0, 3]), id="abc", parameters={"k": 1})
    req = decode_infer_request(body, None)
    assert (req.id, req.parameters, req.inputs[0].data.shape) == ("abc", {"k": 1}, (0, 3))


def test_integers_beyond_64_bits_are_out_of_range():
    body = b'{"inputs":[{"name":"x","datatype":"UINT64","shape":[1],"data":[18446744073709551616]}]}'
    assert "input 'x': value 1.8446744073709552e+19 out of range for UINT64" in rejects(body)
    (got,) = decode_infer_request(body.replace(b"16]", b"15]"), None).inputs
    assert got.data.tolist() == [2**64 - 1]


def test_float_limits_follow_rounding_not_decimal_text():
    # numpy prints float32's max as 3.4028235e+38, a little above it: it still rounds to max, not inf.
    body = request(tensor([3.4028235e38, -3.4028235e38], [2]), tensor([65519, 1e-8], [2], "FP16", name="h"))
    x, h = decode_infer_request(body, None).inputs
    assert x.data.tolist() == [float(np.finfo(np.float32).max), float(np.finfo(np.float32).min)]
    assert h.data.tolist() == [65504.0, 0.0]


def test_null_is_nan_for_fp_only():
    body = request(tensor([1, None, 2.5], [3]))
    data = decode_infer_request(body, None).inputs[0].data
    assert data.dtype == np.float32 and np.isnan(data[1]) and data[2] == 2.5
    msg = rejects(request(tensor([1, None], [2], "INT64")))
    assert msg.startswith("input 'x': expected integers (INT64), got a missing value (null) at row 1")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (tensor([1, 2, 3, 4, 5], [2, 3]), "input 'x': shape [2, 3] needs 6 elements, got 5"),
        (tensor([[1, 2], [3, 4]], [3]), "input 'x': shape [3] needs 3 elements, got 4"),
        (tensor(["1.5"], [1]), "input 'x': expected numbers (FP32), got the text '1.5' at row 0"),
        (tensor([True], [1], "INT64"), "input 'x': expected integers (INT64), got the boolean True at row 0"),
        (tensor([1], [1], "BOOL"), "input 'x': expected booleans (true/false) (BOOL), got the number 1 at row 0"),
        (tensor([1], [1], "BYTES"), "input 'x': expected text (BYTES), got the number 1 at row 0"),
        (tensor([{}], [1]), "input 'x': expected numbers (FP32), got a dict at row 0"),
        (tensor([1.5], [1], "INT8"), "input 'x': expected integers (INT8), got the number 1.5 at row 0"),
        (tensor([1, 128], [2], "INT8"), "input 'x': value 128 out of range for INT8 [-128, 127]"),
        (tensor([-1], [1], "UINT64"), "input 'x': value -1 out of range for UINT64"),
        (tensor([1e39], [1]), "input 'x': value 1e+39 out of range for FP32 [-3.4028234663852886e+38, 3.4"),
        (tensor([-3.40283e38], [1]), "value -3.40283e+38 out of range for FP32"),
        (tensor([65520], [1], "FP16"), "value 65520 out of range for FP16 [-65504.0, 65504.0]"),
        (tensor([70000, None], [2], "FP16"), "value 70000 out of range for FP16"),
        (tensor([1, [2]], [2]), "input 'x': data mixes arrays and scalars at nesting depth 1"),
        (tensor(5, [1]), "input 'x': data must be an array, got number"),
        (tensor(..., [1]), "input 'x': data is missing"),
        (tensor([1], [1], "FLOAT"), "input 'x': datatype must be one of BOOL, INT8"),
        (tensor([1], [1], ["FP32"]), "datatype must be one of"),
        (tensor([1], [-1]), "input 'x': shape must be an array of non-negative integers"),
        (tensor([1], [1.0]), "shape must be an array of non-negative integers, got [1.0]"),
        (tensor([1], [True]), "shape must be an array of non-negative integers"),
        (tensor([1], None), "shape must be an array of non-negative integers, got None"),
        (tensor([1], [1], name=3), "inputs[0].name must be a non-empty string, got 3"),
        (tensor([1], [1], parameters=[]), "input 'x': parameters must be an object, got array"),
        (tensor([], [0] + [1] * 70), "input 'x': cannot shape data to [0, 1, 1"),
        (tensor([1], [1], parameters={"binary_data_size": 4}), "needs the Inference-Header"),
    ],
)
def test_invalid_inputs_are_named_with_expected_and_got(spec: dict, message: str):
    assert message in rejects(request(spec))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "request body is not valid JSON"),
        (b"[1]", "request body must be a JSON object, got array"),
        (b'{"inputs": []}', "inputs must be a non-empty array"),
        (b'{"inputs": {}}', "inputs must be an array, got object"),
        (b"{}", "inputs must be an array, got nothing"),
        (b'{"inputs": [1]}', "inputs[0] must be an object, got number"),
        (request(tensor([1], [1]), id=5), "id must be a string, got number"),
        (request(tensor([1], [1]), parameters=[]), "parameters must be an object, got array"),
        (request(tensor([1], [1]), outputs={}), "outputs must be an array, got object"),
        (request(tensor([1], [1]), outputs=[{}]), "outputs[0].name must be a non-empty string"),
        (
            request(tensor([1], [1]), outputs=[{"name": "y", "parameters": {"binary_data": 1}}]),
            "output 'y': binary_data must be a boolean, got number",
        ),
        (
            request(tensor([1], [1]), outputs=[{"name": "y"}, {"name": "y"}]),
            "output 'y' appears more than once",
        ),
        (
            request(tensor([1], [1]), parameters={"binary_data_output": "yes"}),
            "parameters.binary_data_output must be a boolean, got string",
        ),
        (request(tensor([1], [1]), tensor([2], [1])), "input 'x' appears more than once"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_invalid_requests(body: bytes, message: str):
    assert message in rejects(body)


def test_deep_nesting_is_invalid_input_not_recursion_error():
    deep = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": '
    deep += b"[" * 2000 + b"1" + b"]" * 2000 + b"}]}"
    assert "not valid JSON" in rejects(deep)
    body = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": %s}]}'
    nested = "[" * 1000 + "1" + "]" * 1000  # within orjson's limit, beyond ours
    assert "data is nested deeper than 32 arrays" in rejects(body % nested.encode())
    nested = "[" * 32 + "1" + "]" * 32
    assert decode_infer_request(body % nested.encode(), None).inputs[0].data.tolist() == [1.0]


def test_element_cap_checked_on_shapes_before_allocation():
    msg = rejects(request(tensor([1], [10**12])))
    assert f"brings the request to {10**12} elements, more than the {MAX_ELEMENTS} allowed" in msg
    two = request(tensor([1] * 6, [6], name="a"), tensor([1] * 5, [5], name="b"))
    assert "input 'b': shape [5] brings the request to 11 elements" in rejects(two, max_elements=10)
    assert len(decode_infer_request(two, None, max_elements=11).inputs) == 2


def binary_request(*inputs: tuple[dict, bytes], **extra) -> tuple[bytes, int]:
    header = request(*(spec for spec, _ in inputs), **extra)
    return header + b"".join(raw for _, raw in inputs), len(header)


def fp32_binary(size: int | None = None, values=(1.0, 2.0)) -> tuple[dict, bytes]:
    raw = np.array(values, dtype="<f4").tobytes()
    size = len(raw) if size is None else size
    return tensor(..., [len(values)], parameters={"binary_data_size": size}), raw


def test_binary_header_length_validation():
    body, length = binary_request(fp32_binary())
    assert decode_infer_request(body, str(length)).inputs[0].data.tolist() == [1.0, 2.0]
    for bad in (len(body) + 1, -1, "12a", "", True, 1.5):
        assert "Inference-Header-Content-Length must be an integer" in rejects(body, bad)
    assert "not valid JSON" in rejects(body, length - 1)
    assert "not valid JSON" in rejects(body, 0)


def test_binary_sizes_must_match():
    body, length = binary_request(fp32_binary(size=6))
    assert "input 'x': shape [2] of FP32 needs 8 bytes, got binary_data_size 6" in rejects(body, length)
    body, length = binary_request(fp32_binary(size=12))
    assert "binary_data_size 12 exceeds the 8 bytes of binary data left" in rejects(body, length)
    body, length = binary_request(fp32_binary())
    assert "binary data is 9 bytes but" in rejects(body + b"\0", length)
    spec, raw = fp32_binary()
    assert "and no data" in rejects(*binary_request(({**spec, "data": [1, 2]}, raw)))
    spec["parameters"]["binary_data_size"] = -1
    msg = rejects(*binary_request((spec, raw)))
    assert "input 'x': binary_data_size must be a non-negative integer, got -1" in msg


def test_binary_bytes_and_bool_are_checked():
    raw = (3).to_bytes(4, "little") + b"ab"  # claims 3 bytes, has 2
    spec = tensor(..., [1], "BYTES", parameters={"binary_data_size": len(raw)})
    assert "binary BYTES data ends inside element 0 of 1" in rejects(*binary_request((spec, raw)))
    raw = (1).to_bytes(4, "little") + b"ab"  # one byte left over
    spec["parameters"]["binary_data_size"] = len(raw)
    assert "but 1 elements used 5" in rejects(*binary_request((spec, raw)))
    spec = tensor(..., [2], "BOOL", parameters={"binary_data_size": 2})
    assert "binary BOOL bytes must be 0 or 1" in rejects(*binary_request((spec, b"\x01\x02")))


def test_malformed_bodies_only_ever_raise_invalid_input():
    rng = random.Random(0)
    x = np.array([[1.5, 2.5]], dtype=np.float32)
    seeds = [
        triton_body({"x": x, "s": SAMPLES["BYTES"], "n": SAMPLES["INT64"]}, True),
        triton_body({"x": x, "b": SAMPLES["BOOL"], "n": SAMPLES["UINT8"]}, False),
    ]
    for body, length in seeds:
        for _ in range(1500):
            mutated = bytearray(body)
            for _ in range(rng.randint(1, 4)):
                pos = rng.randrange(len(mutated))
                mutated[pos] = rng.choice(b'{}[]",:0123456789-.eE tfnul\x00\xff')
            if rng.random() < 0.2:
                del mutated[rng.randrange(len(mutated)) :]
            with contextlib.suppress(InvalidInput):  # anything else fails the test
                decode_infer_request(bytes(mutated), length)


def test_encode_json_response_shape():
    outputs = [
        ("p", np.array([[0.25, np.nan]], dtype=np.float32)),
        ("label", np.array(["a", "b"])),
        ("k", np.array([1, 2], dtype=">i4")[::-1]),  # big-endian, strided
    ]
    body, headers = encode_infer_response("m", "2", None, outputs, parameters={"t": 1})
    assert headers == {"Content-Type": "application/json"}
    assert orjson.loads(body) == {
        "model_name": "m",
        "model_version": "2",
        "parameters": {"t": 1},
        "outputs": [
            {"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [0.25, None]},
            {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]},
            {"name": "k", "datatype": "INT32", "shape": [2], "data": [2, 1]},
        ],
    }


def test_encode_binary_only_for_named_outputs():
    p = np.array([[0.5, 0.25]], dtype=np.float64)
    label = np.array([1, 0], dtype=np.int64)
    body, headers = encode_infer_response("m", "1", "7", [("p", p), ("label", label)], {"label"})
    length = int(headers["Inference-Header-Content-Length"])
    header = orjson.loads(body[:length])
    assert header["id"] == "7"
    assert header["outputs"][0]["data"] == [0.5, 0.25]
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 16} and "data" not in (header["outputs"][1])
    assert body[length:] == label.astype("<i8").tobytes()


def test_encode_unsupported_dtype_is_a_server_error():
    with pytest.raises(NbdeployError) as info:
        encode_infer_response("m", "1", None, [("t", np.array(["2024-01-01"], "datetime64[D]"))])
    assert info.value.status == 500


def test_the_error_body_puts_error_after_the_protocols_fields():
    assert orjson.loads(error_body("input 'x': bad")) == {"error": "input 'x': bad"}
    body = error_body("bad", {"error_code": "BAD_REQUEST", "message": "bad"})
    assert list(orjson.loads(body)) == ["error_code", "message", "error"]
