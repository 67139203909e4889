"""`cnnserve quantize`: an INT8 version of a model, measured against FP32 before it is written.

Steps, each measured:

1. calibrate on real images passed through the model's own preprocessing (a dataset's
   validation split, a folder of the user's images, or the photographs shipped in packages;
   ``quantize_plan``);
2. make every requested variant (``quantize_variants``) and score it on the evaluation
   images: top-1 agreement with FP32 and, where labels exist, accuracy;
3. time FP32 and every variant side by side (batch 1 and 32, one thread);
4. choose the fastest variant within the bounds; if none is, keep the layers that add most
   error (``quantize_debug``) in FP32, one more at a time, until one is within them;
5. load the result as the server would, then write it as the model's next version with what
   was measured in model.json (``quantize_record``). Nothing is written when a bound is missed.

Bounds: with labels, accuracy may drop at most ``max_drop`` points; always, INT8 must agree
with FP32's top-1 on at least ``min_agreement`` of the images FP32 is confident about.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import quant_pre_process

from model_export.quantize_data import ArrayReader, ImageSet
from model_export.quantize_debug import LayerLoss, layer_losses
from model_export.quantize_errors import QuantizationError, QuantizationRefusedError
from model_export.quantize_measure import CONFIDENT, interleaved_latency, outputs, session, top1
from model_export.quantize_plan import QuantizeOptions, image_sets
from model_export.quantize_record import (
    SPEED_TIE,
    Candidate,
    Reference,
    verification,
    version_facts_for,
)
from model_export.quantize_variants import VARIANTS, Variant, quantize_variant, requantized
from model_export.repository import next_version, precision, record_version_facts
from service.model_card import FP32

__all__ = ["QuantizeOptions", "QuantizeResult", "quantize_model"]

log = logging.getLogger(__name__)


@dataclass
class QuantizeResult:
    name: str
    version: str
    path: Path
    facts: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        q = self.facts["quantization"]
        checked = q["verification"]
        summary = {
            "name": self.name,
            "version": self.version,
            "path": str(self.path),
            "source_version": self.facts["source_version"],
            "variant": q["variant"],
            "kept_fp32": [k["node"] for k in q["kept_fp32"]],
            "speedup": q["speedup"],
        }
        keys = ("top1_agreement", "confident_agreement", "accuracy_fp32", "accuracy_int8")
        return summary | {k: checked[k] for k in (*keys, "drop_points")}


@dataclass
class _Context:
    """What every step shares: the options, the images and the FP32 reference."""

    name: str
    options: QuantizeOptions
    fp32: Path  # the FP32 version as served: the reference for predictions and latency
    source: Path  # the same, pre-processed: every variant is made from it
    workdir: Path
    reader: ArrayReader
    calibration: ImageSet
    evaluation: ImageSet
    reference: Reference
    output_kind: str


def _source_version(root: Path, card: dict[str, Any], version: str | None) -> str:
    versions = sorted((p.name for p in root.iterdir() if p.name.isdigit()), key=int)
    if version is None:
        fp32 = [v for v in versions if precision(card, v) == FP32]
        if not fp32:
            raise QuantizationError(f"{root.name} has no FP32 version to quantize")
        return fp32[-1]
    if version not in versions:
        raise QuantizationError(
            f"{root.name} has no version {version} (versions: {', '.join(versions)})"
        )
    if precision(card, version) != FP32:
        raise QuantizationError(
            f"{root.name} version {version} is already {precision(card, version)}; "
            "quantize its FP32 source instead"
        )
    return version


def _failures(
    ctx: _Context, agreement: float, drop: float | None, accuracy: float | None
) -> list[str]:
    failures = []
    ref, options = ctx.reference, ctx.options
    if drop is not None and drop > options.max_drop:
        failures.append(
            f"accuracy drops {drop:.2f} points ({ref.accuracy:.4f} -> {accuracy:.4f} on "
            f"{len(ctx.evaluation)} images), more than --max-drop {options.max_drop}"
        )
    if agreement < options.min_agreement:
        failures.append(
            f"top-1 agrees with FP32 on {agreement:.2%} of the {int(ref.confident.sum())} "
            f"images FP32 is confident about (probability >= {CONFIDENT}), less than "
            f"--min-agreement {options.min_agreement}"
        )
    return failures


def _quantize(
    ctx: _Context, variant: Variant, path: Path, keep: tuple[str, ...]
) -> tuple[tuple[str, ...], dict[str, str], list[str]]:
    """Quantize keeping ``keep`` in FP32, and with them, where ONNX Runtime would otherwise
    run a kept node in INT8 anyway, the nodes it reads from. Returns (every node kept,
    companion -> the node it was added for, nodes ONNX Runtime still quantizes)."""
    companions: dict[str, str] = {}
    for _ in range(4):
        quantize_variant(
            ctx.source,
            path,
            variant,
            reader=ctx.reader,
            calibration_cache=ctx.workdir / "calibration.json",
            method=ctx.options.calibration_method,
            keep_fp32=keep,
        )
        lone = requantized(onnx.load(str(path)), keep)
        added = {src: node for node, sources in lone.items() for src in sources if src not in keep}
        if not added:
            return keep, companions, sorted(lone)
        companions |= added
        keep = (*keep, *added)
    return keep, companions, sorted(requantized(onnx.load(str(path)), keep))


def _make(ctx: _Context, variant: Variant, keep: tuple[str, ...] = ()) -> Candidate:
    path = ctx.workdir / f"{variant.name}{f'-keep{len(keep)}' if keep else ''}.onnx"
    keep, companions, still_int8 = _quantize(ctx, variant, path, keep)
    predicted = outputs(session(path), ctx.evaluation.inputs).argmax(axis=1)
    same = predicted == ctx.reference.top1
    confident = (
        float(np.mean(same[ctx.reference.confident])) if ctx.reference.confident.any() else 1.0
    )
    accuracy = drop = None
    if ctx.evaluation.labels is not None and ctx.reference.accuracy is not None:
        accuracy = float(np.mean(predicted == ctx.evaluation.labels))
        drop = (ctx.reference.accuracy - accuracy) * 100
    candidate = Candidate(
        variant=variant,
        path=path,
        keep_fp32=keep,
        companions=companions,
        still_int8=still_int8,
        top1=predicted,
        agreement=float(np.mean(same)),
        confident_agreement=confident,
        accuracy=accuracy,
        drop_points=drop,
        failures=_failures(ctx, confident, drop, accuracy),
    )
    log.info("%s: agreement %.4f, accuracy %s", candidate.label, candidate.agreement, accuracy)
    return candidate


def _time(ctx: _Context, candidates: list[Candidate]) -> dict[int, float]:
    """Time FP32 and ``candidates`` in turn; fills in their latency and speed-up and returns
    FP32's milliseconds per image."""
    log.info(
        "timing FP32 and %d INT8 model(s), %d rounds", len(candidates), ctx.options.latency_rounds
    )
    models: dict[str, Path | bytes] = {FP32: ctx.fp32}
    models |= {str(i): c.path for i, c in enumerate(candidates)}
    timed = interleaved_latency(
        models,
        ctx.evaluation.inputs[:32],
        batches=ctx.options.batches,
        rounds=ctx.options.latency_rounds,
    )
    for i, candidate in enumerate(candidates):
        candidate.latency_ms = timed[str(i)]
        candidate.speedup = {b: timed[FP32][b] / ms for b, ms in candidate.latency_ms.items()}
    return timed[FP32]


