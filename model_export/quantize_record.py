"""What `cnnserve quantize` measured, as it is recorded in model.json for the new version.

``Candidate`` is one INT8 model made and measured; ``version_facts_for`` turns the chosen
one and everything measured on the way into the ``"versions"`` entry of model.json
(``service.model_card.VersionFacts`` reads it back).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from model_export.quantize_data import ImageSet
from model_export.quantize_debug import LayerLoss
from model_export.quantize_measure import CONFIDENT, cpu_facts
from model_export.quantize_plan import QuantizeOptions
from model_export.quantize_variants import Variant
from service.model_card import FP32, INT8

__all__ = ["SPEED_TIE", "Candidate", "Reference", "verification", "version_facts_for"]

# Variants whose speed-up is within this share of the fastest one's count as equally fast;
# among them the most accurate wins.
SPEED_TIE = 0.05

_PHOTOS_SHOW = (
    "Without labelled images of the model's classes here, agreement is all that is measured: "
    "how often INT8 picks FP32's top-1 class on the same input. It shows that the INT8 graph "
    "computes what FP32 computes on real photographs as the server preprocesses them and, "
    "where FP32 is confident (top-1 probability >= {confident}), how rarely rounding flips "
    "its answer. It does not show accuracy: the photographs are few ({photos}), several are "
    "far from any model's classes (micrographs, textures, text), the views are crops of the "
    "same photos (not independent), and calibration saw {seen} of the {photos}. Flips "
    "cluster where FP32's top two classes are close."
)


@dataclass(frozen=True)
class Reference:
    """The FP32 model on the evaluation images."""

    top1: np.ndarray
    confident: np.ndarray  # FP32's top-1 probability >= CONFIDENT
    accuracy: float | None  # None without labels


@dataclass
class Candidate:
    """One INT8 model made and measured."""

    variant: Variant
    path: Path  # the model file, in the working folder
    keep_fp32: tuple[str, ...]  # every node left in FP32, companions included
    companions: dict[str, str]  # node kept only so that another stays float -> that node
    still_int8: list[str]  # kept nodes that ONNX Runtime quantizes all the same
    top1: np.ndarray
    agreement: float  # on every evaluation image
    confident_agreement: float  # where FP32 is confident
    accuracy: float | None
    drop_points: float | None
    failures: list[str]
    latency_ms: dict[int, float] = field(default_factory=dict)
    speedup: dict[int, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.variant.name + (f"+{len(self.keep_fp32)} FP32" if self.keep_fp32 else "")

    @property
    def asked(self) -> tuple[str, ...]:
        """The nodes kept in FP32 for themselves (not as companions)."""
        return tuple(node for node in self.keep_fp32 if node not in self.companions)

    @property
    def speed(self) -> float:
        """Geometric mean of the speed-ups over the measured batch sizes (0 if untimed)."""
        values = list(self.speedup.values())
        return math.prod(values) ** (1 / len(values)) if values else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "variant": self.variant.name,
            "kept_fp32": list(self.keep_fp32),
            "top1_agreement": round(self.agreement, 4),
            "confident_agreement": round(self.confident_agreement, 4),
            "accuracy_int8": None if self.accuracy is None else round(self.accuracy, 4),
            "drop_points": None if self.drop_points is None else round(self.drop_points, 2),
            "ms_per_image": {str(b): round(ms, 4) for b, ms in self.latency_ms.items()},
            "speedup": {str(b): round(s, 2) for b, s in self.speedup.items()},
            "within_bounds": not self.failures,
        }


def _per_image(evaluation: ImageSet, reference: Reference, chosen: Candidate) -> dict[str, Any]:
    seen = evaluation.description.get("in_calibration") or [None] * len(evaluation)
    rows = [
        {
            "image": name,
            "fp32": int(reference.top1[i]),
            "int8": int(chosen.top1[i]),
            "fp32_confident": bool(reference.confident[i]),
            "in_calibration": seen[i],
        }
        for i, name in enumerate(evaluation.names)
        if "#view" not in name
    ]
    held_out = [r["fp32"] == r["int8"] for r in rows if r["in_calibration"] is False]
    return {
        "photos": len(rows),
        "photos_agreement": round(float(np.mean([r["fp32"] == r["int8"] for r in rows])), 4),
        "held_out_photos": len(held_out),
        "held_out_agreement": round(float(np.mean(held_out)), 4) if held_out else None,
        "per_photo": rows,
        "what_it_shows": _PHOTOS_SHOW.format(
            confident=CONFIDENT, photos=len(rows), seen=len(rows) - len(held_out)
        ),
    }


def verification(
    evaluation: ImageSet, reference: Reference, chosen: Candidate, options: QuantizeOptions
) -> dict[str, Any]:
    """The figures the bounds were checked on, and per photo where there are no labels."""
    labelled = evaluation.labels is not None
    result: dict[str, Any] = {
        "data": {k: v for k, v in evaluation.description.items() if k != "in_calibration"},
        "images": len(evaluation),
        "top1_agreement": round(chosen.agreement, 4),
        "confident_images": int(reference.confident.sum()),
        "confident_agreement": round(chosen.confident_agreement, 4),
        "min_confident_agreement": options.min_agreement,
        "accuracy_fp32": None if reference.accuracy is None else round(reference.accuracy, 4),
        "accuracy_int8": None if chosen.accuracy is None else round(chosen.accuracy, 4),
        "drop_points": None if chosen.drop_points is None else round(chosen.drop_points, 2),
        "max_drop_points": options.max_drop if labelled else None,
    }
    return result if labelled else result | _per_image(evaluation, reference, chosen)


def _kept(chosen: Candidate, losses: list[LayerLoss], options: QuantizeOptions) -> list[Any]:
    by_node = {loss.node: loss for loss in losses}
    kept = []
    for node in chosen.keep_fp32:
        if node in chosen.companions:
            why = (
                f"kept with {chosen.companions[node]}, which reads its output: between two "
                "quantized neighbours ONNX Runtime's CPU optimiser would quantize a float "
                "node anyway (WeightBiasQuantization), so one of them must be float too"
            )
        elif node in options.keep_fp32:
            why = "asked for with --keep-fp32"
        else:
            why = (
                "among the layers adding most error (per-tensor comparison); keeping it in "
                "FP32 brought the model within the bounds"
            )
        if node in chosen.still_int8:
            why += "; ONNX Runtime still runs it in INT8 (its neighbours are quantized)"
        loss = by_node.get(node)
        kept.append({"node": node, "why": why, **({"loss": loss.to_json()} if loss else {})})
    return kept


def version_facts_for(
    *,
    name: str,
    source_version: str,
    chosen: Candidate,
    candidates: list[Candidate],
    losses: list[LayerLoss],
    fp32_ms: dict[int, float],
    calibration: ImageSet,
    checked: dict[str, Any],
    options: QuantizeOptions,
) -> dict[str, Any]:
    """The ``"versions"`` entry of model.json for the INT8 version."""
    v = chosen.variant
    return {
        "precision": INT8,
        "source_version": source_version,
        "quantization": {
            "tool": f"onnxruntime.quantization.quantize_static (ONNX Runtime {ort.__version__})",
            "format": "QDQ",
            "variant": v.name,
            "description": v.describe(),
            "activation_type": v.activations,
            "weight_type": "int8",
            "per_channel": v.per_channel,
            "reduce_range": v.reduce_range,
            "calibration": {
                "method": options.calibration_method,
                "images": len(calibration),
                **calibration.description,
            },
            "kept_fp32": _kept(chosen, losses, options),
            "verification": checked,
            "ms_per_image": {
                FP32: {str(b): round(ms, 4) for b, ms in fp32_ms.items()},
                INT8: {str(b): round(ms, 4) for b, ms in chosen.latency_ms.items()},
            },
            "speedup": {str(b): round(s, 2) for b, s in chosen.speedup.items()},
            "choice": (
                "the fastest variant within the bounds (geometric mean of the speed-ups at "
                f"batch {' and '.join(map(str, options.batches))}; within {SPEED_TIE:.0%} of it, "
                "the most accurate: test accuracy, then top-1 agreement with FP32 on every "
                "image, then where FP32 is confident); one ONNX Runtime thread, FP32 and every "
                f"variant timed in turn, median of {options.latency_rounds} rounds of 3 runs "
                "(the first of each not counted)"
            ),
            "variants": [c.to_json() for c in candidates],
            "layers_adding_most_error": [loss.to_json() for loss in losses[:5]],
            "measured_on": cpu_facts(),
            "command": options.command(name),
            "quantized_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        },
    }
