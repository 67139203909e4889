"""Malformed and wrong requests to /v2, sent raw with httpx: a 4xx and ``{"error": "..."}``
that names the problem, never a 5xx."""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

MODEL = "lenet5-fashion"
INFER = f"/v2/models/{MODEL}/infer"
IMAGE = np.zeros((2, 1, 28, 28), dtype=np.float32)


def _tensor(array: np.ndarray = IMAGE, **fields: Any) -> dict[str, Any]:
    tensor = {
        "name": "input",
        "shape": list(array.shape),
        "datatype": "FP32",
        "data": array.ravel().tolist(),
    }
    return tensor | fields


def _error(response: httpx.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    return str(body["error"])


def _post(http: httpx.Client, request: Any, path: str = INFER, **kwargs: Any) -> httpx.Response:
    return http.post(path, content=orjson.dumps(request), **kwargs)


def _binary(
    http: httpx.Client, header: dict[str, Any], data: bytes, length: str | None = None
) -> httpx.Response:
    text = orjson.dumps(header)
    value = str(len(text)) if length is None else length
    return http.post(INFER, content=text + data, headers={"Inference-Header-Content-Length": value})


def _binary_header(size: int, **fields: Any) -> dict[str, Any]:
    tensor = _tensor(parameters={"binary_data_size": size}, **fields)
    del tensor["data"]
    return {"inputs": [tensor]}


def test_a_json_request_works(http: httpx.Client) -> None:
    # The baseline the other tests break one thing of.
    response = _post(http, {"id": "ok", "inputs": [_tensor()]})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["id"] == "ok"
    assert body["outputs"][0]["shape"] == [2, 10] and len(body["outputs"][0]["data"]) == 20


def test_nested_data_works(http: httpx.Client) -> None:
    response = _post(http, {"inputs": [_tensor(data=IMAGE.tolist())]})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"inputs": {}}', "inputs must be a non-empty array"),
        (b'{"inputs": []}', "inputs must be a non-empty array"),
        (b"{}", "inputs must be a non-empty array"),
        (b'{"inputs": [7]}', "inputs[0] must be a JSON object"),
        (b'{"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}', "inputs[0].name"),
    ],
)
def test_bad_json(http: httpx.Client, body: bytes, fragment: str) -> None:
    assert fragment in _error(http.post(INFER, content=body))


def test_deep_nesting_is_refused(http: httpx.Client) -> None:
    deep = b"[" * 5000 + b"]" * 5000
    assert "not valid JSON" in _error(http.post(INFER, content=b'{"x": ' + deep + b"}"))
    # Nested within the JSON parser's limit, but deeper than the input's shape (which is
    # the model's, so the data is read: a shape the model cannot take is refused first).
    leaf: Any = 0.0
    for _ in range(196):
        leaf = [leaf]
    data = [[[[leaf] * 28] * 28]]
    message = _error(_post(http, {"inputs": [_tensor(np.zeros((1, 1, 28, 28)), data=data)]}))
    assert "nested deeper than shape [1, 1, 28, 28]" in message


