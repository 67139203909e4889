"""Layer features from ONNX Runtime, by graph augmentation, for fitting and measuring.

The committed ONNX file is loaded, the chosen layers' tensors are added as graph outputs
(as service.runtime does for feature maps) and one forward pass returns the logits and
every layer's features, pooled by service.ood.pool_features: the same numbers the
service computes when it scores an image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

from service.graph import describe_layers
from service.model_card import InputSpec
from service.ood import pool_features
from service.preprocessing import to_tensor

__all__ = [
    "Candidate",
    "FeatureExtractor",
    "candidates",
    "images_to_tensor",
    "penultimate",
    "progress",
]

# Nonlinearities and pooling: the activations a block hands on (a Conv, a BatchNorm or a
# residual Add before its ReLU is an intermediate result).
_ACTIVATION_OPS = {
    "Relu",
    "Clip",
    "LeakyRelu",
    "PRelu",
    "Elu",
    "Selu",
    "HardSwish",
    "Sigmoid",
    "Tanh",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
}
_DENSE_OPS = {"Gemm", "MatMul"}
GRIDS = (1, 2, 3)
MAX_DIMS = 512  # features per layer: the covariance factor stays near 0.5 MiB in float32


@dataclass(frozen=True)
class Candidate:
    """One way to read a layer's features: its tensor, pooled on a grid x grid grid."""

    name: str  # as ModelInfo lists the layer (the node's name)
    output: str  # the tensor to fetch
    grid: int
    dims: int

    @property
    def key(self) -> str:
        return self.name if self.grid == 1 else f"{self.name}@{self.grid}x{self.grid}"


def _dense_inputs(model: onnx.ModelProto) -> list[Candidate]:
    """The 2-D input of every Gemm or MatMul, in graph order. One that only flattens a
    (C, 1, 1) map (global pooling) is named after, and read from, that map."""
    graph = onnx.shape_inference.infer_shapes(model).graph
    producers = {out: node for node in graph.node for out in node.output}
    widths: dict[str, int] = {}
    for info in [*graph.value_info, *graph.output]:
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 2 and dims[1].HasField("dim_value"):
            widths[info.name] = dims[1].dim_value
    maps = {layer.output: layer for layer in describe_layers(model)}
    found = []
    for node in graph.node:
        if node.op_type not in _DENSE_OPS or node.input[0] not in widths:
            continue
        tensor = node.input[0]
        producer = producers.get(tensor)
        source = maps.get(producer.input[0]) if producer is not None else None
        if source is not None and source.output_shape[1:] == (1, 1):
            found.append(Candidate(source.name, source.output, 1, widths[tensor]))
        else:
            name = producer.name if producer is not None and producer.name else tensor
            found.append(Candidate(name, tensor, 1, widths[tensor]))
    return found


def candidates(model: onnx.ModelProto, *, max_dims: int = MAX_DIMS) -> list[Candidate]:
    """The features a detector may be built on, in graph order: every activation and
    pooling layer on grids of 1, 2 and 3 cells a side, and every 2-D input of a fully
    connected layer, each with at most ``max_dims`` features."""
    found: list[Candidate] = []
    for layer in describe_layers(model):
        if layer.op_type not in _ACTIVATION_OPS:
            continue
        channels, height, width = layer.output_shape
        if channels is None or height is None or width is None:
            continue
        for grid in GRIDS:
            dims = channels * grid * grid
            if grid <= min(height, width) and dims <= max_dims:
                found.append(Candidate(layer.name, layer.output, grid, dims))
    for dense in _dense_inputs(model):
        if dense.dims <= max_dims and dense not in found:
            found.append(dense)
    return found


def penultimate(model: onnx.ModelProto) -> Candidate | None:
    """The input of the last fully connected layer: Lee et al.'s single-layer choice."""
    dense = _dense_inputs(model)
    return dense[-1] if dense else None


def images_to_tensor(images: Iterable[Image.Image] | np.ndarray, spec: InputSpec) -> np.ndarray:
    """Images (PIL, or an (N, H, W) uint8 array of grey images) as the model's input batch,
    preprocessed by the service's own code."""
    pictures = [Image.fromarray(a) for a in images] if isinstance(images, np.ndarray) else images
    pictures = list(pictures)
    batch = np.empty((len(pictures), spec.channels, *spec.size), np.float32)
    for i, picture in enumerate(pictures):
        to_tensor(picture, spec, out=batch[i])
    return batch


def progress(total: int, description: str) -> Callable[[int], None]:
    """A progress bar when tqdm is installed (the train extra), else nothing."""
    try:
        from tqdm import tqdm
    except ImportError:
        return lambda _: None
    bar = tqdm(total=total, desc=description, unit="img", leave=False)

    def advance(n: int) -> None:
        bar.update(n)
        if bar.n >= total:
            bar.close()

    return advance


class FeatureExtractor:
    """One ONNX Runtime session returning the logits and the candidates' tensors."""

    def __init__(self, path: Path, features: Iterable[Candidate], *, batch_size: int = 256):
        self.features = list(features)
        proto = onnx.load(str(path))
        present = {o.name for o in proto.graph.output}
        self.logits_name = proto.graph.output[0].name
        self.outputs = list(dict.fromkeys(c.output for c in self.features))
        for name in self.outputs:
            if name not in present:
                proto.graph.output.append(
                    onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                )
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.batch_size = batch_size

    def batches(
        self, images: np.ndarray, description: str = ""
    ) -> Iterator[tuple[slice, np.ndarray, dict[str, np.ndarray]]]:
        """Per batch of an (N, C, H, W) input: its rows, the logits and the raw tensors
        of the candidates' layers, by tensor name."""
        advance = progress(len(images), description) if description else (lambda _: None)
        for start in range(0, len(images), self.batch_size):
            rows = slice(start, start + self.batch_size)
            arrays = self.session.run(
                [self.logits_name, *self.outputs], {self.input_name: images[rows]}
            )
            advance(len(arrays[0]))
            yield rows, arrays[0], dict(zip(self.outputs, arrays[1:], strict=True))

    def pooled(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every candidate's features (float32, by ``Candidate.key``) from a batch's tensors."""
        return {c.key: pool_features(tensors[c.output], c.grid) for c in self.features}

    def run(
        self, images: np.ndarray, description: str = ""
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits (N, K) and every candidate's features (N, D) for a whole input."""
        logits: list[np.ndarray] = []
        features: dict[str, list[np.ndarray]] = {c.key: [] for c in self.features}
        for _, batch_logits, tensors in self.batches(images, description):
            logits.append(batch_logits)
            for key, value in self.pooled(tensors).items():
                features[key].append(value)
        return np.concatenate(logits), {k: np.concatenate(v) for k, v in features.items()}
