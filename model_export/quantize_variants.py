"""The INT8 variants `cnnserve quantize` can make, and making one with ONNX Runtime.

Every variant is static quantization in the QDQ format (QuantizeLinear/DequantizeLinear
around each quantized op, which ONNX Runtime fuses into integer kernels on the CPU). They
differ in what ONNX Runtime's kernels, and so speed and accuracy, depend on:

- activations uint8 (U8S8) or int8 (S8S8); weights are always int8;
- weights per channel (one scale per output channel) or per tensor;
- ``reduce_range``: weights in 7 bits, which keeps the 16-bit pair sums of x86 CPUs without
  a VNNI instruction from saturating.

Which is fastest, and which keeps accuracy, depends on the CPU: measure, then choose.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

__all__ = ["CALIBRATION_METHODS", "VARIANTS", "Variant", "quantize_variant", "requantized"]

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
# Not used: "CalibMaxIntermediateOutputs". In this ONNX Runtime its MinMax calibrator clears
# the buffered batches without folding them into the ranges (microsoft/onnxruntime#18893):
# ranges then come from the last few batches only, or calibration fails. MinMax keeps only
# per-tensor minima and maxima per batch anyway, so memory stays small without it.


@dataclass(frozen=True)
class Variant:
    activations: str  # "uint8" or "int8"
    per_channel: bool
    reduce_range: bool

    @property
    def name(self) -> str:
        """``u8s8-pc-rr``: activations and weights, per-channel or per-tensor, 7-bit weights."""
        kind = "u8s8" if self.activations == "uint8" else "s8s8"
        return f"{kind}-{'pc' if self.per_channel else 'pt'}{'-rr' if self.reduce_range else ''}"

    def describe(self) -> str:
        kind = "U8S8" if self.activations == "uint8" else "S8S8"
        weights = "per-channel" if self.per_channel else "per-tensor"
        bits = "7-bit (reduce_range)" if self.reduce_range else "8-bit"
        return f"QDQ {kind}: {self.activations} activations, {bits} int8 weights {weights}"


VARIANTS = {
    v.name: v
    for v in (
        Variant(activations, per_channel, reduce_range)
        for activations in ("uint8", "int8")
        for per_channel in (True, False)
        for reduce_range in (True, False)
    )
}


def quantize_variant(
    source: Path,
    target: Path,
    variant: Variant,
    *,
    reader: CalibrationDataReader,
    calibration_cache: Path,
    method: str = "minmax",
    keep_fp32: Sequence[str] = (),
) -> Path:
    """Quantize ``source`` (a pre-processed FP32 model) into ``target``.

    The first call calibrates with ``reader`` and writes the activation ranges to
    ``calibration_cache``; later calls with the same cache reuse them (ranges do not depend
    on the variant), so the variants differ only in what the variant says.
    """
    if hasattr(reader, "rewind"):
        reader.rewind()
    quant = logging.getLogger()
    level = quant.level
    quant.setLevel(logging.ERROR)  # quantize_static warns about pre-processing it cannot see
    try:
        quantize_static(
            str(source),
            str(target),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=variant.per_channel,
            reduce_range=variant.reduce_range,
            activation_type=QuantType.QUInt8 if variant.activations == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(keep_fp32),
            calibrate_method=CALIBRATION_METHODS[method],
            calibration_cache_path=str(calibration_cache),
        )
    finally:
        quant.setLevel(level)
    return target


def requantized(model: onnx.ModelProto, keep_fp32: Sequence[str]) -> dict[str, list[str]]:
    """Nodes of ``keep_fp32`` that ONNX Runtime would run in INT8 all the same, each with the
    nodes whose outputs it reads (keeping those in FP32 too leaves it float).

    The quantizer leaves a kept node's weights in FP32, but when all its activation inputs
    come through DequantizeLinear and its output goes to a QuantizeLinear (quantized
    neighbours on both sides), ONNX Runtime's CPU optimiser quantizes the weights itself
    (its WeightBiasQuantization step) and fuses the node into an integer kernel. A node is
    only float when its input or its output is.
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    weights = {t.name for t in graph.initializer}
    found: dict[str, list[str]] = {}
    for node in graph.node:
        if node.name not in keep_fp32 or not node.output:
            continue
        activations = [name for name in node.input if name and name not in weights]
        dequantized = [producer.get(name) for name in activations]
        if not activations or any(
            d is None or d.op_type != "DequantizeLinear" for d in dequantized
        ):
            continue
        if not any(r.op_type == "QuantizeLinear" for r in readers.get(node.output[0], [])):
            continue
        sources = []
        for dq in dequantized:
            q = producer.get(dq.input[0]) if dq is not None else None
            origin = (
                producer.get(q.input[0])
                if q is not None and q.op_type == "QuantizeLinear"
                else None
            )
            if origin is not None and origin.name:
                sources.append(origin.name)
        found[node.name] = sources
    return found
