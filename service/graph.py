"""What a user can look inside an ONNX CNN: its spatial layers and their receptive fields.

Receptive fields follow the arithmetic of Dumoulin & Visin (2016) and Araujo et al. (2019):
walking the graph from the input, each Conv or pooling node with kernel k, dilation d,
stride s and leading padding p maps (size r, jump j, start c) to

    k' = d (k - 1) + 1,   r' = r + (k' - 1) j,   j' = j s,   c' = c + ((k' - 1) / 2 - p) j

where ``start`` is the input-pixel coordinate of the centre of the first output unit's
field (pixel i has its centre at i). Elementwise nodes keep the field; a node with several
spatial inputs (a residual sum, a concatenation) takes the union of theirs. Global pooling
sees the whole input. Any other op ends the walk for what depends on it.

Quantized graphs in the QDQ format (``cnnserve quantize``) wrap each quantized op in
QuantizeLinear/DequantizeLinear pairs. Those nodes are not layers: the walk passes through
them (they keep the field) and they are not listed, so a quantized Conv keeps the name and
receptive field it had in FP32, and its feature map is its float output. Weights reach such a
Conv through a DequantizeLinear, whose shape stands for the weight's. An activation function
the quantizer folded into the layer before it (ReLU, ReLU6 as Clip) has no node left, so it
is not listed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx
from onnx import helper, numpy_helper

__all__ = ["Layer", "ReceptiveField", "describe_layers"]

_WINDOW_OPS = {"Conv", "MaxPool", "AveragePool", "LpPool"}
_GLOBAL_OPS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
# Quantize/dequantize steps of QDQ graphs: they keep the field and are never layers.
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
_KEEP_OPS = {
    "Relu",
    "Clip",
    "LeakyRelu",
    "PRelu",
    "Elu",
    "Selu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Softplus",
    "Mish",
    "Gelu",
    "BatchNormalization",
    "InstanceNormalization",
    "LRN",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "Concat",
    "Dropout",
    "Identity",
    "Cast",
    "Neg",
    "Abs",
    "Sqrt",
    "Pow",
    "Exp",
    "Erf",
}


@dataclass(frozen=True)
class ReceptiveField:
    """Per axis (height, width): field size, jump (effective stride) and first centre."""

    size: tuple[float, float]
    jump: tuple[float, float]
    start: tuple[float, float]

    def to_json(self) -> dict[str, list[float]]:
        return {
            "size": _numbers(self.size),
            "jump": _numbers(self.jump),
            "start": _numbers(self.start),
        }


def _numbers(values: tuple[float, float]) -> list[float]:
    return [int(v) if float(v).is_integer() else v for v in values]


@dataclass(frozen=True)
class Layer:
    """A node whose output is a (N, C, H, W) activation computed from the image."""

    name: str
    op_type: str
    output: str  # the tensor to fetch for its feature maps
    output_shape: tuple[int | None, ...]  # (C, H, W); None where the graph leaves it open
    receptive_field: ReceptiveField | None


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _dims(info: onnx.ValueInfoProto) -> tuple[int | None, ...] | None:
    if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
        return None
    return tuple(
        d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim
    )


def _window(
    node: onnx.NodeProto,
    rf: ReceptiveField,
    in_hw: tuple[int | None, ...],
    weights: dict[str, tuple[int, ...]],
) -> ReceptiveField | None:
    attrs = _attrs(node)
    kernel = attrs.get("kernel_shape")
    if kernel is None and node.op_type == "Conv" and node.input[1] in weights:
        kernel = weights[node.input[1]][2:]
    if kernel is None or len(kernel) != 2:  # type: ignore[arg-type]
        return None
    kernel = list(kernel)  # type: ignore[call-overload]
    strides = list(attrs.get("strides") or [1, 1])  # type: ignore[call-overload]
    dilations = list(attrs.get("dilations") or [1, 1])  # type: ignore[call-overload]
    pads = list(attrs.get("pads") or [0, 0, 0, 0])  # type: ignore[call-overload]
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    size, jump, start = [], [], []
    for axis in range(2):
        k = dilations[axis] * (kernel[axis] - 1) + 1
        s = strides[axis]
        begin = pads[axis]
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            n = in_hw[axis]
            if n is None:
                return None
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        elif auto_pad == "VALID":
            begin = 0
        j = rf.jump[axis]
        size.append(rf.size[axis] + (k - 1) * j)
        jump.append(j * s)
        start.append(rf.start[axis] + ((k - 1) / 2 - begin) * j)
    return ReceptiveField((size[0], size[1]), (jump[0], jump[1]), (start[0], start[1]))


def _global(rf: ReceptiveField, in_hw: tuple[int | None, ...]) -> ReceptiveField | None:
    if None in in_hw[:2]:
        return None
    n = [int(x) for x in in_hw[:2]]  # type: ignore[arg-type]
    size = tuple(rf.size[a] + (n[a] - 1) * rf.jump[a] for a in range(2))
    jump = tuple(rf.jump[a] * n[a] for a in range(2))
    start = tuple(rf.start[a] + (n[a] - 1) / 2 * rf.jump[a] for a in range(2))
    return ReceptiveField(size, jump, start)  # type: ignore[arg-type]


def _union(fields: list[ReceptiveField]) -> ReceptiveField:
    """The smallest field covering those of every input, per output unit."""
    size, jump, start = [], [], []
    for axis in range(2):
        lo = min(f.start[axis] - (f.size[axis] - 1) / 2 for f in fields)
        hi = max(f.start[axis] + (f.size[axis] - 1) / 2 for f in fields)
        size.append(hi - lo + 1)
        jump.append(max(f.jump[axis] for f in fields))
        start.append((lo + hi) / 2)
    return ReceptiveField((size[0], size[1]), (jump[0], jump[1]), (start[0], start[1]))


def _to_channels_first(node: onnx.NodeProto) -> bool:
    """A Transpose from (N, H, W, C) to (N, C, H, W)."""
    perm = _attrs(node).get("perm")
    return node.op_type == "Transpose" and list(perm or []) == [0, 3, 1, 2]  # type: ignore[call-overload]


def describe_layers(model: onnx.ModelProto, *, layout: str = "NCHW") -> list[Layer]:
    """Every node computing a 4-D (N, C, H, W) activation from the input, in graph order.

    With a channels-last (NHWC) input, what the graph does before turning it into NCHW (a
    Transpose with perm [0, 3, 1, 2], as exporters write it) is preprocessing inside the
    model: followed, not listed; ONNX computes every convolution in NCHW."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    initializers = {t.name for t in graph.initializer}
    weights = {
        t.name: tuple(numpy_helper.to_array(t).shape) for t in graph.initializer if len(t.dims) == 4
    }
    for node in graph.node:  # a quantized weight: initializer -> DequantizeLinear -> Conv
        if node.op_type == "DequantizeLinear" and node.input[0] in weights:
            weights[node.output[0]] = weights[node.input[0]]
    shapes: dict[str, tuple[int | None, ...]] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        dims = _dims(info)
        if dims is not None:
            shapes[info.name] = dims
    inputs = [i.name for i in graph.input if i.name not in initializers]
    fields: dict[str, ReceptiveField | None] = {
        name: ReceptiveField((1, 1), (1, 1), (0, 0)) for name in inputs
    }
    channels_last = set(inputs) if layout == "NHWC" else set()
    layers: list[Layer] = []
    for node in graph.node:
        spatial = [name for name in node.input if name in fields]
        if not spatial or not node.output:
            continue
        known = [f for name in spatial if (f := fields[name]) is not None]
        rf: ReceptiveField | None = None
        if any(name in channels_last for name in spatial):
            if node.op_type in _KEEP_OPS and len(known) == len(spatial):
                fields[node.output[0]] = known[0] if len(known) == 1 else _union(known)
                channels_last.add(node.output[0])  # still channels-last: followed, not listed
                continue
            if not _to_channels_first(node) or len(known) != 1:
                continue  # anything else on channels-last data ends the walk
            rf = known[0]
        elif len(known) == len(spatial):
            in_hw = shapes.get(spatial[0], (None,) * 4)[2:] or (None, None)
            if node.op_type in _WINDOW_OPS:
                rf = _window(node, known[0], in_hw, weights)
            elif node.op_type in _GLOBAL_OPS:
                rf = _global(known[0], in_hw)
            elif node.op_type in _KEEP_OPS or node.op_type in _QDQ_OPS:
                rf = known[0] if len(known) == 1 else _union(known)
        output = node.output[0]
        shape = shapes.get(output)
        if shape is None or len(shape) != 4:
            continue  # flattened or unknown: no longer a feature map, stop following it
        fields[output] = rf
        if node.op_type not in _QDQ_OPS:
            layers.append(Layer(node.name or output, node.op_type, output, shape[1:], rf))
    return layers