def _best(candidates: list[Candidate]) -> Candidate | None:
    """The fastest candidate within the bounds and faster than FP32; among those within
    SPEED_TIE of it, the most accurate (accuracy where there are labels, then agreement with
    FP32 on every image, then where FP32 is confident)."""
    passing = [c for c in candidates if not c.failures and c.speed > 1.0]
    if not passing:
        return None
    fastest = max(c.speed for c in passing)
    tied = [c for c in passing if c.speed >= fastest * (1 - SPEED_TIE)]
    return max(tied, key=lambda c: (c.accuracy or 0.0, c.agreement, c.confident_agreement, c.speed))


def _recovers(candidate: Candidate, plain: list[Candidate]) -> bool:
    """Within the bounds, and no worse than every variant without FP32 layers on every
    measured figure: layers kept in FP32 cost speed, so they must buy accuracy, not luck
    with a small evaluation set."""
    if candidate.failures:
        return False
    if candidate.agreement < max(c.agreement for c in plain):
        return False
    accuracies = [c.accuracy for c in plain if c.accuracy is not None]
    return candidate.accuracy is None or candidate.accuracy >= max(accuracies, default=0.0)


def _recover(
    ctx: _Context, base: Candidate, losses: list[LayerLoss], plain: list[Candidate]
) -> list[Candidate]:
    """Keep the layers that add most error in FP32, 1, 2, ... of them, until that recovers."""
    tried = []
    asked = tuple(k for k in base.keep_fp32 if k not in base.companions)
    ranked = [loss.node for loss in losses if loss.node not in base.keep_fp32]
    for count in range(1, min(ctx.options.recover_layers, len(ranked)) + 1):
        candidate = _make(ctx, base.variant, (*asked, *ranked[:count]))
        if not candidate.failures and not _recovers(candidate, plain):
            candidate.failures.append(
                f"within the bounds, but with {len(candidate.keep_fp32)} FP32 layers it agrees "
                f"with FP32 on {candidate.agreement:.2%} of all images, less than a variant "
                "without them: not a recovery"
            )
        tried.append(candidate)
        if not candidate.failures:
            break
    return tried


