"""The measures of ``make explain-report``: deletion curves, rank correlation, randomised weights.

- Deletion (Petsiuk et al. 2018, the RISE paper): the model-input pixels are removed in an
  order, ``STEPS`` equal steps from none to all (5 % at a time: 21 points), and the target's
  probability is integrated over the fraction removed (trapezoid rule). A pixel is removed
  by setting it, in every channel, to the value occlusion fills with
  (``service.explain.fill_values``: 0 in normalised input, the training mean). A saliency
  order removes the most important pixels first (ties in random order); a good map makes the
  probability fall fast, so its area is small, and smaller than a random order's. Two random
  baselines: a random order of the pixels (scattered pixels: the issue's), and the order of
  a ``shuffled`` map (the method's own cells, values in random places: contiguous regions
  like the method's, in random order; Samek et al. 2017 compare region orders that way).
- Spearman's rank correlation of two maps (average ranks for ties; numpy only), for the model
  randomisation check of Adebayo et al. 2018.
- ``reinitialised``: a copy of an ONNX graph with every Conv, Gemm and MatMul weight drawn
  afresh, Kaiming-normal (He et al. 2015: normal, mean 0, std sqrt(2 / fan_in)) from a seeded
  generator, and their biases (the third input of Conv and Gemm, the constant operand of an
  Add right after a MatMul) set to zero. Nothing else changes (the graphs here have their
  batch norms folded into the convolutions, so those are redrawn too).
- ``log_odds``: a scorer for occlusion that does not saturate (the report's ceiling study).

And the results they make: per image (``ImageResult``) and per model (``ModelResult``, its
``summary`` of each method against the targets of issue 16).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from service.explain import Heatmap, fill_values
from service.model_card import InputSpec

__all__ = [
    "BEATS_RANDOM_TARGET",
    "FRACTIONS",
    "SPEARMAN_TARGET",
    "STEPS",
    "ImageResult",
    "ModelResult",
    "auc",
    "ceiling_summary",
    "deletion_curves",
    "log_odds",
    "random_orders",
    "reinitialised",
    "saliency_order",
    "shuffled",
    "spearman",
]

STEPS = 20  # 5 % of the pixels at a time
BEATS_RANDOM_TARGET, SPEARMAN_TARGET = 0.80, 0.5
FRACTIONS = np.linspace(0.0, 1.0, STEPS + 1)

Scores = Callable[[np.ndarray], np.ndarray]  # a batch of inputs -> probabilities (N, classes)


def saliency_order(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat pixel indices, most salient first; equal values (a map's zeros) in random order
    rather than in raster order, which would remove the top rows first."""
    flat = pixels.ravel()
    return np.lexsort((rng.random(flat.size), -flat))


def random_orders(pixels: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.permutation(pixels) for _ in range(count)]


def _removed(input_: np.ndarray, spec: InputSpec, order: np.ndarray) -> np.ndarray:
    """The ``STEPS + 1`` inputs of one deletion curve: input_ with the first 0 %, 5 %, ...,
    100 % of ``order``'s pixels set to the fill value, in every channel."""
    height, width = spec.size
    rank = np.empty(order.size, np.int64)
    rank[order] = np.arange(order.size)
    counts = np.round(FRACTIONS * order.size).astype(np.int64)
    masks = (rank.reshape(height, width)[None] < counts[:, None, None])[:, :, :, None]
    fill = fill_values(spec, input_)  # (C,)
    if spec.layout == "NCHW":
        masks = masks.transpose(0, 3, 1, 2)
        fill = fill.reshape(-1, 1, 1)
    return np.where(masks, fill, input_[None]).astype(input_.dtype)


def deletion_curves(
    scores: Scores, input_: np.ndarray, spec: InputSpec, target: int, orders: list[np.ndarray]
) -> np.ndarray:
    """(len(orders), STEPS + 1): the target's probability as each order removes pixels.
    Every curve starts at the input as it is and ends at an input of fill values: those two
    are scored once."""
    first = _removed(input_, spec, orders[0])
    inner = [_removed(input_, spec, order)[1:-1] for order in orders[1:]]
    probabilities = scores(np.concatenate([first, *inner]))[:, target]
    start, end = probabilities[0], probabilities[STEPS]
    middles = np.concatenate([probabilities[1:STEPS], probabilities[STEPS + 1 :]])
    curves = np.empty((len(orders), STEPS + 1))
    curves[:, 0], curves[:, -1] = start, end
    curves[:, 1:-1] = middles.reshape(len(orders), STEPS - 1)
    return curves


def shuffled(heatmap: Heatmap, rng: np.random.Generator) -> Heatmap:
    """The heatmap's values in random cells of its grid: a map with the same cells and
    smoothness that knows nothing about the input."""
    values = rng.permutation(heatmap.values.ravel()).reshape(heatmap.values.shape)
    return Heatmap(values, heatmap.grid)


def auc(curves: np.ndarray) -> np.ndarray:
    """Area under each curve (last axis) over the fraction removed, by the trapezoid rule."""
    widths = np.diff(FRACTIONS)
    return ((curves[..., 1:] + curves[..., :-1]) / 2 * widths).sum(axis=-1)


