"""Choosing by measurement which layers feed a model's out-of-distribution flag.

A configuration is a set of candidate layers (features.candidates), whose Mahalanobis
distances are summed after each is standardised on the validation split, with or without
the energy score beside it. Its thresholds flag a target share of the validation split
(ood_fit.thresholds_at_rate: any method past its own threshold). Its merit is the smallest
share it flags of the selection OOD sets (ood_sets, draw "selection": none of them is
measured by the report), ties broken by the mean AUROC of its combined score there.

The flag always combines the energy score with a Mahalanobis score (the issue's trial showed
neither alone enough; the Mahalanobis-alone figures are kept for the record). Greedy forward
selection: the best single layer, then one layer more at a time while the merit gains at
least half a percentage point, up to three layers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model_export.ood_fit import thresholds_at_rate
from model_export.ood_metrics import auroc
from service.ood import energy

__all__ = ["Config", "Selector", "Trial"]

MAX_LAYERS = 3
MIN_GAIN = 0.005


@dataclass(frozen=True)
class Config:
    energy: bool
    layers: tuple[str, ...]  # candidate keys

    @property
    def methods(self) -> list[str]:
        return (["energy"] if self.energy else []) + (["mahalanobis"] if self.layers else [])

    @property
    def label(self) -> str:
        parts = (["energy"] if self.energy else []) + [
            f"mahalanobis({' + '.join(self.layers)})"
        ] * bool(self.layers)
        return " | ".join(parts)


@dataclass
class Trial:
    """A configuration measured: validation flag rate, selection flag rates and AUROCs."""

    config: Config
    quantile: float
    val_flag_rate: float
    flag_rates: dict[str, float]
    aurocs: dict[str, float]
    thresholds: dict[str, float] = field(repr=False)

    @property
    def merit(self) -> tuple[float, float]:
        return min(self.flag_rates.values()), float(np.mean(list(self.aurocs.values())))

    def to_json(self) -> dict[str, Any]:
        return {
            "methods": self.config.label,
            "val_flag_rate": round(self.val_flag_rate, 4),
            "flag_rates": {k: round(v, 4) for k, v in self.flag_rates.items()},
            "auroc": {k: round(v, 4) for k, v in self.aurocs.items()},
        }


@dataclass(frozen=True)
class Scored:
    """One image set's logits and, per candidate, its distance to the nearest class mean."""

    logits: np.ndarray
    distances: Mapping[str, np.ndarray]


class Selector:
    def __init__(self, val: Scored, sets: Mapping[str, Scored], *, rate: float) -> None:
        self.val, self.sets, self.rate = val, sets, rate
        self.center = {k: float(d.mean()) for k, d in val.distances.items()}
        self.scale = {k: float(d.std()) or 1.0 for k, d in val.distances.items()}

    def scores(self, config: Config, scored: Scored) -> dict[str, np.ndarray]:
        """Each method's score on one set, as service.ood computes it."""
        out: dict[str, np.ndarray] = {}
        if config.energy:
            out["energy"] = energy(scored.logits)
        if len(config.layers) == 1:
            out["mahalanobis"] = scored.distances[config.layers[0]].astype(np.float64)
        elif config.layers:
            out["mahalanobis"] = sum(
                (scored.distances[k] - self.center[k]) / self.scale[k] for k in config.layers
            )  # type: ignore[assignment]
        return out

    def trial(self, config: Config) -> Trial:
        val = self.scores(config, self.val)
        thresholds, quantile, achieved = thresholds_at_rate(val, self.rate)
        centers = {m: float(np.median(s)) for m, s in val.items()}

        def combined(scores: dict[str, np.ndarray]) -> np.ndarray:
            return np.max(
                [(scores[m] - centers[m]) / (thresholds[m] - centers[m]) for m in scores], axis=0
            )

        inside = combined(val)
        rates, aurocs = {}, {}
        for name, scored in self.sets.items():
            outside = combined(self.scores(config, scored))
            rates[name] = float(np.mean(outside > 1.0))
            aurocs[name] = auroc(inside, outside)
        return Trial(config, quantile, achieved, rates, aurocs, thresholds)

    def select(self) -> tuple[Trial, list[Trial]]:
        """The chosen configuration and every one measured on the way, best first."""
        keys = list(self.val.distances)
        trials = [self.trial(Config(True, (key,))) for key in keys]
        best = max(trials, key=lambda t: t.merit)
        while len(best.config.layers) < MAX_LAYERS:
            grown = [
                self.trial(Config(True, (*best.config.layers, key)))
                for key in keys
                if key not in best.config.layers
            ]
            trials += grown
            challenger = max(grown, key=lambda t: t.merit)
            if challenger.merit[0] < best.merit[0] + MIN_GAIN:
                break
            best = challenger
        return best, sorted(trials, key=lambda t: t.merit, reverse=True)
