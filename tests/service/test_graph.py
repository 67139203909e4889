"""Receptive fields from ONNX graphs against hand-computed values."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from testkit import MODELS

from service.graph import ReceptiveField, describe_layers


def test_lenet5_receptive_fields_by_hand() -> None:
    layers = {
        layer.name: layer
        for layer in describe_layers(onnx.load(str(MODELS / "lenet5-fashion" / "1" / "model.onnx")))
    }
    # conv1 5x5 pad 2: r=5 j=1 c=0 | pool 2/2: r=5+1=6 j=2 c=0+(0.5)*1 | conv2 5x5:
    # r=6+4*2=14 j=2 c=0.5+2*2=4.5 | pool 2/2: r=14+1*2=16 j=4 c=4.5+0.5*2=5.5
    expected = {
        "conv1": ((5, 5), (1, 1), (0, 0), (6, 28, 28)),
        "relu1": ((5, 5), (1, 1), (0, 0), (6, 28, 28)),
        "pool1": ((6, 6), (2, 2), (0.5, 0.5), (6, 14, 14)),
        "conv2": ((14, 14), (2, 2), (4.5, 4.5), (16, 10, 10)),
        "relu2": ((14, 14), (2, 2), (4.5, 4.5), (16, 10, 10)),
        "pool2": ((16, 16), (4, 4), (5.5, 5.5), (16, 5, 5)),
    }
    assert list(layers) == list(expected)  # graph order, and only spatial layers
    for name, (size, jump, start, shape) in expected.items():
        assert layers[name].receptive_field == ReceptiveField(size, jump, start), name
        assert layers[name].output_shape == shape


def _conv(
    name: str, inp: str, cin: int, cout: int, **attrs: object
) -> tuple[onnx.NodeProto, onnx.TensorProto]:
    k = attrs.pop("k")
    weight = numpy_helper.from_array(np.zeros((cout, cin, k, k), np.float32), f"{name}.w")
    return helper.make_node("Conv", [inp, f"{name}.w"], [name], name=name, **attrs), weight


def toy_net() -> onnx.ModelProto:
    """conv a (3x3, stride 2, pad 1) -> conv b (3x3, dilation 2, pad 2) -> pool (2x2/2)
    -> conv c (SAME_UPPER 3x3 stride 2) + a 1x1 stride-4 skip from the input -> add."""
    a, wa = _conv("a", "x", 1, 2, k=3, strides=[2, 2], pads=[1, 1, 1, 1])
    b, wb = _conv("b", "a", 2, 2, k=3, dilations=[2, 2], pads=[2, 2, 2, 2])
    pool = helper.make_node("MaxPool", ["b"], ["p"], name="p", kernel_shape=[2, 2], strides=[2, 2])
    c, wc = _conv("c", "p", 2, 2, k=3, strides=[2, 2], auto_pad="SAME_UPPER")
    skip, ws = _conv("skip", "x", 1, 2, k=1, strides=[16, 16])
    add = helper.make_node("Add", ["c", "skip"], ["sum"], name="sum")
    graph = helper.make_graph(
        [a, b, pool, c, skip, add],
        "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 32, 32])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, [1, 2, 4, 4])],
        initializer=[wa, wb, wc, ws],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_strided_dilated_toy_net_by_hand() -> None:
    layers = {layer.name: layer for layer in describe_layers(toy_net())}
    # a: k=3 s=2 p=1 -> r=3, j=2, c=0+(1-1)*1=0
    assert layers["a"].receptive_field == ReceptiveField((3, 3), (2, 2), (0, 0))
    # b: dilation 2 -> k'=5, p=2: r=3+4*2=11, j=2, c=0+(2-2)*2=0
    assert layers["b"].receptive_field == ReceptiveField((11, 11), (2, 2), (0, 0))
    # p: k=2 s=2 p=0: r=11+1*2=13, j=4, c=0+0.5*2=1
    assert layers["p"].receptive_field == ReceptiveField((13, 13), (4, 4), (1, 1))
    # c: SAME_UPPER on 8 px with k=3 s=2: total pad 1, begin 0: r=13+2*4=21, j=8, c=1+1*4=5
    assert layers["c"].receptive_field == ReceptiveField((21, 21), (8, 8), (5, 5))
    assert layers["c"].output_shape == (2, 4, 4)
    # skip: 1x1 stride 16: r=1, j=16, c=0; the sum spans both: [5-10, 5+10] U [0, 0]
    assert layers["skip"].receptive_field == ReceptiveField((1, 1), (16, 16), (0, 0))
    union = layers["sum"].receptive_field
    assert union is not None and union.size == (21, 21) and union.start == (5, 5)


@pytest.mark.parametrize("name", ["resnet-fashion", "mobilenetv2-imagenet"])
def test_fields_grow_with_depth_and_cover_the_input_at_global_pooling(name: str) -> None:
    layers = describe_layers(onnx.load(str(MODELS / name / "1" / "model.onnx")))
    sizes = [layer.receptive_field.size[0] for layer in layers if layer.receptive_field]
    assert len(sizes) == len(layers)  # every op of these nets is understood
    assert sizes[-1] == max(sizes) > sizes[0]  # shortcut branches may be narrower
    assert layers[-1].op_type == "GlobalAveragePool" and layers[-1].output_shape[1:] == (1, 1)
    side = 28 if "fashion" in name else 224
    assert layers[-1].receptive_field is not None
    assert layers[-1].receptive_field.size[0] >= side


def _qdq(tensor: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """tensor -> QuantizeLinear -> DequantizeLinear, as ONNX Runtime's quantizer writes it."""
    scale = numpy_helper.from_array(np.array(0.05, np.float32), f"{tensor}_scale")
    zero = numpy_helper.from_array(np.array(128, np.uint8), f"{tensor}_zero_point")
    q = helper.make_node(
        "QuantizeLinear",
        [tensor, scale.name, zero.name],
        [f"{tensor}_QuantizeLinear_Output"],
        name=f"{tensor}_QuantizeLinear",
    )
    dq = helper.make_node(
        "DequantizeLinear",
        [q.output[0], scale.name, zero.name],
        [f"{tensor}_DequantizeLinear_Output"],
        name=f"{tensor}_DequantizeLinear",
    )
    return [q, dq], [scale, zero], dq.output[0]


