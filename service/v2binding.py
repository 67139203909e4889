"""Binding Open Inference Protocol tensors to a model: inputs checked and converted to the
model's datatype, outputs selected, and Triton's classification extension. No HTTP here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.v2codec import DATATYPES, CodecError, InferRequest, RequestedOutput, fmt_shape

__all__ = ["TensorSpec", "bind_input", "classification", "select_outputs"]


@dataclass(frozen=True)
class TensorSpec:
    """A model's tensor as metadata describes it; -1 marks a dynamic axis."""

    name: str
    datatype: str
    shape: tuple[int, ...]


def _unique(names: list[str], kind: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise CodecError(f"{kind} {name!r} appears more than once")
        seen.add(name)


def bind_input(request: InferRequest, spec: TensorSpec, *, max_batch: int) -> np.ndarray:
    """The request's input as the model's batch: names, shape, batch size and values checked,
    any numeric datatype converted to the model's (FP16 to FP32, say); NaN and Inf refused."""
    names = [t.name for t in request.inputs]
    _unique(names, "input")
    unknown = [n for n in names if n != spec.name]
    if unknown:
        raise CodecError(
            f"unknown input {', '.join(map(repr, unknown))}: the model takes {spec.name!r}"
        )
    tensor = request.inputs[0]
    where = f"input {spec.name!r}"
    if len(tensor.shape) != len(spec.shape) or any(
        want not in (-1, got) for want, got in zip(spec.shape, tensor.shape, strict=True)
    ):
        raise CodecError(
            f"{where}: expected shape {fmt_shape(spec.shape)}, got {fmt_shape(tensor.shape)}"
        )
    batch = tensor.shape[0] if tensor.shape else 1
    if spec.shape and spec.shape[0] == -1 and not 1 <= batch <= max_batch:
        raise CodecError(f"{where}: batch size {batch} is outside 1..{max_batch}")
    if tensor.datatype in ("BOOL", "BYTES"):
        raise CodecError(
            f"{where}: datatype {tensor.datatype} cannot be converted to the model's "
            f"{spec.datatype}; send {spec.datatype} (FP16, BF16, FP64 and integers are converted)"
        )
    target = DATATYPES[spec.datatype].newbyteorder("=")
    with np.errstate(over="ignore", invalid="ignore"):
        # Binary data sits at any offset of the body: copy when unaligned, as well as to convert.
        array = np.require(tensor.array, dtype=target, requirements=["C", "A"])
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        raise CodecError(
            f"{where}: {bad} value(s) are NaN or Inf (or beyond {spec.datatype}'s range); "
            "the model takes finite values only"
        )
    return array


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
    order = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    out = np.empty(order.shape, dtype=object)
    for r, row in enumerate(order):
        for c, index in enumerate(row):
            label = f":{labels[index]}" if index < len(labels) else ""
            out[r, c] = f"{rows[r, index]:f}:{index}{label}".encode()
    return out