def _refuse(ctx: _Context, candidates: list[Candidate]) -> QuantizationRefusedError:
    faster = [c for c in candidates if c.speed > 1.0]
    if not faster:
        best = max(candidates, key=lambda c: c.speed)
        reason = f"none is faster than FP32 on this CPU (fastest: {best.label}, {best.speed:.2f}x)"
    else:
        plain = [c for c in faster if not c.keep_fp32] or faster
        best = max(plain, key=lambda c: (-(c.drop_points or 0.0), c.confident_agreement))
        reason = f"closest ({best.label}, {best.speed:.2f}x): {'; '.join(best.failures)}"
        if any(c.keep_fp32 for c in candidates):
            reason += (
                "; keeping the layers adding most error in FP32 (up to "
                f"{ctx.options.recover_layers}) did not recover it"
            )
    return QuantizationRefusedError(
        f"{ctx.name}: no INT8 model within the bounds, nothing written: {reason}. "
        f"Tried: {', '.join(c.label for c in candidates)}.",
        measured=best.to_json(),
    )


def _prepare(
    name: str, src: Path, card: dict[str, Any], options: QuantizeOptions, workdir: Path
) -> _Context:
    calibration, evaluation = image_sets(card, options)
    log.info("%d calibration and %d evaluation images", len(calibration), len(evaluation))
    source = workdir / "fp32-preprocessed.onnx"
    # ONNX shape inference and ORT's basic fusions. Symbolic shape inference (for dynamic
    # shapes in transformers) would need sympy, which the serve install lacks; for these CNNs
    # it adds nothing (the same shapes, checked on resnet-fashion and MobileNetV2).
    quant_pre_process(str(src), str(source), skip_symbolic_shape=True)
    fp32 = session(src)
    kind = str(card.get("output", {}).get("kind", "logits"))
    predicted, probability = top1(outputs(fp32, evaluation.inputs), kind=kind)
    accuracy = None
    if evaluation.labels is not None:
        accuracy = float(np.mean(predicted == evaluation.labels))
    return _Context(
        name=name,
        options=options,
        fp32=src,
        source=source,
        workdir=workdir,
        reader=ArrayReader(fp32.get_inputs()[0].name, calibration.inputs),
        calibration=calibration,
        evaluation=evaluation,
        reference=Reference(predicted, probability >= CONFIDENT, accuracy),
        output_kind=kind,
    )


