"""Fitting the out-of-distribution statistics: class Gaussians, thresholds, standardisation.

Pure numpy. Only what is fitted lives here; how it is scored (and the file it is saved to)
is service.ood, the code the service runs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = [
    "ClassGaussians",
    "fit_class_gaussians",
    "thresholds_at_rate",
]

RIDGE = 1e-3  # times the mean variance, added to the covariance's diagonal


class ClassGaussians:
    """Class means and one shared covariance, accumulated batch by batch.

    Features are shifted by the first batch's mean before their products are summed, so
    that float64 sums of 55k images lose nothing to cancellation.
    """

    def __init__(self, classes: int, dims: int) -> None:
        self.classes, self.dims = classes, dims
        self._shift: np.ndarray | None = None
        self._counts = np.zeros(classes, np.int64)
        self._sums = np.zeros((classes, dims))
        self._scatter = np.zeros((dims, dims))

    def add(self, features: np.ndarray, labels: np.ndarray) -> None:
        x = np.asarray(features, dtype=np.float64)
        if self._shift is None:
            self._shift = x.mean(axis=0)
        x = x - self._shift
        onehot = np.zeros((len(x), self.classes))
        onehot[np.arange(len(x)), labels] = 1.0
        self._counts += np.bincount(labels, minlength=self.classes)[: self.classes]
        self._sums += onehot.T @ x
        self._scatter += x.T @ x

    def result(self, *, ridge: float = RIDGE) -> tuple[np.ndarray, np.ndarray]:
        """Means (K, D) and the shared covariance (D, D) about them, with ``ridge`` times
        the mean variance on the diagonal (a unit that never varies in training, a dead
        ReLU, would otherwise make it singular)."""
        if self._shift is None or (self._counts == 0).any():
            raise ValueError(f"every one of {self.classes} classes needs examples: {self._counts}")
        n = self._counts.sum()
        centred_means = self._sums / self._counts[:, None]
        between = (centred_means * self._counts[:, None]).T @ centred_means
        covariance = (self._scatter - between) / n
        covariance = (covariance + covariance.T) / 2
        variance = max(float(np.trace(covariance)) / self.dims, 1e-12)
        covariance[np.diag_indices(self.dims)] += ridge * variance
        return centred_means + self._shift, covariance


def fit_class_gaussians(
    features: np.ndarray, labels: np.ndarray, classes: int, *, ridge: float = RIDGE
) -> tuple[np.ndarray, np.ndarray]:
    """Class means (K, D) and shared covariance (D, D) of (N, D) ``features`` at once."""
    gaussians = ClassGaussians(classes, np.asarray(features).shape[1])
    gaussians.add(features, np.asarray(labels))
    return gaussians.result(ridge=ridge)


def thresholds_at_rate(
    scores: Mapping[str, np.ndarray], rate: float
) -> tuple[dict[str, float], float, float]:
    """Per-method thresholds, all at one quantile q of each method's validation scores,
    with q as low as it can be while flagging (any method past its threshold) at most
    ``rate`` of the validation images.

    Returns the thresholds, q and the validation flag rate they give.
    """
    ordered = {name: np.sort(np.asarray(s, dtype=np.float64)) for name, s in scores.items()}

    def at(q: float) -> tuple[dict[str, float], float]:
        limits = {name: float(np.quantile(s, q)) for name, s in ordered.items()}
        flagged = np.any([scores[name] > t for name, t in limits.items()], axis=0)
        return limits, float(np.mean(flagged))

    low, high = 1.0 - rate, 1.0  # one method alone at 1 - rate already flags ``rate``
    for _ in range(50):
        middle = (low + high) / 2
        if at(middle)[1] > rate:
            low = middle
        else:
            high = middle
    limits, achieved = at(high)
    return limits, high, achieved
