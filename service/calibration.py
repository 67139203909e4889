"""Calibrated probabilities: temperature scaling, and how calibration is measured.

Pure numpy (no ONNX Runtime, no torch, no HTTP), so that `cnnserve calibrate`, the trust
report and the service compute every number with the same code.

Calibration (Guo et al. 2017): one temperature T divides the logits before the softmax;
it is fitted at export by minimising the negative log-likelihood on the validation split.
The expected calibration error uses 15 equal-width confidence bins, right-closed
((0, 1/15], (1/15, 2/15], ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "ECE_BINS",
    "Reliability",
    "expected_calibration_error",
    "log_softmax",
    "negative_log_likelihood",
    "reliability",
    "softmax",
]

ECE_BINS = 15


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
