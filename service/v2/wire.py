"""Open Inference Protocol (KServe V2) requests and responses on the wire: JSON and binary data.

No HTTP and no model here. ``decode_request`` reads an ``/infer`` body (plus its
``Inference-Header-Content-Length``) into an ``InferRequest`` whose tensors are checked for
their structure (names, datatypes, shapes, binary sizes) but not yet converted: a tensor's
values become an array only when ``InputTensor.array`` is read, which ``service.v2.binding``
does after checking the tensor against the model. A request a model cannot take therefore
costs nothing beyond reading its header. ``encode_response`` writes outputs back, each as
JSON ``data`` or as binary after the JSON header. Every problem is a ``CodecError`` (400).

Bounds that hold before anything is allocated: a shape's element count and each of its
dimensions are at most ``max_elements``; the JSON header holds at most ``max_json_values``
values (counted in its bytes before it is parsed: each JSON value becomes a Python object,
dozens of bytes); binary sizes are checked against the body.
"""

from __future__ import annotations

import contextlib
import functools
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from service.errors import BodyTooLargeError
from service.v2.tensors import (
    DATATYPES,
    CodecError,
    fmt_shape,
    tensor_from_bytes,
    tensor_from_json,
    tensor_to_bytes,
    tensor_to_json,
)

__all__ = [
    "MAX_JSON_VALUES",
    "MAX_RANK",
    "MAX_TENSORS",
    "InferRequest",
    "InputTensor",
    "OutputTensor",
    "RequestedOutput",
    "decode_body",
    "decode_request",
    "encode_response",
    "parse_json_object",
]

MAX_RANK = 16
MAX_TENSORS = 64
# JSON tensor data beyond this many values per request must come as binary data (Triton's
# binary tensor extension, tritonclient's default): a million Python objects is tens of MB.
MAX_JSON_VALUES = 1 << 20


@dataclass(frozen=True)
class InputTensor:
    """An input as the request declares it; ``array`` converts its data when first read."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Any = None  # the JSON data, or
    raw: memoryview | None = None  # the binary data

    @functools.cached_property
    def array(self) -> np.ndarray:
        where = f"input {self.name!r}"
        if self.raw is not None:
            return tensor_from_bytes(self.raw, self.datatype, self.shape, where=where)
        return tensor_from_json(self.data, self.datatype, self.shape, where=where)


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: the request's binary_data_output decides
    classification: int | None = None


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None  # None: every output, with default settings
    binary_data_output: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    array: np.ndarray
    binary: bool = False


def _count(shape: Sequence[int]) -> int:
    total = 1
    for d in shape:
        total *= d
    return total


# -- requests ----------------------------------------------------------------------------


def decode_body(body: bytes, encoding: str | None, *, limit: int) -> bytes:
    """The body with its Content-Encoding (gzip, deflate or identity) undone, up to ``limit``."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise CodecError(f"unsupported Content-Encoding {encoding!r}: use gzip or deflate")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise CodecError(f"the body is not valid {encoding} data: {exc}") from None
    if len(out) > limit:
        raise BodyTooLargeError(f"the decompressed body exceeds {limit} bytes", limit=limit)
    if not inflater.eof:
        raise CodecError(f"the {encoding} body is truncated")
    return out


def _parse_json(text: bytes, what: str = "the inference header") -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        error = CodecError(f"{what} is not valid JSON: {exc}")
    if b"NaN" in text or b"Infinity" in text:  # say why, not just where

        def refuse(name: str) -> Any:
            raise CodecError(
                f"{what} contains {name}: NaN and Infinity are not JSON, "
                "and tensor values must be finite"
            )

        with contextlib.suppress(ValueError, RecursionError):
            json.loads(text.decode("utf-8", "replace"), parse_constant=refuse)
    raise error


def parse_json_object(body: bytes, what: str) -> dict[str, Any]:
    """A small JSON object body (repository requests); an empty body is ``{}``."""
    return {} if not body.strip() else _object(_parse_json(body, what), what)


