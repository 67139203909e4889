"""Scores -> probabilities and the top classes: what every protocol does after inference."""

from __future__ import annotations

import numpy as np

from service.calibration import softmax

__all__ = ["probabilities", "softmax", "top_k"]


def top_k(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries of each row, largest first (ties: the
    lower index first)."""
    # One stable sort: partitioning first is faster for 1000 classes, but it picks among
    # values tied at the k-th place in no particular order (microseconds against the
    # milliseconds of a model that size).
    indices = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
    rows = np.arange(len(probabilities))[:, None]
    return indices, probabilities[rows, indices]


def probabilities(output: np.ndarray, kind: str, temperature: float = 1.0) -> np.ndarray:
    """A model's output as probabilities: softmax of its logits divided by ``temperature``
    (1: as they are); a Softmax's output as it is, or, with a temperature, re-tempered
    through its logarithm (log p is the logits up to a constant)."""
    if kind == "logits":
        return softmax(output, temperature)
    if temperature == 1.0:
        return np.asarray(output, dtype=np.float64)
    return softmax(np.log(np.clip(np.asarray(output, dtype=np.float64), 1e-300, None)), temperature)
