"""The V2 tensor codec on its own: every datatype round-trips through JSON and binary
encodings (ours, and tritonclient's on the other side), and malformed requests raise the
codec's own error, never anything else."""

from __future__ import annotations

import contextlib
import gzip
import json
from typing import Any

import hypothesis.extra.numpy as hnp
import ml_dtypes
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import BodyTooLargeError
from service.v2.binding import TensorSpec, bind_input, classification, select_outputs
from service.v2.tensors import (
    DATATYPES,
    CodecError,
    tensor_from_bytes,
    tensor_from_json,
    tensor_to_bytes,
    tensor_to_json,
)
from service.v2.wire import (
    InferRequest,
    InputTensor,
    OutputTensor,
    RequestedOutput,
    decode_body,
    decode_request,
    encode_response,
)

LIMIT = 1 << 20
NUMERIC = [t for t in DATATYPES if t not in ("BYTES", "BF16")]
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@st.composite
def tensors(draw: st.DrawFn, datatype: str, *, finite: bool = False) -> np.ndarray:
    """An array of ``datatype`` as the codec decodes it (BF16: float32 of bfloat16 values)."""
    shape = draw(SHAPES)
    if datatype == "BYTES":
        text = st.binary(max_size=12) if not finite else st.text(max_size=8).map(str.encode)
        items = draw(st.lists(text, min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return array.reshape(shape)
    if datatype == "BF16":
        bits = draw(hnp.arrays(np.uint16, shape))
        values = np.asarray(bits.astype(np.uint32) << 16).view(np.float32)
        if finite:
            values[~np.isfinite(values)] = 0
        return values
    dtype = DATATYPES[datatype].newbyteorder("=")
    elements = st.floats(width=8 * dtype.itemsize, allow_nan=False, allow_infinity=False)
    return draw(
        hnp.arrays(dtype, shape, elements=elements if finite and dtype.kind == "f" else None)
    )


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype == object:
        return a.shape == b.shape and a.tolist() == b.tolist()
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("datatype", list(DATATYPES))
@settings(deadline=None)  # a loaded CI machine is slow, not wrong
@given(data=st.data())
def test_binary_round_trip(datatype: str, data: st.DataObject) -> None:
    array = data.draw(tensors(datatype))
    decoded = tensor_from_bytes(tensor_to_bytes(array, datatype), datatype, array.shape)
    assert _same(decoded, array)


@pytest.mark.parametrize("datatype", list(DATATYPES))
@settings(deadline=None)  # a loaded CI machine is slow, not wrong
@given(data=st.data(), nested=st.booleans())
def test_json_round_trip(datatype: str, data: st.DataObject, nested: bool) -> None:
    array = data.draw(tensors(datatype, finite=True))
    flat = tensor_to_json(array, datatype)
    text = orjson.dumps({"data": flat}, option=orjson.OPT_SERIALIZE_NUMPY)
    wire = orjson.loads(text)["data"]
    if nested and array.ndim > 1 and array.size:
        wire = np.asarray(wire, dtype=object).reshape(array.shape).tolist()
    decoded = tensor_from_json(wire, datatype, array.shape)
    assert _same(decoded, array)


def _triton_array(array: np.ndarray, datatype: str) -> np.ndarray:
    if datatype == "BF16":  # bit for bit, NaN payloads included
        bits = tensor_to_bytes(array, "BF16")
        return np.frombuffer(bits, dtype=ml_dtypes.bfloat16).reshape(array.shape)
    return array


@pytest.mark.parametrize("datatype", list(DATATYPES))
@settings(deadline=None)  # a loaded CI machine is slow, not wrong
@given(data=st.data(), binary=st.booleans(), request_id=st.text(max_size=10))
def test_tritonclient_requests_decode(
    datatype: str, data: st.DataObject, binary: bool, request_id: str
) -> None:
    if datatype == "BF16":
        binary = True  # tritonclient sends BF16 as binary only
    array = data.draw(tensors(datatype, finite=not binary))
    tensor = triton.InferInput("x", list(array.shape), datatype)
    tensor.set_data_from_numpy(_triton_array(array, datatype), binary_data=binary)
    outputs = [triton.InferRequestedOutput("y", binary_data=False, class_count=2)]
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [tensor], outputs=outputs, request_id=request_id
    )
    request = decode_request(
        body, None if json_size is None else str(json_size), max_elements=LIMIT
    )
    assert request.id == (request_id or None)
    assert request.outputs == [RequestedOutput("y", binary=False, classification=2)]
    (decoded,) = request.inputs
    assert (decoded.name, decoded.datatype, decoded.shape) == ("x", datatype, array.shape)
    assert _same(decoded.array, array)


@pytest.mark.parametrize("datatype", list(DATATYPES))
@settings(deadline=None)  # a loaded CI machine is slow, not wrong
@given(data=st.data(), binary=st.booleans())
def test_responses_decode_in_tritonclient(datatype: str, data: st.DataObject, binary: bool) -> None:
    array = data.draw(tensors(datatype, finite=not binary))
    body, length = encode_response(
        model_name="m",
        model_version="3",
        request_id="r",
        outputs=[OutputTensor("y", datatype, array, binary)],
    )
    assert (length is None) is not binary
    result = triton.InferResult.from_response_body(body, header_length=length)
    assert result.get_response()["model_version"] == "3"
    got = result.as_numpy("y")
    assert got is not None and got.shape == array.shape
    if datatype == "BYTES":
        assert [x if isinstance(x, bytes) else x.encode() for x in got.ravel()] == list(
            array.ravel()
        )
    elif datatype == "BF16":
        assert _same(got.astype(np.float32), array)
    else:
        assert _same(got, array)


# Malformed input: only CodecError, whatever arrives.

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
TENSOR_KEYS = st.sampled_from(["name", "shape", "datatype", "data", "parameters"])


@st.composite
def almost_valid(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """A valid request with random parts replaced, and a random header length."""
    tensor: dict[str, Any] = {
        "name": "input",
        "shape": [1, 2],
        "datatype": draw(st.sampled_from(list(DATATYPES))),
        "parameters": {"binary_data_size": 8},
    }
    for key in draw(st.lists(TENSOR_KEYS, max_size=3)):
        tensor[key] = draw(JSON_VALUES)
    request: dict[str, Any] = {"inputs": [tensor], "id": "x"}
    if draw(st.booleans()):
        request[draw(st.sampled_from(["inputs", "outputs", "parameters", "id"]))] = draw(
            JSON_VALUES
        )
    text = json.dumps(request).encode()  # integers past 64 bits included
    binary = draw(st.binary(max_size=24))
    length = draw(
        st.none()
        | st.just(str(len(text)))
        | st.integers(-5, len(text) + 30).map(str)
        | st.text(max_size=4)
    )
    return text + binary, length


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=almost_valid())
def test_malformed_requests_raise_only_codec_errors(case: tuple[bytes, str | None]) -> None:
    body, length = case
    with contextlib.suppress(CodecError):
        decode_request(body, length, max_elements=LIMIT)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=64), length=st.none() | st.text(max_size=6))