def _header_length(value: str | None, body_size: int) -> int:
    if value is None:
        return body_size
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        raise CodecError(f"Inference-Header-Content-Length {value!r} is not a whole number")
    length = int(text)
    if length > body_size:
        raise CodecError(
            f"Inference-Header-Content-Length {length} is longer than the body ({body_size} bytes)"
        )
    return length


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CodecError(f"{where} must be a JSON object, not {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return kinds.get(type(value), "a number")


def _parameters(value: Any, where: str) -> dict[str, Any]:
    params = _object({} if value is None else value, f"{where} parameters")
    for key, item in params.items():
        if not isinstance(item, str | int | float | bool):
            raise CodecError(f"{where} parameter {key!r} must be a string, number or boolean")
    if "shared_memory_region" in params:
        raise CodecError(f"{where}: shared memory is not supported; send the data in the body")
    return params


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise CodecError(f"{where} must be a non-empty string, not {_kind(value)}")
    return value


def _flag(params: dict[str, Any], key: str, where: str) -> bool | None:
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise CodecError(f"{where} parameter {key!r} must be true or false")
    return value


def _shape(value: Any, where: str, max_elements: int) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise CodecError(f"{where}: shape must be an array of integers, not {_kind(value)}")
    if len(value) > MAX_RANK:
        raise CodecError(f"{where}: shape has {len(value)} dimensions; the limit is {MAX_RANK}")
    if any(type(d) is not int for d in value):
        raise CodecError(f"{where}: shape {value} must hold integers only")
    if any(d < 0 for d in value):
        raise CodecError(f"{where}: shape {fmt_shape(value)} has a negative dimension")
    if any(d > max_elements for d in value):
        raise CodecError(f"{where}: shape {fmt_shape(value)} has a dimension over {max_elements}")
    count = _count(value)
    if count > max_elements:
        raise CodecError(
            f"{where}: shape {fmt_shape(value)} has {count} elements; the limit is {max_elements}"
        )
    return tuple(value)


def _input(
    raw: Any, index: int, binary: memoryview, offset: int, max_elements: int
) -> tuple[InputTensor, int]:
    spec = _object(raw, f"inputs[{index}]")
    name = _string(spec.get("name"), f"inputs[{index}].name")
    where = f"input {name!r}"
    datatype = spec.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise CodecError(f"{where}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
    shape = _shape(spec.get("shape"), where, max_elements)
    params = _parameters(spec.get("parameters"), where)
    size = params.get("binary_data_size")
    if size is None:
        if "data" not in spec:
            raise CodecError(f"{where} has neither data nor parameters.binary_data_size")
        return InputTensor(name, datatype, shape, data=spec["data"]), offset
    if "data" in spec:
        raise CodecError(f"{where} has both data and parameters.binary_data_size")
    if type(size) is not int or size < 0:
        raise CodecError(f"{where}: binary_data_size must be a non-negative integer")
    if offset + size > len(binary):
        raise CodecError(
            f"{where}: binary_data_size {size} runs past the end of the body "
            f"({len(binary) - offset} bytes of binary data left)"
        )
    itemsize = DATATYPES[datatype].itemsize
    if datatype != "BYTES" and size != _count(shape) * itemsize:
        dims = "x".join(map(str, shape)) or "scalar"
        raise CodecError(
            f"{where}: binary_data_size {size} does not match {dims} {datatype} = "
            f"{_count(shape) * itemsize} bytes"
        )
    return InputTensor(name, datatype, shape, raw=binary[offset : offset + size]), offset + size


def _output(raw: Any, index: int) -> RequestedOutput:
    spec = _object(raw, f"outputs[{index}]")
    name = _string(spec.get("name"), f"outputs[{index}].name")
    where = f"output {name!r}"
    params = _parameters(spec.get("parameters"), where)
    count = params.get("classification")
    if count is not None and (type(count) is not int or count < 1):
        raise CodecError(f"{where}: classification must be a positive integer, not {count!r}")
    return RequestedOutput(name, _flag(params, "binary_data", where), count)


def _json_values(header: bytes) -> int:
    """At most how many JSON values ``header`` holds (a value is followed by a comma or is
    the first of an array), counted in C over the bytes, before anything is parsed."""
    return header.count(b",") + header.count(b"[") + 1


def decode_request(
    body: bytes,
    header_length: str | None,
    *,
    max_elements: int,
    max_json_values: int = MAX_JSON_VALUES,
) -> InferRequest:
    """An ``/infer`` body: the JSON header, then the binary data of the inputs that have some.
    The inputs' values are not converted here (``InputTensor.array``)."""
    split = _header_length(header_length, len(body))
    values = _json_values(body[:split])
    if values > max_json_values:
        raise BodyTooLargeError(
            f"the inference header holds up to {values} JSON values; at most "
            f"{max_json_values} may come as JSON: send large tensors as binary data "
            "(the binary tensor extension)",
            limit=max_json_values,
        )
    request = _object(_parse_json(body[:split]), "the inference request")
    binary = memoryview(body)[split:]
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise CodecError(f"id must be a string, not {_kind(request_id)}")
    params = _parameters(request.get("parameters"), "request")
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise CodecError("inputs must be a non-empty array of input tensors")
    raw_outputs = request.get("outputs")
    if raw_outputs is not None and not isinstance(raw_outputs, list):
        raise CodecError(f"outputs must be an array, not {_kind(raw_outputs)}")
    if len(raw_inputs) > MAX_TENSORS or len(raw_outputs or []) > MAX_TENSORS:
        raise CodecError(f"at most {MAX_TENSORS} inputs and {MAX_TENSORS} outputs per request")
    inputs, offset = [], 0
    for i, raw in enumerate(raw_inputs):
        tensor, offset = _input(raw, i, binary, offset, max_elements)
        inputs.append(tensor)
    if offset != len(binary):
        raise CodecError(
            f"{len(binary) - offset} bytes after the inference header belong to no input "
            "(check Inference-Header-Content-Length and each binary_data_size)"
        )
    outputs = None if raw_outputs is None else [_output(o, i) for i, o in enumerate(raw_outputs)]
    return InferRequest(
        id=request_id,
        inputs=inputs,
        outputs=outputs,
        binary_data_output=bool(_flag(params, "binary_data_output", "request")),
        parameters=params,
    )


# -- responses ---------------------------------------------------------------------------


def encode_response(
    *,
    model_name: str,
    model_version: str | None,
    request_id: str | None,
    outputs: Sequence[OutputTensor],
) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when the body is all JSON)."""
    header: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        header["model_version"] = model_version
    if request_id is not None:
        header["id"] = request_id
    tensors, chunks = [], []
    for out in outputs:
        tensor: dict[str, Any] = {
            "name": out.name,
            "datatype": out.datatype,
            "shape": list(out.array.shape),
        }
        if out.binary:
            chunk = tensor_to_bytes(out.array, out.datatype)
            tensor["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            tensor["data"] = tensor_to_json(out.array, out.datatype)
        tensors.append(tensor)
    header["outputs"] = tensors
    text = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return text, None
    return b"".join([text, *chunks]), len(text)