def qdq_toy_net() -> onnx.ModelProto:
    """conv a (3x3, stride 2, pad 1) -> pool (2x2/2), in the QDQ format: a Q/DQ pair on every
    activation, and the conv's int8 weight through a DequantizeLinear (no kernel_shape
    attribute, so the kernel must come from the weight's shape)."""
    nodes, inits, x = _qdq("x")
    weight = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.int8), "a.w_quantized")
    w_scale = numpy_helper.from_array(np.array(0.01, np.float32), "a.w_scale")
    w_zero = numpy_helper.from_array(np.array(0, np.int8), "a.w_zero_point")
    nodes.append(
        helper.make_node("DequantizeLinear", ["a.w_quantized", "a.w_scale", "a.w_zero_point"],
                         ["a.w"], name="a.w_DequantizeLinear")
    )  # fmt: skip
    nodes.append(
        helper.make_node("Conv", [x, "a.w"], ["a"], name="a", strides=[2, 2], pads=[1, 1, 1, 1])
    )
    pair, more, a = _qdq("a")
    nodes += pair
    nodes.append(
        helper.make_node("MaxPool", [a], ["p"], name="p", kernel_shape=[2, 2], strides=[2, 2])
    )
    tail, rest, out = _qdq("p")
    graph = helper.make_graph(
        [*nodes, *tail],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 32, 32])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, 2, 8, 8])],
        initializer=[*inits, weight, w_scale, w_zero, *more, *rest],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_qdq_nodes_are_not_layers_and_keep_the_fields() -> None:
    layers = describe_layers(qdq_toy_net())
    # Without the filter: x_QuantizeLinear, x_DequantizeLinear, a, a_Q..., a_DQ..., p, p_Q...
    assert [(layer.name, layer.op_type) for layer in layers] == [("a", "Conv"), ("p", "MaxPool")]
    a, p = layers
    # The same arithmetic as the FP32 toy net's a and p (test_strided_dilated_toy_net_by_hand).
    assert a.receptive_field == ReceptiveField((3, 3), (2, 2), (0, 0))
    assert p.receptive_field == ReceptiveField((5, 5), (4, 4), (1, 1))
    # Feature maps come from the float tensors, not the uint8 ones between Q and DQ.
    assert (a.output, p.output) == ("a", "p") and a.output_shape == (2, 16, 16)