def log_odds(
    outputs: np.ndarray, kind: str, target: int, *, temperature: float = 1.0
) -> np.ndarray:
    """(N, classes), zero but for the target's column: its log-odds, log p / (1 - p) of
    the probabilities at ``temperature``, from the logits (or log-probabilities) so that it
    does not saturate where the probability rounds to 1."""
    z = outputs.astype(np.float64) if kind == "logits" else np.log(np.maximum(outputs, 1e-300))
    z = z / temperature
    others = np.delete(z, target, axis=1)
    top = others.max(axis=1, keepdims=True)
    rest = top[:, 0] + np.log(np.exp(others - top).sum(axis=1))
    odds = np.zeros_like(z)
    odds[:, target] = z[:, target] - rest
    return odds


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span."""
    _, inverse, counts = np.unique(values.ravel(), return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts
    return (first + (counts + 1) / 2)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps of the same shape; NaN when one is constant
    (a map with no ranking correlates with nothing)."""
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _fan_in(node: onnx.NodeProto, shape: tuple[int, ...]) -> int:
    if node.op_type == "Conv":  # (out, in / groups, kh, kw)
        return int(np.prod(shape[1:]))
    trans_b = any(a.name == "transB" and a.i for a in node.attribute)
    if node.op_type == "Gemm" and trans_b:  # (out, in)
        return shape[1]
    return shape[0]  # Gemm without transB, MatMul: (in, out)


def reinitialised(model: onnx.ModelProto, *, seed: int) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with every Conv, Gemm and MatMul weight Kaiming-normal and their
    biases zero, and how many weight tensors were redrawn. Raises ValueError for a weight
    that is not an initializer (a quantised graph): it would silently stay trained."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    rng = np.random.default_rng(seed)
    redrawn = 0

    def replace(name: str, values: np.ndarray) -> None:
        tensor = initializers[name]
        tensor.CopyFrom(numpy_helper.from_array(values.astype(np.float32), name))

    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        weight = node.input[1]
        if weight not in initializers:
            if node.op_type == "MatMul" and node.input[0] in initializers:
                continue  # a constant times an activation: not a layer's weight
            raise ValueError(f"{node.op_type} {node.name!r}: weight {weight!r} is no initializer")
        shape = tuple(initializers[weight].dims)
        std = np.sqrt(2.0 / _fan_in(node, shape))
        replace(weight, rng.normal(0.0, std, shape))
        redrawn += 1
        biases = [node.input[2]] if len(node.input) > 2 and node.input[2] else []
        if node.op_type == "MatMul":
            adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
            biases = [i for n in adds for i in n.input if i in initializers]
        for bias in biases:
            replace(bias, np.zeros(tuple(initializers[bias].dims)))
    return copy, redrawn


# -- results ---------------------------------------------------------------------------


@dataclass
class ImageResult:
    name: str
    input: np.ndarray  # as the model takes it
    target: int  # the model's top class
    label: str
    probability: float
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # method -> (H, W) in [0, 1]
    # method, "random" (pixel orders), "shuffled <method>" -> (21,), means over the orders
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    auc: dict[str, float] = field(default_factory=dict)  # the same keys
    spearman: dict[str, float] = field(default_factory=dict)  # method -> vs random weights
    random_maps: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class ModelResult:
    model: str
    spec: InputSpec
    methods: list[str]
    images: list[ImageResult]
    redrawn: int  # weight tensors re-initialised in the randomised copy
    truth: list[int] = field(default_factory=list)  # dataset labels, where known
    seconds: float = 0.0

    def summary(self, method: str) -> dict[str, Any]:
        aucs = np.array([r.auc[method] for r in self.images])
        randoms = np.array([r.auc["random"] for r in self.images])
        shuffles = np.array([r.auc[f"shuffled {method}"] for r in self.images])
        rho = np.array([r.spearman[method] for r in self.images if method in r.spearman])
        defined = rho[~np.isnan(rho)]
        beats = float(np.mean(aucs < randoms))
        some = bool(defined.size)
        return {
            "images": len(aucs),
            "auc": float(aucs.mean()),
            "random_auc": float(randoms.mean()),
            "beats_random": beats,
            "deletion_met": beats >= BEATS_RANDOM_TARGET,
            "shuffled_auc": float(shuffles.mean()),
            "beats_shuffled": float(np.mean(aucs < shuffles)),
            "flat_maps": sum(int(np.ptp(r.maps[method]) == 0) for r in self.images),
            "spearman_images": len(rho),
            "spearman_undefined": int(np.isnan(rho).sum()),
            "spearman_mean": float(defined.mean()) if some else None,
            "spearman_quartiles": np.percentile(defined, [25, 50, 75]).tolist() if some else [],
            "spearman_below_target": float(np.mean(defined < SPEARMAN_TARGET)) if some else None,
            "randomisation_met": some and float(defined.mean()) < SPEARMAN_TARGET,
        }


def ceiling_summary(result: ModelResult) -> dict[str, dict[str, Any]]:
    """Occlusion as served and as the ceiling study varies it, on the images studied."""
    studied = [i for i in result.images if any(k.startswith("occlusion, ") for k in i.auc)]
    if not studied:
        return {}
    keys = ["occlusion", *(k for k in studied[0].auc if k.startswith("occlusion, "))]
    randoms = np.array([i.auc["random"] for i in studied])
    summary = {}
    for key in keys:
        aucs = np.array([i.auc[key] for i in studied])
        summary[key] = {
            "images": len(studied),
            "auc": float(aucs.mean()),
            "random_auc": float(randoms.mean()),
            "beats_random": float(np.mean(aucs < randoms)),
        }
    return summary