def test_random_bytes_raise_only_codec_errors(body: bytes, length: str | None) -> None:
    with contextlib.suppress(CodecError):
        decode_request(body, length, max_elements=LIMIT)


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=64) | st.binary(max_size=64).map(gzip.compress),
    encoding=st.sampled_from(["gzip", "deflate", "identity", None, "br", " GZip "]),
)
def test_random_encodings_raise_only_codec_errors(body: bytes, encoding: str | None) -> None:
    with contextlib.suppress(CodecError, BodyTooLargeError):
        decode_body(body, encoding, limit=32)


@settings(max_examples=200, deadline=None)
@given(data=JSON_VALUES, datatype=st.sampled_from(list(DATATYPES)), shape=SHAPES)
def test_random_json_data_raises_only_codec_errors(data: Any, datatype: str, shape: Any) -> None:
    with contextlib.suppress(CodecError):
        tensor_from_json(data, datatype, shape)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64), datatype=st.sampled_from(list(DATATYPES)), shape=SHAPES)
def test_random_binary_data_raises_only_codec_errors(raw: bytes, datatype: str, shape: Any) -> None:
    with contextlib.suppress(CodecError):
        tensor_from_bytes(raw, datatype, shape)


# Binding to a model, and the classification extension.

SPEC = TensorSpec("input", "FP32", (-1, 1, 2, 2))