def test_ragged_data_is_refused(http: httpx.Client) -> None:
    image = [[[0.0] * 28] * 28]
    data = [image, [[[0.0] * 28] * 27 + [[0.0] * 27]]]  # the second image's last row is short
    request = {
        "inputs": [{"name": "input", "shape": [2, 1, 28, 28], "datatype": "FP32", "data": data}]
    }
    assert "nested exactly as shape [2, 1, 28, 28]" in _error(_post(http, request))


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"datatype": "FP8"}, "datatype 'FP8' is not one of BOOL"),
        ({"datatype": 32}, "datatype 32 is not one of"),
        ({"datatype": "BYTES", "data": ["a"] * IMAGE.size}, "BYTES cannot be converted"),
        ({"datatype": "BOOL", "data": [True] * IMAGE.size}, "BOOL cannot be converted"),
        ({"data": ["0.5"] * IMAGE.size}, "FP32 data cannot hold str values"),
        ({"data": [True] * IMAGE.size}, "FP32 data cannot hold bool values"),
        ({"data": [None] * IMAGE.size}, "FP32 data cannot hold NoneType values"),
        ({"datatype": "INT32", "data": [0.5] * IMAGE.size}, "INT32 data cannot hold float"),
        ({"datatype": "UINT8", "data": [300] * IMAGE.size}, "outside UINT8's range [0, 255]"),
        ({"data": [1e39] * IMAGE.size}, "outside FP32's range"),
        ({"datatype": "FP16", "data": [70000.0] * IMAGE.size}, "outside FP16's range"),
        ({"data": [0.0] * 5}, "shape [2, 1, 28, 28] needs 1568 elements, data has 5"),
        ({"data": 1.0}, "data must be a JSON array"),
        ({"shape": [2, 3], "data": [0.0] * 6}, "expected shape [-1, 1, 28, 28], got [2, 3]"),
        ({"shape": "2x1x28x28"}, "shape must be an array of integers"),
        ({"shape": [2, 1, 28, 28.0]}, "must hold integers only"),
        ({"shape": [2, 1, -28, -28]}, "negative dimension"),
        ({"shape": [2**40, 1, 28, 28]}, "has a dimension over"),
        ({"shape": [2**63, 2**63, 2**63, 2**63]}, "has a dimension over"),
        ({"shape": [0, 2**63]}, "has a dimension over"),
        ({"shape": [2**20, 2**20]}, "elements; the limit is"),
        ({"shape": [1] * 40}, "shape has 40 dimensions; the limit is 16"),
        ({"name": "image"}, "unknown input 'image': the model takes 'input'"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"parameters": {"shared_memory_region": "r"}}, "shared memory is not supported"),
        ({"parameters": {"binary_data_size": 8}}, "both data and parameters.binary_data_size"),
        ({"parameters": {"deep": {"a": 1}}}, "must be a string, number or boolean"),
    ],
)
def test_bad_input_tensor(http: httpx.Client, fields: dict[str, Any], fragment: str) -> None:
    assert fragment in _error(_post(http, {"inputs": [_tensor(**fields)]}))


def test_input_without_data(http: httpx.Client) -> None:
    tensor = _tensor()
    del tensor["data"]
    message = _error(_post(http, {"inputs": [tensor]}))
    assert message == "input 'input' has neither data nor parameters.binary_data_size"


def test_duplicate_and_extra_inputs(http: httpx.Client) -> None:
    assert "appears more than once" in _error(_post(http, {"inputs": [_tensor(), _tensor()]}))
    message = _error(_post(http, {"inputs": [_tensor(), _tensor(name="mask")]}))
    assert "unknown input 'mask'" in message


@pytest.mark.parametrize("batch", [0, 65])
def test_batch_size_outside_the_limit(http: httpx.Client, batch: int) -> None:
    array = np.zeros((batch, 1, 28, 28), dtype=np.float32)
    message = _error(_post(http, {"inputs": [_tensor(array)]}))
    assert f"batch size {batch} is outside 1..64" in message


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused(http: httpx.Client, value: float) -> None:
    array = IMAGE.copy()
    array[1, 0, 3, 4] = value
    message = _error(_binary(http, _binary_header(array.nbytes), array.tobytes()))
    assert message.startswith("input 'input': 1 value(s) are NaN or Inf")


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_literals_in_json_are_refused(http: httpx.Client, literal: bytes) -> None:
    body = orjson.dumps({"inputs": [_tensor()]}).replace(b"[0.0,", b"[" + literal + b",", 1)
    message = _error(http.post(INFER, content=body))
    assert literal.decode().lstrip("-") in message and "finite" in message


def test_fp64_beyond_fp32_is_refused(http: httpx.Client) -> None:
    array = IMAGE.astype(np.float64)
    array[0, 0, 0, 0] = 1e300
    header = _binary_header(array.nbytes, datatype="FP64")
    assert "beyond FP32's range" in _error(_binary(http, header, array.tobytes()))


def test_binary_size_mismatch_is_named(http: httpx.Client) -> None:
    message = _error(_binary(http, _binary_header(100), bytes(100)))
    assert message == (
        "input 'input': binary_data_size 100 does not match 2x1x28x28 FP32 = 6272 bytes"
    )


@pytest.mark.parametrize(
    ("length", "fragment"),
    [
        ("999999", "is longer than the body"),
        ("-5", "is not a whole number"),
        ("12abc", "is not a whole number"),
        ("", "is not a whole number"),
        ("3", "not valid JSON"),
    ],
)
def test_bad_header_length(http: httpx.Client, length: str, fragment: str) -> None:
    response = _binary(http, _binary_header(IMAGE.nbytes), IMAGE.tobytes(), length)
    assert fragment in _error(response)


