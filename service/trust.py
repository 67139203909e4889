"""How far to trust one model version's answers, applied after its forward pass.

A version's temperature (``versions[v].calibration.temperature`` in model.json; none: 1) and
its out-of-distribution detector (``versions[v].ood``: the fitted statistics of
``<version>/ood.npz``, read by ``service.ood_file``; none: the energy score with no
threshold, which never flags). The layer outputs the detector reads are added to the
version's inference graph (``outputs``), so the scores come from the same forward pass as
the classification: no second inference.

A model whose output is already a softmax has no logits for the energy score; without
fitted statistics it gets the maximum softmax probability instead (``msp``: minus the top
probability, higher = less confident), also with no threshold.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.model_card import ModelCard
from service.ood import OodDetector, max_softmax_score
from service.ood_file import OodStatsError, load_detector
from service.postprocess import probabilities, top_k

__all__ = ["Verdict", "VersionTrust"]

Verdict = dict[str, Any]  # the response's "ood": score, threshold, flagged, method


@dataclass(frozen=True)
class VersionTrust:
    temperature: float  # 1: not calibrated
    detector: OodDetector
    kind: str  # the model's output: "logits" or "probabilities"

    @classmethod
    def load(cls, card: ModelCard, version: str, folder: Path) -> VersionTrust:
        """What model.json says of ``version`` (in ``folder``); a statistics file named
        there that cannot be read raises ValueError with the reason."""
        facts = card.version_facts(version)
        temperature = float((facts.calibration or {}).get("temperature") or 1.0)
        file = (facts.ood or {}).get("file")
        if file:
            try:
                detector = load_detector(folder / str(file))
            except (OodStatsError, OSError) as exc:
                raise ValueError(f"its out-of-distribution statistics: {exc}") from exc
        else:
            detector = OodDetector.energy_only()
        if temperature <= 0 or not np.isfinite(temperature):
            raise ValueError(f"its calibration temperature is {temperature}: not positive")
        return cls(temperature, detector, card.output_kind)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The layer outputs to fetch beside the scores, in the order ``assess`` reads them."""
        return self.detector.outputs

    def probabilities(self, scores: np.ndarray, *, calibrated: bool = True) -> np.ndarray:
        """The model's scores as probabilities: tempered unless ``calibrated`` is False."""
        return probabilities(scores, self.kind, self.temperature if calibrated else 1.0)

    def summarise(
        self, scores: np.ndarray, features: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """A batch's classes ranked by calibrated probability (N, classes: most probable
        first, ties to the lower index, as ``top_k``), those probabilities in that order,
        the out-of-distribution score (N,) and which methods fired (N, methods), from the
        model's scores and the layer outputs (``outputs``): computed once per batch in the
        inference thread (``ModelRuntime.infer``), vectorised over its rows; each request
        then reads the first k of its rows (``DataPlane.classify``)."""
        with np.errstate(all="ignore"):  # a row of NaN scores is refused later, not here
            chances = self.probabilities(scores)
            order, ranked = top_k(chances, chances.shape[-1])
            if self.kind == "probabilities" and not self.detector.fitted:
                score = max_softmax_score(np.log(np.clip(scores, 1e-300, None)))
                return order, ranked, score, np.zeros((len(scores), 0), bool)
            named = dict(zip(self.outputs, features, strict=True))
            score, past, _ = self.detector.judge(scores, named)
        return order, ranked, score, past

    def verdicts(self, score: np.ndarray, fired: np.ndarray) -> list[Verdict]:
        """The response's ``ood`` object of each row of ``summarise``'s arrays."""
        threshold, method, names = self._verdict_facts
        verdicts: list[Verdict] = []
        for value, hits in zip(score.tolist(), fired.tolist(), strict=True):
            which = "+".join(n for n, hit in zip(names, hits, strict=False) if hit)  # fired
            verdicts.append(
                {
                    "score": value,
                    "threshold": threshold,
                    "flagged": bool(which),
                    "method": which or method,
                }
            )
        return verdicts

    @functools.cached_property
    def _verdict_facts(self) -> tuple[float | None, str, tuple[str, ...]]:
        """What every verdict of this version shares: the threshold (1 for fitted scores),
        the method's name, the detector's methods in ``fired``'s column order."""
        threshold = 1.0 if self.detector.fitted else None
        return threshold, self.method, tuple(m.name for m in self.detector.methods)

    @property
    def method(self) -> str:
        """The detector's methods, joined ("energy+mahalanobis")."""
        if self.kind == "probabilities" and not self.detector.fitted:
            return "msp"
        return self.detector.name
