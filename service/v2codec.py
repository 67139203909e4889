"""Open Inference Protocol (KServe V2) tensors on the wire: JSON and binary tensor data.

No HTTP here. ``decode_request`` turns an ``/infer`` body (plus its
``Inference-Header-Content-Length``) into numpy arrays (``service.v2binding`` then checks
them against the model); ``encode_response`` writes the outputs
back, each as JSON ``data`` or as binary after the JSON header. Every problem with a request
is a ``CodecError`` (400) that names the tensor and what is wrong with it.

Decoded arrays: numeric datatypes as the matching numpy dtype, ``BF16`` as float32 holding
bfloat16 values (numpy has no bfloat16), ``BYTES`` as an object array of ``bytes``.
Size limits hold before anything is allocated: a shape is refused when its element count
exceeds ``max_elements``, and binary sizes are checked before they are read.
"""

from __future__ import annotations

import contextlib
import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import orjson

from service.errors import BodyTooLargeError, InvalidParameterError

__all__ = [
    "DATATYPES",
    "CodecError",
    "InferRequest",
    "InputTensor",
    "OutputTensor",
    "RequestedOutput",
    "decode_body",
    "decode_request",
    "encode_response",
    "fmt_shape",
    "parse_json_object",
    "tensor_from_bytes",
    "tensor_from_json",
    "tensor_to_bytes",
    "tensor_to_json",
]

# Protocol datatype -> little-endian numpy dtype of its binary form (BF16: raw uint16 bits).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype("O"),
}
_FLOATS = frozenset({"FP16", "BF16", "FP32", "FP64"})
_INTS = frozenset({"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"})
MAX_RANK = 16
MAX_TENSORS = 64


class CodecError(InvalidParameterError):
    """A request the protocol (or the model) cannot take; the message says exactly why."""