def _search(ctx: _Context) -> tuple[Candidate, list[Candidate], list[LayerLoss], dict[int, float]]:
    """Make, score and time every variant; if none is within the bounds, try recovering the
    fastest ones. Returns (chosen, all candidates, its layer losses, FP32's latency)."""
    keep = tuple(ctx.options.keep_fp32)
    candidates = [_make(ctx, VARIANTS[name], keep) for name in ctx.options.variants]
    fp32_ms = _time(ctx, candidates)
    debug_images = ctx.calibration.inputs[: ctx.options.debug_images]

    def losses_of(candidate: Candidate) -> list[LayerLoss]:
        log.info("comparing %s with FP32 tensor by tensor", candidate.label)
        return layer_losses(ctx.source, candidate.path, debug_images, workdir=ctx.workdir)

    chosen = _best(candidates)
    if chosen is not None:
        return chosen, candidates, losses_of(chosen), fp32_ms
    # Keeping layers in FP32 can mend accuracy, not speed: recover the fastest of those that
    # beat FP32 but miss a bound.
    plain = list(candidates)
    fixable = [c for c in candidates if c.failures and c.speed > 1.0]
    by_speed = sorted(fixable, key=lambda c: c.speed, reverse=True)
    for base in by_speed[: ctx.options.recover_variants]:
        losses = losses_of(base)
        tried = _recover(ctx, base, losses, plain)
        fp32_ms = _time(ctx, tried)
        candidates += tried
        chosen = _best(tried)
        if chosen is not None:
            return chosen, candidates, losses, fp32_ms
    raise _refuse(ctx, candidates)


def _check_serves(name: str, path: Path, card: dict[str, Any]) -> list[str]:
    """Load the INT8 file as the server does; returns its layer names."""
    from service.model_card import ModelCard
    from service.runtime import ModelLoadError, ModelRuntime, SessionConfig

    config = SessionConfig(providers="cpu", intra_op_threads=1)
    try:
        runtime = ModelRuntime(name, "new", path, ModelCard.model_validate(card), config)
    except ModelLoadError as exc:
        raise QuantizationError(f"the INT8 model does not load in the server: {exc}") from exc
    return [layer.name for layer in runtime.layers]


def quantize_model(
    name: str, *, model_dir: Path, options: QuantizeOptions | None = None
) -> QuantizeResult:
    """Quantize a model of the repository to INT8 and write it as its next version.

    Raises QuantizationRefusedError, writing nothing, when no INT8 model meets the bounds.
    """
    options = options or QuantizeOptions()
    options.check()
    root = model_dir / name
    if not (root / "model.json").is_file():
        raise QuantizationError(f"no model {name!r} in {model_dir} (no {name}/model.json)")
    card = json.loads((root / "model.json").read_text())
    source_version = _source_version(root, card, options.version)
    with tempfile.TemporaryDirectory(prefix="cnnserve-quantize-") as tmp:
        ctx = _prepare(name, root / source_version / "model.onnx", card, options, Path(tmp))
        chosen, candidates, losses, fp32_ms = _search(ctx)
        _check_serves(name, chosen.path, card)
        facts = version_facts_for(
            name=name,
            source_version=source_version,
            chosen=chosen,
            candidates=candidates,
            losses=losses,
            fp32_ms=fp32_ms,
            calibration=ctx.calibration,
            checked=verification(ctx.evaluation, ctx.reference, chosen, options),
            options=options,
        )
        version = next_version(root)
        target = root / version / "model.onnx"
        target.parent.mkdir()
        target.write_bytes(chosen.path.read_bytes())
    record_version_facts(root, version, facts)
    log.info("wrote %s version %s (%s)", name, version, chosen.label)
    return QuantizeResult(name, version, target, facts)