def _request(array: np.ndarray, datatype: str = "FP32", name: str = "input") -> InferRequest:
    raw = memoryview(tensor_to_bytes(array, datatype))
    return InferRequest(None, [InputTensor(name, datatype, array.shape, raw=raw)], None)


@pytest.mark.parametrize("datatype", ["FP16", "FP64", "INT8", "UINT16", "INT64"])
def test_bind_converts_numeric_inputs_to_fp32(datatype: str) -> None:
    array = np.arange(8).reshape(2, 1, 2, 2).astype(DATATYPES[datatype])
    batch = bind_input(_request(array, datatype), SPEC, max_batch=4)
    assert batch.dtype == np.float32 and batch.flags.c_contiguous
    np.testing.assert_array_equal(batch, np.arange(8).reshape(2, 1, 2, 2))


def test_bind_names_the_problem() -> None:
    with pytest.raises(CodecError, match=r"expected shape \[-1, 1, 2, 2\], got \[2, 4\]"):
        bind_input(_request(np.zeros((2, 4), np.float32)), SPEC, max_batch=4)
    with pytest.raises(CodecError, match=r"batch size 5 is outside 1\.\.4"):
        bind_input(_request(np.zeros((5, 1, 2, 2), np.float32)), SPEC, max_batch=4)
    with pytest.raises(CodecError, match="unknown input 'x': the model takes 'input'"):
        bind_input(_request(np.zeros((1, 1, 2, 2), np.float32), name="x"), SPEC, max_batch=4)
    nan = np.full((1, 1, 2, 2), np.nan, np.float32)
    with pytest.raises(CodecError, match=r"4 value\(s\) are NaN or Inf"):
        bind_input(_request(nan), SPEC, max_batch=4)


def test_outputs_default_to_binary_data_output() -> None:
    specs = [TensorSpec("logits", "FP32", (-1, 3))]
    base = _request(np.zeros((1, 1, 2, 2), np.float32))
    request = InferRequest(None, base.inputs, None, binary_data_output=True)
    assert select_outputs(request, specs, classes=3) == [RequestedOutput("logits", True)]
    named = InferRequest(None, base.inputs, [RequestedOutput("logits", False, 2)], True)
    assert select_outputs(named, specs, classes=3) == [RequestedOutput("logits", False, 2)]


def test_classification_is_tritons_format() -> None:
    values = np.array([[1.0, 5.0, 10.0, 4.0], [2.0, 2.0, -1.0, 0.5]], dtype=np.float32)
    out = classification(values, 2, ["a", "b", "c", "d"])
    assert out.tolist() == [
        [b"10.000000:2:c", b"5.000000:1:b"],
        [b"2.000000:0:a", b"2.000000:1:b"],  # ties keep index order
    ]
    assert classification(values[:1], 1, [])[0, 0] == b"10.000000:2"


def test_bf16_rounds_to_nearest_even() -> None:
    biggest = np.finfo(np.float32).max
    values = np.array([1.0, 1.00390625, 1.01171875, -biggest], dtype=np.float32)
    bits = np.frombuffer(tensor_to_bytes(values, "BF16"), dtype="<u2")
    assert bits.tolist() == [0x3F80, 0x3F80, 0x3F82, 0xFF80]  # the last overflows to -inf
