"""A CNN's classifier head, read from its ONNX graph: global average pooling, then one linear
layer. What class activation mapping (Zhou et al. 2016) needs: the feature maps the pooling
averages, and the linear layer's weights (one row per class).

Walking back from the model's output: an optional Softmax; then Gemm (``transB`` and
``alpha`` honoured) or MatMul (plus an optional bias Add); then Flatten, Reshape or Squeeze;
then GlobalAveragePool, or ReduceMean over the two spatial axes; the 4-D tensor pooled is
the feature map. Identity, Dropout, Cast and quantisation pairs (QuantizeLinear,
DequantizeLinear: INT8 models) are stepped over, and quantised weights are dequantised.
Anything else: no such head, and the reason says what was found instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["Head", "classifier_head"]

_PASS_THROUGH = frozenset({"Identity", "Dropout", "Cast", "QuantizeLinear", "DequantizeLinear"})
_FLATTEN = frozenset({"Flatten", "Reshape", "Squeeze"})


@dataclass(frozen=True)
class Head:
    """GAP + linear: ``features`` (the pooled tensor's name), ``weights`` (classes x C) and
    ``source``: the tensor ``features`` is, quantisation pairs aside (in an INT8 graph the
    pooling reads a DequantizeLinear of a QuantizeLinear of the layer that computed them)."""

    features: str
    weights: np.ndarray
    source: str


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.producers = {out: node for node in model.graph.node for out in node.output}
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.constants = {
            node.output[0]: helper.get_attribute_value(node.attribute[0])
            for node in model.graph.node
            if node.op_type == "Constant" and node.attribute
        }

    def unquantised(self, name: str) -> str:
        """The tensor ``name`` is, before any QuantizeLinear/DequantizeLinear pair."""
        node = self.producers.get(name)
        while node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            name = node.input[0]
            node = self.producers.get(name)
        return name

    def producer(self, name: str) -> onnx.NodeProto | None:
        node = self.producers.get(name)
        while node is not None and node.op_type in _PASS_THROUGH and node.input:
            node = self.producers.get(node.input[0])
        return node

    def value(self, name: str) -> np.ndarray | None:
        """A constant tensor: an initializer, a Constant node, or either dequantised."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        if name in self.constants and isinstance(self.constants[name], onnx.TensorProto):
            return numpy_helper.to_array(self.constants[name])
        node = self.producers.get(name)
        if node is None:
            return None
        if node.op_type in ("Identity", "Cast"):
            return self.value(node.input[0])
        if node.op_type == "DequantizeLinear":
            return self._dequantised(node)
        return None

    def _dequantised(self, node: onnx.NodeProto) -> np.ndarray | None:
        values = self.value(node.input[0])
        scale = self.value(node.input[1]) if len(node.input) > 1 else None
        if values is None or scale is None:
            return None
        zero = self.value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * values.ndim
        if scale.ndim == 1 and scale.size > 1:
            shape[axis] = -1
        offset = 0 if zero is None else zero.astype(np.float32).reshape(shape)
        return (values.astype(np.float32) - offset) * scale.astype(np.float32).reshape(shape)


def _attr(node: onnx.NodeProto, name: str, default: float) -> float:
    for attribute in node.attribute:
        if attribute.name == name:
            return float(helper.get_attribute_value(attribute))
    return default


def _linear(graph: _Graph, output: str) -> tuple[str, np.ndarray] | str:
    """(the linear layer's input, its weights classes x C), or why there is none."""
    node = graph.producer(output)
    if node is not None and node.op_type == "Softmax":
        node = graph.producer(node.input[0])
    if node is not None and node.op_type == "Add":  # MatMul + bias
        node = next(
            (
                n
                for n in (graph.producer(i) for i in node.input)
                if n is not None and n.op_type == "MatMul"
            ),
            node,
        )
    if node is None or node.op_type not in ("Gemm", "MatMul"):
        found = node.op_type if node is not None else "nothing"
        return f"its output does not come from one linear layer (Gemm or MatMul) but {found}"
    weights = graph.value(node.input[1])
    if weights is None or weights.ndim != 2:
        return "its last linear layer's weights are not constants in the graph"
    if node.op_type == "Gemm":
        weights = weights if _attr(node, "transB", 0) else weights.T
        weights = weights * _attr(node, "alpha", 1.0)
    else:
        weights = weights.T  # MatMul: x (N, C) @ W (C, classes)
    return node.input[0], np.ascontiguousarray(weights, dtype=np.float32)


def classifier_head(model: onnx.ModelProto) -> Head | str:
    """The model's GAP + linear head, or (a string) why it has none, in one sentence."""
    graph = _Graph(model)
    found = _linear(graph, model.graph.output[0].name)
    if isinstance(found, str):
        return found
    pooled, weights = found
    node = graph.producer(pooled)
    while node is not None and node.op_type in _FLATTEN:
        node = graph.producer(node.input[0])
    if node is not None and node.op_type == "ReduceMean":
        axes = graph.value(node.input[1]) if len(node.input) > 1 else None
        if axes is None:
            axes = np.array(next((a.ints for a in node.attribute if a.name == "axes"), []))
        if sorted(int(a) for a in axes) == [2, 3]:
            return Head(node.input[0], weights, graph.unquantised(node.input[0]))
    if node is None or node.op_type != "GlobalAveragePool":
        found = node.op_type if node is not None else "nothing"
        return (
            "its last linear layer does not read globally average-pooled feature maps "
            f"(it reads {found}): class activation maps need a GAP + linear head"
        )
    return Head(node.input[0], weights, graph.unquantised(node.input[0]))