def test_binary_data_past_the_body_or_left_over(http: httpx.Client) -> None:
    short = _error(_binary(http, _binary_header(IMAGE.nbytes), IMAGE.tobytes()[:-4]))
    assert "runs past the end of the body" in short
    extra = _error(_binary(http, _binary_header(IMAGE.nbytes), IMAGE.tobytes() + b"junk"))
    assert "4 bytes after the inference header belong to no input" in extra
    negative = _error(_binary(http, _binary_header(-1), IMAGE.tobytes()))
    assert "binary_data_size must be a non-negative integer" in negative


@pytest.mark.parametrize(
    ("request_fields", "fragment"),
    [
        ({"id": 42}, "id must be a string"),
        ({"outputs": {"name": "logits"}}, "outputs must be an array"),
        ({"outputs": [{"name": "probs"}]}, "unknown output 'probs'"),
        ({"outputs": [{"name": "logits"}, {"name": "logits"}]}, "appears more than once"),
        ({"outputs": [{"name": "logits", "parameters": {"classification": 0}}]}, "positive"),
        ({"outputs": [{"name": "logits", "parameters": {"classification": "3"}}]}, "positive"),
        ({"outputs": [{"name": "logits", "parameters": {"classification": 11}}]}, "10 classes"),
        ({"outputs": [{"name": "logits", "parameters": {"binary_data": 1}}]}, "true or false"),
        ({"parameters": {"binary_data_output": "yes"}}, "true or false"),
        ({"parameters": []}, "parameters must be a JSON object"),
    ],
)
def test_bad_request_fields(
    http: httpx.Client, request_fields: dict[str, Any], fragment: str
) -> None:
    assert fragment in _error(_post(http, {"inputs": [_tensor()], **request_fields}))


def test_json_outputs_select_binary_per_output(http: httpx.Client) -> None:
    request = {
        "inputs": [_tensor()],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
    }
    response = _post(http, request)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    length = int(response.headers["inference-header-content-length"])
    header = orjson.loads(response.content[:length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 80}
    assert len(response.content) == length + 80


@pytest.mark.parametrize(
    ("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)]
)
def test_compressed_requests(http: httpx.Client, encoding: str, compress: Any) -> None:
    body = compress(orjson.dumps({"inputs": [_tensor()]}))
    response = http.post(INFER, content=body, headers={"Content-Encoding": encoding})
    assert response.status_code == 200, response.text
    broken = http.post(INFER, content=body[:-8], headers={"Content-Encoding": encoding})
    assert encoding in _error(broken)


def test_unknown_content_encoding(http: httpx.Client) -> None:
    response = _post(http, {"inputs": [_tensor()]}, headers={"Content-Encoding": "br"})
    assert "unsupported Content-Encoding 'br'" in _error(response)


def test_a_compressed_bomb_is_refused(http: httpx.Client) -> None:
    bomb = gzip.compress(b" " * (40 * 1024 * 1024))  # 40 MiB of spaces; the limit is 32 MiB
    response = http.post(INFER, content=bomb, headers={"Content-Encoding": "gzip"})
    assert "exceeds" in _error(response, 413)


def test_a_body_over_the_limit_is_413(http: httpx.Client) -> None:
    response = http.post(INFER, content=b" " * (32 * 1024 * 1024 + 1))
    _error(response, 413)


def test_unknown_model_version_and_route(http: httpx.Client) -> None:
    request = {"inputs": [_tensor()]}
    assert "no-such-model" in _error(_post(http, request, "/v2/models/no-such-model/infer"), 404)
    assert "no version '9'" in _error(
        _post(http, request, f"/v2/models/{MODEL}/versions/9/infer"), 404
    )
    _error(_post(http, request, f"/v2/models/{MODEL}/versions/one/infer"), 400)
    _error(http.get("/v2/models/no-such-model"), 404)
    _error(http.get("/v2/models/no-such-model/ready"), 404)
    _error(http.get("/v2/nothing/here"), 404)
    _error(http.get(INFER), 405)


def test_health_endpoints(http: httpx.Client) -> None:
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
    not_ready = http.get(f"/v2/models/{MODEL}/versions/2/ready")
    _error(not_ready, 404)
