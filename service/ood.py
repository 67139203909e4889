"""How far to trust a prediction: out-of-distribution scores, from the same forward pass.

Pure numpy, like ``service.calibration``; ``service.ood_file`` reads and writes the fitted
statistics (``ood.npz``).

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
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.calibration import softmax

__all__ = [
    "METHODS",
    "MahalanobisLayer",
    "OodAssessment",
    "OodDetector",
    "OodMethod",
    "energy",
    "max_softmax_score",
    "pool_features",
]

METHODS = ("energy", "mahalanobis")


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
        # One product, also for grid 1: a fraction of numpy's mean's cost on small arrays.
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
    past: np.ndarray  # (N, methods) bool: ``fired`` as an array, methods in detector order

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

    @functools.cached_property
    def _limits(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per method, in order: threshold, validation median, threshold - median."""
        thresholds = np.array([float(m.threshold or 0.0) for m in self.methods])
        centers = np.array([m.center for m in self.methods], dtype=np.float64)
        return thresholds, centers, thresholds - centers

    def judge(
        self, logits: np.ndarray, features: Mapping[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """A batch's combined score (N,), which methods are past their thresholds
        (N, methods) and every method's raw score: the decision, in a few array
        operations whatever the batch size (the serving path calls it once per batch)."""
        scores = self.method_scores(logits, features)
        columns = [scores[m.name] for m in self.methods]
        if not self.fitted:
            return columns[0], np.zeros((len(columns[0]), len(columns)), bool), scores
        thresholds, centers, spans = self._limits
        matrix = np.stack(columns, axis=1)
        return ((matrix - centers) / spans).max(axis=1), matrix > thresholds, scores

    def assess(
        self, logits: np.ndarray, features: Mapping[str, np.ndarray] | None = None
    ) -> OodAssessment:
        """Score a batch and decide: flagged when any method is past its own threshold."""
        score, past, scores = self.judge(logits, features)
        names = [m.name for m in self.methods]
        fired = [[n for n, hit in zip(names, row, strict=True) if hit] for row in past.tolist()]
        threshold = 1.0 if self.fitted else None
        return OodAssessment(
            self.name, score, threshold, np.asarray(past.any(axis=1)), fired, scores, past
        )
