"""How well a score separates in-distribution from out-of-distribution images.

Scores follow service.ood: higher means less like the training data. Out-of-distribution
images are the positives of the AUROC. FPR at 95 % TPR follows Liu et al. (2020) and
Hendrycks et al.: with the threshold that keeps 95 % of the in-distribution images, the
share of out-of-distribution images that pass as in-distribution (lower is better).
"""

from __future__ import annotations

import numpy as np

__all__ = ["auroc", "flag_rate", "fpr_at_95_tpr"]


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ordered)) + 1]
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # ranks starts+1 .. ends, averaged
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def auroc(in_distribution: np.ndarray, out_of_distribution: np.ndarray) -> float:
    """The probability that an OOD image scores above an in-distribution one (ties: 1/2)."""
    inside = np.asarray(in_distribution, dtype=np.float64)
    outside = np.asarray(out_of_distribution, dtype=np.float64)
    ranks = _ranks(np.concatenate([inside, outside]))
    n_out = len(outside)
    u = ranks[len(inside) :].sum() - n_out * (n_out + 1) / 2.0
    return float(u / (n_out * len(inside)))


def fpr_at_95_tpr(in_distribution: np.ndarray, out_of_distribution: np.ndarray) -> float:
    """The share of OOD images at or below the score that 95 % of in-distribution images
    stay at or below."""
    threshold = np.quantile(np.asarray(in_distribution, dtype=np.float64), 0.95)
    return float(np.mean(np.asarray(out_of_distribution) <= threshold))


def flag_rate(flagged: np.ndarray) -> float:
    return float(np.mean(flagged))
