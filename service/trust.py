"""How far to trust a prediction: calibrated probabilities and out-of-distribution scores.

Pure numpy (no ONNX Runtime, no torch, no HTTP), so that `cnnserve calibrate`, the trust
report and the service compute every number with the same code.

Calibration (Guo et al. 2017): one temperature T divides the logits before the softmax;
it is fitted at export by minimising the negative log-likelihood on the validation split.
The expected calibration error uses 15 equal-width confidence bins, right-closed
((0, 1/15], (1/15, 2/15], ...).

Out-of-distribution scores: higher means less like the training data.

- ``energy`` (Liu et al. 2020): ``-T * logsumexp(logits / T)``, from the logits alone.
- ``mahalanobis`` (Lee et al. 2018): per layer, the squared Mahalanobis distance of the
  image's features to the nearest class mean, under one covariance shared by the classes
  and fitted on the training split. A layer's features are its activation averaged over
  each cell of a g x g grid, (N, C, H, W) -> (N, C g^2) (g = 1: global average pooling,
  as Lee et al.; a finer grid keeps where things are, which tells digits from clothes),
  or the activation itself when already (N, D). A method over several layers scores the
  sum of the layers' distances, each standardised by its mean and standard deviation on
  the validation split.

A detector holds one or more methods, each with a threshold set on the validation split;
an image is flagged when any method is past its own threshold. Its single ``score`` is the
largest of the methods' scores rescaled so that the validation median maps to 0 and the
method's threshold to 1: ``flagged`` is exactly ``score > 1``.

The fitted statistics file (``models/<name>/<version>/ood.npz``, ``numpy.savez_compressed``,
readable with ``allow_pickle=False``). M methods, L layers, K classes; ``i`` is the layer's
position (0-based):

=========================  ========  =======  ===============================================
key                        shape     dtype    meaning
=========================  ========  =======  ===============================================
``format``                 ()        int64    1 (this layout)
``energy_temperature``     ()        float64  T of the energy score (1 unless stated)
``methods``                (M,)      str      ``energy`` or ``mahalanobis``, each at most once
``thresholds``             (M,)      float64  flagged when a method's score is above it
``centers``                (M,)      float64  each method's median on the validation split
``layer_names``            (L,)      str      the layers, as ModelInfo names them
``layer_outputs``          (L,)      str      the ONNX tensors to fetch (graph outputs added)
``layer_method``           (L,)      int64    the index in ``methods`` each layer feeds
``layer_center``           (L,)      float64  per layer: mean distance on the validation split
``layer_scale``            (L,)      float64  ... and its standard deviation (> 0)
``layer_grid``             (L,)      int64    g of the pooling grid (1 for (N, D) outputs)
``means_<i>``              (K, D_i)  float32  class means of layer i's features
``cholesky_<i>``           (P_i,)    float32  the lower-triangular Cholesky factor L of the
                                              shared covariance S = L L^T (ridge included),
                                              its lower triangle packed row by row
                                              (``numpy.tril_indices`` order), P_i =
                                              D_i (D_i + 1) / 2; a positive diagonal
=========================  ========  =======  ===============================================

``mahalanobis`` needs at least one layer; ``energy`` none. A method with one layer scores
its raw distance (its centre and scale are ignored).
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ECE_BINS",
    "FORMAT_VERSION",
    "METHODS",
    "MahalanobisLayer",
    "OodAssessment",
    "OodDetector",
    "OodMethod",
    "OodStatsError",
    "Reliability",
    "energy",
    "expected_calibration_error",
    "load_detector",
    "log_softmax",
    "max_softmax_score",
    "negative_log_likelihood",
    "pool_features",
    "reliability",
    "save_detector",
    "softmax",
]

ECE_BINS = 15
FORMAT_VERSION = 1
METHODS = ("energy", "mahalanobis")


class OodStatsError(ValueError):
    """An ood.npz file that cannot be used; the message says what is wrong."""


# --- calibration -------------------------------------------------------------------------


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise log-softmax of ``logits / temperature`` in float64."""
    z = np.array(logits, dtype=np.float64)
    if temperature != 1.0:
        z /= temperature
    z -= z.max(axis=-1, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return z


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64, stable for any logits.

    ``temperature=1`` gives the plain softmax; above 1 flattens, below 1 sharpens.
    """
    z = np.array(logits, dtype=np.float64)
    if temperature != 1.0:
        z /= temperature
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def negative_log_likelihood(
    logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0
) -> float:
    """Mean negative log-probability of the true class (natural log)."""
    logp = log_softmax(logits, temperature)
    return float(-logp[np.arange(len(labels)), labels].mean())


@dataclass(frozen=True)
class Reliability:
    """Per confidence bin: how many predictions, their mean confidence and their accuracy
    (NaN for an empty bin). ``edges`` has one more entry than the bins."""

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        filled = self.counts > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float((gaps * self.counts[filled]).sum() / self.counts.sum())


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> Reliability:
    """Reliability diagram data of top-1 predictions, ``bins`` equal-width right-closed bins."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, confidence, minlength=bins) / counts
        accuracy = np.bincount(index, correct.astype(np.float64), minlength=bins) / counts
    return Reliability(np.linspace(0.0, 1.0, bins + 1), counts, mean_confidence, accuracy)


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE (Guo et al. 2017): the count-weighted mean |accuracy - confidence| over bins."""
    return reliability(probabilities, labels, bins).ece


# --- scores --------------------------------------------------------------------------------


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The energy score ``-T logsumexp(logits / T)`` per row; higher = less familiar."""
    z = np.array(logits, dtype=np.float64)
    z /= temperature
    top = z.max(axis=-1)
    z -= top[:, None]
    return np.asarray(-temperature * (top + np.log(np.exp(z).sum(axis=-1))))


def max_softmax_score(logits: np.ndarray) -> np.ndarray:
    """The baseline of Hendrycks & Gimpel (2017) as a score: minus the top probability."""
    return np.asarray(-softmax(logits).max(axis=-1))


_POOLING: dict[tuple[int, int, int], np.ndarray] = {}


def _pooling_matrix(height: int, width: int, grid: int) -> np.ndarray:
    """(H*W, grid*grid): column (i, j) averages cell (i, j) of an adaptive grid, whose rows
    run from floor(i H / g) to ceil((i + 1) H / g) (and columns alike), as PyTorch's
    AdaptiveAvgPool2d cuts them. Built once per shape."""
    key = (height, width, grid)
    matrix = _POOLING.get(key)
    if matrix is None:
        matrix = np.zeros((height, width, grid, grid), np.float32)
        for i in range(grid):
            rows = slice(i * height // grid, -(-(i + 1) * height // grid))
            for j in range(grid):
                cols = slice(j * width // grid, -(-(j + 1) * width // grid))
                cell = matrix[rows, cols, i, j]
                cell[...] = 1.0 / cell.size
        matrix = _POOLING[key] = matrix.reshape(height * width, grid * grid)
    return matrix


def pool_features(activation: np.ndarray, grid: int = 1) -> np.ndarray:
    """A layer's output as (N, D) float32 features (the precision the model computes in).

    (N, C, H, W) is averaged over each cell of a ``grid`` x ``grid`` split of H and W
    (1: global average pooling), giving D = C * grid**2 features ordered channel first, as
    flattening AdaptiveAvgPool2d(grid) would. (N, D) is taken as it is (``grid`` must be 1).
    """
    a = np.asarray(activation, dtype=np.float32)
    if a.ndim == 4:
        n, c, h, w = a.shape
        if grid > min(h, w):
            raise ValueError(f"a {grid}x{grid} grid does not fit a {h}x{w} activation")
        if grid == 1:
            return a.mean(axis=(2, 3))
        pooled = a.reshape(n * c, h * w) @ _pooling_matrix(h, w, grid)
        return pooled.reshape(n, c * grid * grid)
    if grid != 1:
        raise ValueError(f"grid pooling needs an (N, C, H, W) activation, not {a.shape}")
    return a.reshape(len(a), -1)


class MahalanobisLayer:
    """Gaussian class models of one layer's features; scores the distance to the nearest.

    ``cholesky`` is the lower-triangular factor L of the shared covariance S = L L^T. The
    means are whitened once at construction, so that scoring N images of D features and K
    classes costs one (N, D) x (D, D) product (float32) and one (N, D) x (D, K) product:
    about 0.3 ms for (32, 512) features and 10 classes on one core.
    """

    def __init__(
        self,
        name: str,
        output: str,
        means: np.ndarray,
        cholesky: np.ndarray,
        *,
        grid: int = 1,
        center: float = 0.0,
        scale: float = 1.0,
    ) -> None:
        self.name, self.output, self.grid = name, output, int(grid)
        self.means, self.cholesky = means, cholesky
        self.center, self.scale = float(center), float(scale)
        factor = np.tril(np.asarray(cholesky, dtype=np.float64))
        if not (np.diag(factor) > 0).all():
            raise np.linalg.LinAlgError("the Cholesky factor needs a positive diagonal")
        # x^T S^-1 x = |L^-1 x|^2: rows of features are multiplied by (L^-1)^T, in float32
        # (half the time of float64; features come from the model in float32 anyway) after
        # moving the origin to the centre of the class means, which keeps the numbers small.
        whiten = np.linalg.inv(factor).T
        means64 = np.asarray(means, dtype=np.float64)
        origin = means64.mean(axis=0)
        white_means = (means64 - origin) @ whiten  # (K, D)
        self._origin = origin.astype(np.float32)
        self._whiten = np.ascontiguousarray(whiten, dtype=np.float32)
        self._white_means_t = np.ascontiguousarray(white_means.T)  # (D, K)
        self._mean_norms = (white_means**2).sum(axis=1)  # (K,)

    @classmethod
    def from_covariance(
        cls,
        name: str,
        output: str,
        means: np.ndarray,
        covariance: np.ndarray,
        *,
        grid: int = 1,
    ) -> MahalanobisLayer:
        """Factor a fitted covariance, keeping means and factor in float32 as the statistics
        file stores them, so that what is measured at fit time is what is served."""
        factor = np.linalg.cholesky(np.asarray(covariance, dtype=np.float64))
        return cls(
            name,
            output,
            np.asarray(means, np.float32),
            np.tril(factor).astype(np.float32),
            grid=grid,
        )

    @property
    def dimensions(self) -> int:
        return int(self._whiten.shape[0])

    @property
    def covariance(self) -> np.ndarray:
        factor = np.asarray(self.cholesky, dtype=np.float64)
        return np.asarray(factor @ factor.T)

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distances (N, K) of (N, D) features to each class mean."""
        x = np.asarray(features, dtype=np.float32) - self._origin
        z = (x @ self._whiten).astype(np.float64)
        d = (z * z).sum(axis=1)[:, None] - 2.0 * (z @ self._white_means_t)
        d += self._mean_norms
        return np.maximum(d, 0.0, out=d)

    def score(self, activation: np.ndarray) -> np.ndarray:
        """Distance to the nearest class mean (N,) of a layer's output (see pool_features)."""
        features = pool_features(activation, self.grid)
        if features.shape[1] != self.dimensions:
            raise ValueError(
                f"layer {self.name}: {features.shape[1]} features, the statistics have "
                f"{self.dimensions}"
            )
        return np.asarray(self.distances(features).min(axis=1))

    def with_standardisation(self, center: float, scale: float) -> MahalanobisLayer:
        """The same layer, standardised by ``center`` and ``scale`` inside a method."""
        return MahalanobisLayer(
            self.name,
            self.output,
            self.means,
            self.cholesky,
            grid=self.grid,
            center=center,
            scale=scale,
        )


@dataclass(frozen=True)
class OodMethod:
    """One scoring method with its threshold (None: not fitted, never flags)."""

    name: str  # "energy" or "mahalanobis"
    threshold: float | None = None
    center: float = 0.0  # the validation median, for the combined score
    layers: tuple[MahalanobisLayer, ...] = ()

    def scores(
        self, logits: np.ndarray, features: Mapping[str, np.ndarray], temperature: float
    ) -> np.ndarray:
        if self.name == "energy":
            return energy(logits, temperature)
        if len(self.layers) == 1:
            return self.layers[0].score(features[self.layers[0].output])
        total = np.zeros(len(logits))
        for layer in self.layers:
            total += (layer.score(features[layer.output]) - layer.center) / layer.scale
        return total


@dataclass(frozen=True)
class OodAssessment:
    """The verdicts on a batch: per image a combined score, whether it is flagged and which
    methods fired, plus every method's own score."""

    method: str  # the methods joined with "+", e.g. "energy+mahalanobis"
    score: np.ndarray  # (N,) combined score, or the one method's raw score when unfitted
    threshold: float | None  # 1.0 for the combined score; None when nothing was fitted
    flagged: np.ndarray  # (N,) bool
    fired: list[list[str]]  # per image, the methods past their own thresholds
    method_scores: dict[str, np.ndarray]

    def verdict(self, index: int) -> dict[str, Any]:
        """The response's ``ood`` object for image ``index`` (Python numbers)."""
        return {
            "score": float(self.score[index]),
            "threshold": self.threshold,
            "flagged": bool(self.flagged[index]),
            "method": self.method,
            "fired": list(self.fired[index]),
        }


@dataclass(frozen=True)
class OodDetector:
    """The fitted OOD methods of one model version; see the module docstring."""

    methods: tuple[OodMethod, ...]
    energy_temperature: float = 1.0

    @classmethod
    def energy_only(cls, temperature: float = 1.0) -> OodDetector:
        """Energy with no threshold: what a model without fitted statistics gets."""
        return cls((OodMethod("energy"),), temperature)

    @property
    def layers(self) -> tuple[MahalanobisLayer, ...]:
        return tuple(layer for method in self.methods for layer in method.layers)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The ONNX tensors the methods need beside the logits (add them as graph outputs)."""
        return tuple(dict.fromkeys(layer.output for layer in self.layers))

    @property
    def name(self) -> str:
        return "+".join(method.name for method in self.methods)

    @property
    def fitted(self) -> bool:
        return all(method.threshold is not None for method in self.methods)

    def method_scores(
        self, logits: np.ndarray, features: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Every method's raw score (N,) for a batch of logits and the layers' outputs."""
        given = features or {}
        missing = [name for name in self.outputs if name not in given]
        if missing:
            raise KeyError(f"the OOD statistics need these layer outputs: {', '.join(missing)}")
        return {m.name: m.scores(logits, given, self.energy_temperature) for m in self.methods}

    def assess(
        self, logits: np.ndarray, features: Mapping[str, np.ndarray] | None = None
    ) -> OodAssessment:
        """Score a batch and decide: flagged when any method is past its own threshold."""
        scores = self.method_scores(logits, features)
        if not self.fitted:
            first = self.methods[0]
            n = len(scores[first.name])
            nothing: list[list[str]] = [[] for _ in range(n)]
            return OodAssessment(
                self.name, scores[first.name], None, np.zeros(n, bool), nothing, scores
            )
        limits = [(m.name, m.center, float(m.threshold or 0.0)) for m in self.methods]
        past = np.stack([scores[name] > t for name, _, t in limits], axis=1)
        rescaled = np.stack([(scores[name] - c) / (t - c) for name, c, t in limits], axis=1)
        names = [m.name for m in self.methods]
        fired = [[n for n, hit in zip(names, row, strict=True) if hit] for row in past.tolist()]
        return OodAssessment(
            self.name, rescaled.max(axis=1), 1.0, np.asarray(past.any(axis=1)), fired, scores
        )


# --- the statistics file -------------------------------------------------------------------


def save_detector(path: Path, detector: OodDetector) -> None:
    """Write a fitted detector as the ood.npz the module docstring describes."""
    if not detector.fitted:
        raise ValueError("only a detector with a threshold for every method can be saved")
    layers = detector.layers
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT_VERSION, np.int64),
        "energy_temperature": np.array(detector.energy_temperature, np.float64),
        "methods": np.array([m.name for m in detector.methods], dtype=str),
        "thresholds": np.array([m.threshold for m in detector.methods], np.float64),
        "centers": np.array([m.center for m in detector.methods], np.float64),
        "layer_names": np.array([layer.name for layer in layers], dtype=str).reshape(-1),
        "layer_outputs": np.array([layer.output for layer in layers], dtype=str).reshape(-1),
        "layer_method": np.array(
            [j for j, m in enumerate(detector.methods) for _ in m.layers], np.int64
        ),
        "layer_center": np.array([layer.center for layer in layers], np.float64),
        "layer_scale": np.array([layer.scale for layer in layers], np.float64),
        "layer_grid": np.array([layer.grid for layer in layers], np.int64),
    }
    for i, layer in enumerate(layers):
        arrays[f"means_{i}"] = np.asarray(layer.means, np.float32)
        rows, cols = np.tril_indices(layer.dimensions)
        arrays[f"cholesky_{i}"] = np.asarray(layer.cholesky, np.float32)[rows, cols]
    with path.open("wb") as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]


