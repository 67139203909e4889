"""Open Inference Protocol (KServe V2) tensors, one at a time: datatypes, JSON and binary forms.

No HTTP and no model here: ``service.v2.wire`` reads and writes whole requests with these.

Decoded arrays: numeric datatypes as the matching numpy dtype, ``BF16`` as float32 holding
bfloat16 values (numpy has no bfloat16), ``BYTES`` as an object array of ``bytes``. Every
problem with a tensor is a ``CodecError`` (400) that names it and says what is wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np

from service.errors import InvalidParameterError

__all__ = [
    "DATATYPES",
    "FLOATS",
    "INTS",
    "CodecError",
    "fmt_shape",
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
FLOATS = frozenset({"FP16", "BF16", "FP32", "FP64"})
INTS = frozenset({"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"})


class CodecError(InvalidParameterError):
    """A request the protocol (or the model) cannot take; the message says exactly why."""


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
    **{t: frozenset({int}) for t in INTS},
    **{t: frozenset({int, float}) for t in FLOATS},
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
    if datatype in FLOATS:
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
    if datatype in FLOATS:
        if not np.isfinite(flat).all():
            raise CodecError("NaN or Inf cannot be sent as JSON; request binary data")
        return flat.astype(np.float32) if datatype == "BF16" else flat
    return flat.astype(DATATYPES[datatype].newbyteorder("="), copy=False)
