"""Binding Open Inference Protocol tensors to a model: the model's tensors as the protocol
describes them, inputs checked and converted to the model's datatype, outputs selected, and
Triton's classification extension. No HTTP here.

An input is checked against the model (name, datatype, rank, dimensions, batch size) before
its values are converted, so a tensor the model cannot take costs nothing. Valid values are
finite and within ``MAX_MAGNITUDE`` (a normalised image is within a few units of zero): the
largest float32 values pass "finite" but overflow inside the network into NaN scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from service.postprocess import top_k
from service.runtime import ModelRuntime
from service.v2.tensors import DATATYPES, CodecError, fmt_shape
from service.v2.wire import InferRequest, RequestedOutput

__all__ = [
    "MAX_MAGNITUDE",
    "TensorSpec",
    "bind_input",
    "classification",
    "model_tensors",
    "select_outputs",
]

MAX_MAGNITUDE = 1e6
_ORT_TYPES = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(bfloat16)": "BF16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
_CONVERTIBLE = frozenset(DATATYPES) - {"BOOL", "BYTES"}


@dataclass(frozen=True)
class TensorSpec:
    """A model's tensor as metadata describes it; -1 marks a dynamic axis."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def _spec(node: ort.NodeArg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
    return TensorSpec(node.name, _ORT_TYPES.get(node.type, node.type), shape)


def model_tensors(runtime: ModelRuntime) -> tuple[TensorSpec, list[TensorSpec]]:
    """The model's input and its outputs (the runtime serves its first output)."""
    return _spec(runtime.input), [_spec(runtime.output)]


def _unique(names: list[str], kind: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise CodecError(f"{kind} {name!r} appears more than once")
        seen.add(name)


def bind_input(request: InferRequest, spec: TensorSpec, *, max_batch: int) -> np.ndarray:
    """The request's input as the model's batch: name, datatype, shape and batch size checked
    first, then the values converted to the model's datatype (FP16 to FP32, say) and checked:
    finite and within ``MAX_MAGNITUDE``."""
    names = [t.name for t in request.inputs]
    _unique(names, "input")
    unknown = [n for n in names if n != spec.name]
    if unknown:
        raise CodecError(
            f"unknown input {', '.join(map(repr, unknown))}: the model takes {spec.name!r}"
        )
    tensor = request.inputs[0]
    where = f"input {spec.name!r}"
    if tensor.datatype not in _CONVERTIBLE:
        raise CodecError(
            f"{where}: datatype {tensor.datatype} cannot be converted to the model's "
            f"{spec.datatype}; send {spec.datatype} (FP16, BF16, FP64 and integers are converted)"
        )
    if len(tensor.shape) != len(spec.shape) or any(
        want not in (-1, got) for want, got in zip(spec.shape, tensor.shape, strict=True)
    ):
        raise CodecError(
            f"{where}: expected shape {fmt_shape(spec.shape)}, got {fmt_shape(tensor.shape)}"
        )
    batch = tensor.shape[0] if tensor.shape else 1
    if spec.shape and spec.shape[0] == -1 and not 1 <= batch <= max_batch:
        raise CodecError(f"{where}: batch size {batch} is outside 1..{max_batch}")
    target = DATATYPES[spec.datatype].newbyteorder("=")
    if target.kind in "iu":
        _check_integers(tensor.array, target, where)
    with np.errstate(over="ignore", invalid="ignore"):
        # Binary data sits at any offset of the body: copy when unaligned, as well as to convert.
        array = np.require(tensor.array, dtype=target, requirements=["C", "A"])
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(array.size - np.count_nonzero(finite))
            raise CodecError(
                f"{where}: {bad} value(s) are NaN or Inf (or beyond {spec.datatype}'s range); "
                "the model takes finite values only"
            )
        if array.size and float(np.abs(array).max()) > MAX_MAGNITUDE:
            raise CodecError(
                f"{where}: values must lie within +-{MAX_MAGNITUDE:g} (the model's input is "
                "an image normalised with the mean and std of its model card, within a few "
                "units of 0); larger ones overflow inside the network"
            )
    return array


def _check_integers(values: np.ndarray, target: np.dtype[np.generic], where: str) -> None:
    """Values for an integer input (a uint8 image, say): whole numbers within its range, not
    wrapped or truncated on the way."""
    if not values.size:
        return
    info = np.iinfo(target)  # type: ignore[type-var]
    if values.dtype.kind == "f" and not (np.isfinite(values).all() and (values % 1 == 0).all()):
        raise CodecError(f"{where}: the model takes whole numbers ({target.name})")
    low, high = values.min(), values.max()
    if low < info.min or high > info.max:
        raise CodecError(
            f"{where}: values must lie within [{info.min}, {info.max}] ({target.name}); "
            f"got [{low}, {high}]"
        )


def select_outputs(
    request: InferRequest, specs: Sequence[TensorSpec], *, classes: int
) -> list[RequestedOutput]:
    """The outputs to return, each with its binary flag decided; unknown names refused."""
    wanted = request.outputs
    if wanted is None:
        wanted = [RequestedOutput(s.name) for s in specs]
    _unique([o.name for o in wanted], "output")
    valid = {s.name for s in specs}
    resolved = []
    for out in wanted:
        if out.name not in valid:
            raise CodecError(
                f"unknown output {out.name!r}: the model has {', '.join(map(repr, sorted(valid)))}"
            )
        if out.classification is not None and out.classification > classes:
            raise CodecError(
                f"output {out.name!r}: classification {out.classification} is more than the "
                f"{classes} classes the model has"
            )
        binary = request.binary_data_output if out.binary is None else out.binary
        resolved.append(RequestedOutput(out.name, binary, out.classification))
    return resolved


def classification(values: np.ndarray, k: int, labels: Sequence[str]) -> np.ndarray:
    """Triton's classification extension: per row, the k highest values as
    ``"<value>:<index>:<label>"`` (BYTES, shape [N, k]); ties keep index order."""
    rows = values.reshape(len(values), -1)
    order, best = top_k(rows, k)
    out = np.empty(order.shape, dtype=object)
    for r, (indices, scores) in enumerate(zip(order.tolist(), best.tolist(), strict=True)):
        for c, (index, score) in enumerate(zip(indices, scores, strict=True)):
            label = f":{labels[index]}" if index < len(labels) else ""
            out[r, c] = f"{score:f}:{index}{label}".encode()
    return out