@dataclass(frozen=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray


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


def fmt_shape(shape: Sequence[int]) -> str:
    return f"[{', '.join(map(str, shape))}]"


def _count(shape: Sequence[int]) -> int:
    return math.prod(shape)


# -- bfloat16 ----------------------------------------------------------------------------


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, rounding to nearest even; NaN payloads stay NaN."""
    bits = np.asarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(values) & ((bits & 0xFFFF) != 0)
    return np.where(nan, ((bits >> 16) | 0x0040).astype(np.uint16), rounded)


def _bf16_values(bits: np.ndarray) -> np.ndarray:
    return np.asarray(bits.astype(np.uint32) << 16).view(np.float32)  # 0-d stays an array


# -- one tensor: binary ------------------------------------------------------------------


def tensor_from_bytes(
    raw: bytes | memoryview, datatype: str, shape: Sequence[int], *, where: str = "tensor"
) -> np.ndarray:
    """A tensor from its binary form (little-endian, row-major; BYTES length-prefixed)."""
    count = _count(shape)
    if datatype == "BYTES":
        return _bytes_elements(memoryview(raw), count, where).reshape(shape)
    dtype = DATATYPES[datatype]
    expected = count * dtype.itemsize
    if len(raw) != expected:
        dims = "x".join(map(str, shape)) or "scalar"
        raise CodecError(
            f"{where}: binary_data_size {len(raw)} does not match {dims} {datatype} = "
            f"{expected} bytes"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    if datatype == "BOOL" and array.view(np.uint8).max(initial=0) > 1:
        raise CodecError(f"{where}: BOOL binary data must be bytes 0 or 1")
    if datatype == "BF16":
        return _bf16_values(array)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _bytes_elements(raw: memoryview, count: int, where: str) -> np.ndarray:
    if count * 4 > len(raw):
        raise CodecError(
            f"{where}: {count} BYTES elements need at least {count * 4} bytes, "
            f"binary_data_size is {len(raw)}"
        )
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise CodecError(f"{where}: BYTES element {i} is cut off (no length prefix)")
        size = int.from_bytes(raw[offset : offset + 4], "little")
        offset += 4
        if offset + size > len(raw):
            raise CodecError(f"{where}: BYTES element {i} declares {size} bytes past the end")
        out[i] = bytes(raw[offset : offset + size])
        offset += size
    if offset != len(raw):
        raise CodecError(f"{where}: {len(raw) - offset} bytes after the last BYTES element")
    return out


def tensor_to_bytes(array: np.ndarray, datatype: str) -> bytes:
    """The binary form of a tensor (the inverse of ``tensor_from_bytes``)."""
    if datatype == "BYTES":
        parts = []
        for item in array.ravel():
            data = item.encode() if isinstance(item, str) else bytes(item)
            parts += [len(data).to_bytes(4, "little"), data]
        return b"".join(parts)
    if datatype == "BF16":
        return _bf16_bits(np.asarray(array, dtype=np.float32)).astype("<u2").tobytes()
    return np.ascontiguousarray(array, dtype=DATATYPES[datatype]).tobytes()


# -- one tensor: JSON --------------------------------------------------------------------

_JSON_LEAVES: dict[str, frozenset[type]] = {
    "BOOL": frozenset({bool}),
    "BYTES": frozenset({str}),
    **{t: frozenset({int}) for t in _INTS},
    **{t: frozenset({int, float}) for t in _FLOATS},
}


def _leaves(data: Any, shape: Sequence[int], where: str) -> list[Any]:
    """The elements of flat data, or of data nested exactly as ``shape``."""
    if not isinstance(data, list):
        raise CodecError(f"{where}: data must be a JSON array, not {type(data).__name__}")
    if list not in set(map(type, data)):
        return data
    level: list[Any] = [data]
    for depth, size in enumerate(shape):
        if set(map(type, level)) - {list}:
            raise CodecError(
                f"{where}: data must be flat or nested exactly as shape {fmt_shape(shape)}; "
                f"found a value where an array of {size} belongs (depth {depth + 1})"
            )
        lengths = set(map(len, level)) - {size}
        if lengths:
            raise CodecError(
                f"{where}: data must be flat or nested exactly as shape {fmt_shape(shape)}; "
                f"found an array of {min(lengths)} at depth {depth + 1} where {size} belong"
            )
        level = list(chain.from_iterable(level))
    if list in set(map(type, level)):
        raise CodecError(
            f"{where}: data is nested deeper than shape {fmt_shape(shape)} "
            f"({len(shape)} dimensions)"
        )
    return level


def tensor_from_json(
    data: Any, datatype: str, shape: Sequence[int], *, where: str = "tensor"
) -> np.ndarray:
    """A tensor from JSON ``data`` (flat or nested), every element checked against ``datatype``."""
    leaves = _leaves(data, shape, where)
    if len(leaves) != _count(shape):
        raise CodecError(
            f"{where}: shape {fmt_shape(shape)} needs {_count(shape)} elements, "
            f"data has {len(leaves)}"
        )
    wrong = set(map(type, leaves)) - _JSON_LEAVES[datatype]
    if wrong:
        names = ", ".join(sorted("array" if t is list else t.__name__ for t in wrong))
        raise CodecError(f"{where}: {datatype} data cannot hold {names} values")
    if datatype == "BYTES":
        out = np.empty(len(leaves), dtype=object)
        try:
            out[:] = [s.encode() for s in leaves]
        except UnicodeEncodeError:
            raise CodecError(f"{where}: a BYTES string is not valid Unicode") from None
        return out.reshape(shape)
    if datatype in _FLOATS:
        return _floats_from_json(leaves, datatype, where).reshape(shape)
    native = DATATYPES[datatype].newbyteorder("=")
    try:
        return np.array(leaves, dtype=native).reshape(shape)
    except OverflowError:
        low, high = np.iinfo(native).min, np.iinfo(native).max
        raise CodecError(
            f"{where}: a value is outside {datatype}'s range [{low}, {high}]"
        ) from None


def _floats_from_json(leaves: list[Any], datatype: str, where: str) -> np.ndarray:
    try:
        wide = np.array(leaves, dtype=np.float64)
    except OverflowError:
        raise CodecError(f"{where}: a value is too large for {datatype}") from None
    if datatype == "FP64":
        return wide
    with np.errstate(over="ignore"):
        narrow = wide.astype(np.float32 if datatype == "BF16" else DATATYPES[datatype])
        if datatype == "BF16":
            narrow = _bf16_values(_bf16_bits(narrow))
    if not np.isfinite(narrow).all():
        bad = wide[~np.isfinite(narrow)][0]
        raise CodecError(f"{where}: value {bad!r} is outside {datatype}'s range")
    return narrow


def tensor_to_json(array: np.ndarray, datatype: str) -> Any:
    """Flat JSON ``data`` for a tensor; non-finite floats and non-UTF-8 bytes cannot be JSON."""
    flat = np.ascontiguousarray(array).ravel()
    if datatype == "BYTES":
        try:
            return [x.decode() if isinstance(x, bytes) else str(x) for x in flat]
        except UnicodeDecodeError:
            raise CodecError("a BYTES element is not UTF-8; request it as binary data") from None
    if datatype in _FLOATS:
        if not np.isfinite(flat).all():
            raise CodecError("NaN or Inf cannot be sent as JSON; request binary data")
        return flat.astype(np.float32) if datatype == "BF16" else flat
    return flat.astype(DATATYPES[datatype].newbyteorder("="), copy=False)


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
        array = tensor_from_json(spec["data"], datatype, shape, where=where)
        return InputTensor(name, datatype, shape, array), offset
    if "data" in spec:
        raise CodecError(f"{where} has both data and parameters.binary_data_size")
    if type(size) is not int or size < 0:
        raise CodecError(f"{where}: binary_data_size must be a non-negative integer")
    if offset + size > len(binary):
        raise CodecError(
            f"{where}: binary_data_size {size} runs past the end of the body "
            f"({len(binary) - offset} bytes of binary data left)"
        )
    array = tensor_from_bytes(binary[offset : offset + size], datatype, shape, where=where)
    return InputTensor(name, datatype, shape, array), offset + size


def _output(raw: Any, index: int) -> RequestedOutput:
    spec = _object(raw, f"outputs[{index}]")
    name = _string(spec.get("name"), f"outputs[{index}].name")
    where = f"output {name!r}"
    params = _parameters(spec.get("parameters"), where)
    count = params.get("classification")
    if count is not None and (type(count) is not int or count < 1):
        raise CodecError(f"{where}: classification must be a positive integer, not {count!r}")
    return RequestedOutput(name, _flag(params, "binary_data", where), count)


def decode_request(body: bytes, header_length: str | None, *, max_elements: int) -> InferRequest:
    """An ``/infer`` body: the JSON header, then the binary data of the inputs that have some."""
    split = _header_length(header_length, len(body))
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
