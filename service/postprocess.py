"""Scores -> probabilities and the top classes: what every protocol does after inference."""

from __future__ import annotations

import numpy as np

__all__ = ["probabilities", "softmax", "top_k"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (one copy, then in place: this runs once per request)."""
    z = np.array(logits, dtype=np.float64)
    z -= z.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def top_k(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest entries of each row, largest first (ties: the
    lower index first)."""
    # One stable sort: partitioning first is faster for 1000 classes, but it picks among
    # values tied at the k-th place in no particular order (microseconds against the
    # milliseconds of a model that size).
    indices = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
    rows = np.arange(len(probabilities))[:, None]
    return indices, probabilities[rows, indices]


def probabilities(output: np.ndarray, kind: str) -> np.ndarray:
    """A model's output as probabilities: softmax of logits; a Softmax's output as it is."""
    return softmax(output) if kind == "logits" else np.asarray(output, dtype=np.float64)
