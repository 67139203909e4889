"""Where an INT8 model loses: ONNX Runtime's per-tensor comparison of a QDQ model with its
FP32 source (``onnxruntime.quantization.qdq_loss_debug``).

Both models are run on the same images with every activation added as an output. For each
activation ONNX Runtime pairs three tensors: the FP32 model's, and the INT8 model's before
and after its QuantizeLinear/DequantizeLinear pair. From them, per tensor, two signal to
quantization noise ratios (SQNR, dB, higher is better), pooled over all images:

- ``float_vs_int8_db``: the FP32 activation against the INT8 model's, i.e. all the error
  accumulated up to this tensor;
- ``qdq_db``: the tensor against itself after quantize-dequantize, i.e. what rounding this
  one tensor to 8 bits costs.

A layer's own loss is the error it adds: the relative error power (noise over signal) at its
output minus the largest at its inputs, i.e. what quantizing its weights and its output
adds. Layers are ranked by it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader
from onnxruntime.quantization.qdq_loss_debug import (
    collect_activations,
    compute_weight_error,
    create_activation_matching,
    create_weight_matching,
    modify_model_output_intermediate_tensors,
)

__all__ = ["LayerLoss", "layer_losses"]

_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


@dataclass(frozen=True)
class LayerLoss:
    """How much one quantized layer of the INT8 model departs from FP32."""

    node: str
    op_type: str
    output: str
    noise_added: float  # error power the layer adds, as a share of its output's power
    float_vs_int8_db: float  # at the layer's output
    qdq_db: float | None  # rounding the layer's output alone (None where an activation
    # function was folded into the layer: its pre-QDQ tensor is then the pre-activation)
    weight_db: float | None  # rounding its weights alone (None: no quantized weight)

    def to_json(self) -> dict[str, Any]:
        facts = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        return facts | {"noise_added": float(f"{self.noise_added:.3g}")}


class _Feeds(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._iter = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)


@dataclass
class _Norms:
    """Running squared norms, so SQNR pools every image without keeping the tensors."""

    signal: float = 0.0
    noise: float = 0.0

    def add(self, reference: np.ndarray, other: np.ndarray) -> None:
        a = np.asarray(reference, dtype=np.float64).ravel()
        b = np.asarray(other, dtype=np.float64).ravel()
        self.signal += float(a @ a)
        self.noise += float((a - b) @ (a - b))

    @property
    def db(self) -> float:
        tiny = float(np.finfo(np.float32).eps) ** 2
        return 10 * math.log10(max(self.signal, tiny) / max(self.noise, tiny))

    @property
    def ratio(self) -> float:
        """Noise power over signal power (10 ** (-db / 10))."""
        return self.noise / self.signal if self.signal > 0 else math.inf


def _chunks(inputs: np.ndarray, name: str, size: int) -> Iterator[list[dict[str, np.ndarray]]]:
    for start in range(0, len(inputs), size):
        yield [{name: inputs[i : i + 1]} for i in range(start, min(start + size, len(inputs)))]


def _activation_norms(
    float_aug: Path, qdq_aug: Path, inputs: np.ndarray, input_name: str, chunk: int
) -> tuple[dict[str, _Norms], dict[str, _Norms]]:
    """Per activation: (FP32 vs INT8 post-QDQ, pre- vs post-QDQ) norms over every image."""
    cross: dict[str, _Norms] = {}
    rounding: dict[str, _Norms] = {}
    for feeds in _chunks(inputs, input_name, chunk):  # a few images at a time: bounded memory
        qdq = collect_activations(str(qdq_aug), _Feeds(feeds))
        reference = collect_activations(str(float_aug), _Feeds(feeds))
        for tensor, match in create_activation_matching(qdq, reference).items():
            for post, pre in zip(match["post_qdq"], match["pre_qdq"], strict=True):
                rounding.setdefault(tensor, _Norms()).add(pre, post)
            for post, ref in zip(match["post_qdq"], match.get("float", []), strict=True):
                cross.setdefault(tensor, _Norms()).add(ref, post)
    return cross, rounding


def _activation_inputs(graph: onnx.GraphProto) -> dict[str, list[str]]:
    """For each compute node of a QDQ graph: the float activations its DequantizeLinear
    inputs come from (``X`` for ``X -> Q -> DQ -> node``)."""
    producer = {out: node for node in graph.node for out in node.output}
    sources: dict[str, list[str]] = {}
    for node in graph.node:
        if node.op_type in _QDQ_OPS:
            continue
        found = []
        for name in node.input:
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                found.append(q.input[0])
        sources[node.name] = found
    return sources


def _weight_errors(float_model: Path, qdq_model: Path, graph: onnx.GraphProto) -> dict[str, float]:
    """Node name -> SQNR of its dequantized weight against the FP32 weight."""
    by_weight = compute_weight_error(create_weight_matching(str(float_model), str(qdq_model)))
    dequantized = {
        node.output[0]: node.input[0].removesuffix("_quantized")
        for node in graph.node
        if node.op_type == "DequantizeLinear"
    }
    errors: dict[str, float] = {}
    for node in graph.node:
        for name in node.input[1:2]:  # Conv, Gemm and MatMul take their weight second
            weight = dequantized.get(name)
            if weight in by_weight:
                errors[node.name] = float(by_weight[weight])
    return errors


def layer_losses(
    float_model: Path,
    qdq_model: Path,
    inputs: np.ndarray,
    *,
    workdir: Path,
    chunk: int = 4,
) -> list[LayerLoss]:
    """Every layer of ``qdq_model`` whose inputs and output are quantized (not the final
    classifier, whose output stays float), with its losses on ``inputs``, worst first.

    ``float_model`` must be the graph ``qdq_model`` was quantized from (same tensor names).
    """
    float_aug, qdq_aug = workdir / "debug-float.onnx", workdir / "debug-int8.onnx"
    modify_model_output_intermediate_tensors(str(float_model), str(float_aug))
    modify_model_output_intermediate_tensors(str(qdq_model), str(qdq_aug))
    graph = onnx.load(str(qdq_model)).graph
    input_name = graph.input[0].name
    cross, rounding = _activation_norms(float_aug, qdq_aug, inputs, input_name, chunk)
    weights = _weight_errors(float_model, qdq_model, graph)
    inputs_of = _activation_inputs(graph)
    # A tensor made by another node in FP32 than in INT8: an activation function (ReLU,
    # Clip) that the quantizer folded into the layer before it.
    made_by = {
        out: node.name for node in onnx.load(str(float_model)).graph.node for out in node.output
    }
    losses = []
    for node in graph.node:
        output = node.output[0] if node.output else ""
        before = [cross[s].ratio for s in inputs_of.get(node.name, []) if s in cross]
        if not before or output not in cross:
            continue  # not a quantized layer, or its output is not quantized
        folded = made_by.get(output) != node.name
        losses.append(
            LayerLoss(
                node=node.name,
                op_type=node.op_type,
                output=output,
                noise_added=cross[output].ratio - max(before),
                float_vs_int8_db=cross[output].db,
                qdq_db=None if folded or output not in rounding else rounding[output].db,
                weight_db=weights.get(node.name),
            )
        )
    return sorted(losses, key=lambda loss: loss.noise_added, reverse=True)