def _array(
    data: Mapping[str, np.ndarray], key: str, kind: str, shape: Sequence[int | None]
) -> np.ndarray:
    if key not in data:
        raise OodStatsError(f"{key!r} is missing")
    a = data[key]
    if a.dtype.kind != kind:
        raise OodStatsError(f"{key!r} has dtype {a.dtype}, expected kind {kind!r}")
    if a.ndim != len(shape) or any(
        s is not None and s != d for s, d in zip(shape, a.shape, strict=True)
    ):
        wanted = tuple("*" if s is None else s for s in shape)
        raise OodStatsError(f"{key!r} has shape {a.shape}, expected {wanted}")
    if kind == "f" and not np.isfinite(a).all():
        raise OodStatsError(f"{key!r} has values that are not finite")
    return a


def _parse(data: Mapping[str, np.ndarray]) -> OodDetector:
    version = _array(data, "format", "i", ())
    if int(version) != FORMAT_VERSION:
        raise OodStatsError(f"format {int(version)}; this version reads {FORMAT_VERSION}")
    temperature = float(_array(data, "energy_temperature", "f", ()))
    if temperature <= 0:
        raise OodStatsError(f"energy_temperature must be positive, not {temperature}")
    names = [str(n) for n in _array(data, "methods", "U", (None,))]
    m = len(names)
    if m == 0 or len(set(names)) != m or not set(names) <= set(METHODS):
        raise OodStatsError(f"methods {names}: each of {', '.join(METHODS)} at most once")
    thresholds = _array(data, "thresholds", "f", (m,))
    centers = _array(data, "centers", "f", (m,))
    if (thresholds <= centers).any():
        raise OodStatsError("every threshold must lie above its method's validation median")
    layer_names = _array(data, "layer_names", "U", (None,))
    n_layers = len(layer_names)
    outputs = _array(data, "layer_outputs", "U", (n_layers,))
    owner = _array(data, "layer_method", "i", (n_layers,))
    center = _array(data, "layer_center", "f", (n_layers,))
    scale = _array(data, "layer_scale", "f", (n_layers,))
    grid = _array(data, "layer_grid", "i", (n_layers,))
    if ((owner < 0) | (owner >= m)).any():
        raise OodStatsError(f"layer_method must index the {m} methods")
    if (scale <= 0).any():
        raise OodStatsError("layer_scale must be positive")
    if (grid < 1).any():
        raise OodStatsError("layer_grid must be at least 1")
    classes: int | None = None
    layers: list[list[MahalanobisLayer]] = [[] for _ in names]
    for i in range(n_layers):
        means = _array(data, f"means_{i}", "f", (classes, None))
        classes, dims = means.shape
        packed = _array(data, f"cholesky_{i}", "f", (dims * (dims + 1) // 2,))
        factor = np.zeros((dims, dims), packed.dtype)
        factor[np.tril_indices(dims)] = packed
        if not (np.diag(factor) > 0).all():
            raise OodStatsError(f"'cholesky_{i}' has a diagonal entry that is not positive")
        layer = MahalanobisLayer(
            str(layer_names[i]),
            str(outputs[i]),
            means,
            factor,
            grid=int(grid[i]),
            center=float(center[i]),
            scale=float(scale[i]),
        )
        layers[int(owner[i])].append(layer)
    methods = []
    for j, name in enumerate(names):
        if (name == "mahalanobis") != bool(layers[j]):
            raise OodStatsError(f"method {name} has {len(layers[j])} layers")
        methods.append(OodMethod(name, float(thresholds[j]), float(centers[j]), tuple(layers[j])))
    return OodDetector(tuple(methods), temperature)


def load_detector(path: Path) -> OodDetector:
    """Read and validate an ood.npz; raises OodStatsError naming the file and the problem."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return _parse({key: data[key] for key in data.files})
    except OodStatsError as exc:
        raise OodStatsError(f"{path}: {exc}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise OodStatsError(f"{path} is not a readable .npz file: {exc}") from None
