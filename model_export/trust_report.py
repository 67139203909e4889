"""`make trust-report`: calibration and out-of-distribution detection of the committed
Fashion-MNIST models, measured.

In process, with ONNX Runtime on the committed files and service.ood for every score: the
numbers are those the service serves. In-distribution: the Fashion-MNIST test set (ECE also
on the validation split). Out-of-distribution: the benchmark draw of model_export.ood_sets
(4,000 MNIST digits, Gaussian and uniform noise, crops of scikit-image's photographs), none
of which was seen when the layers were chosen. Per method, model and set: AUROC and FPR at
95 % TPR; per set: the share the default flag raises, against the issue's targets.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from model_export.calibrate import OOD_FILE
from model_export.datasets import Dataset, load_dataset
from model_export.features import Candidate, FeatureExtractor, images_to_tensor, penultimate
from model_export.ood_fit import RIDGE, ClassGaussians
from model_export.ood_metrics import auroc, fpr_at_95_tpr
from model_export.ood_sets import ood_sets
from service.calibration import expected_calibration_error, reliability, softmax
from service.model_card import load_card
from service.ood import MahalanobisLayer, max_softmax_score
from service.ood_file import load_detector

__all__ = ["TARGETS", "main", "measure_model"]

MODELS = ("lenet5-fashion", "vggnet-fashion", "resnet-fashion")
# The targets; the OOD ones bind resnet-fashion and vggnet-fashion.
TARGETS = {
    "ece_test": 0.015,
    "flag_test": 0.06,
    "flag_digits": 0.90,
    "flag_other": 0.80,
    "auroc_digits": 0.95,
}
TARGETED = ("resnet-fashion", "vggnet-fashion")
START, END = "<!-- trust-report:start -->", "<!-- trust-report:end -->"


@dataclass
class SetScores:
    """Per image of one set: every method's score and the default flag."""

    logits: np.ndarray
    scores: dict[str, np.ndarray]
    flagged: np.ndarray


def _reference_layer(path: Path, data: Dataset, spec: Any) -> MahalanobisLayer | None:
    """Lee et al.'s single-layer choice, the input of the last fully connected layer, fitted
    on the training split for comparison (it is not what the service flags with)."""
    last = penultimate(onnx.load(str(path)))
    if last is None:
        return None
    extractor = FeatureExtractor(path, [last])
    fit = ClassGaussians(data.num_classes, last.dims)
    train = images_to_tensor(data.train.images, spec)
    for rows, _, tensors in extractor.batches(train, "reference layer, training split"):
        fit.add(extractor.pooled(tensors)[last.key], data.train.labels[rows])
    means, covariance = fit.result(ridge=RIDGE)
    return MahalanobisLayer.from_covariance(last.name, last.output, means, covariance)


def _score_sets(
    path: Path,
    detector: Any,
    reference: MahalanobisLayer | None,
    inputs: Mapping[str, np.ndarray],
) -> dict[str, SetScores]:
    layers = list(detector.layers) + ([reference] if reference else [])
    wanted = [Candidate(x.name, x.output, x.grid, x.dimensions) for x in layers]
    extractor = FeatureExtractor(path, wanted)
    results = {}
    for name, images in inputs.items():
        parts: dict[str, list[np.ndarray]] = {}
        logits, flagged = [], []
        for _, batch_logits, tensors in extractor.batches(images, name):
            verdict = detector.assess(batch_logits, tensors)
            row = {
                "msp": max_softmax_score(batch_logits),
                **verdict.method_scores,
                "combined": verdict.score,
            }
            for layer in detector.layers:
                row[f"mahalanobis:{_key(layer)}"] = layer.score(tensors[layer.output])
            if reference is not None:
                row["reference"] = reference.score(tensors[reference.output])
            for key, value in row.items():
                parts.setdefault(key, []).append(value)
            logits.append(batch_logits)
            flagged.append(verdict.flagged)
        results[name] = SetScores(
            np.concatenate(logits),
            {k: np.concatenate(v) for k, v in parts.items()},
            np.concatenate(flagged),
        )
    return results


def _key(layer: MahalanobisLayer) -> str:
    return layer.name if layer.grid == 1 else f"{layer.name}@{layer.grid}x{layer.grid}"


def _calibration(
    temperature: float, scored: Mapping[str, SetScores], data: Dataset
) -> dict[str, Any]:
    out: dict[str, Any] = {"temperature": temperature}
    for split, labels in (("val", data.val.labels), ("test", data.test.labels)):
        logits = scored[split].logits
        out[split] = {
            "before": expected_calibration_error(softmax(logits), labels),
            "after": expected_calibration_error(softmax(logits, temperature), labels),
        }
        for when, t in (("before", 1.0), ("after", temperature)):
            diagram = reliability(softmax(logits, t), labels)
            out[split][f"diagram_{when}"] = {
                "counts": diagram.counts.tolist(),
                "confidence": np.nan_to_num(diagram.confidence).tolist(),
                "accuracy": np.nan_to_num(diagram.accuracy).tolist(),
            }
    return out


def _ood(scored: Mapping[str, SetScores], ood_names: list[str]) -> dict[str, Any]:
    inside = scored["test"]
    methods: dict[str, dict[str, dict[str, float]]] = {}
    for method in inside.scores:
        methods[method] = {
            name: {
                "auroc": auroc(inside.scores[method], scored[name].scores[method]),
                "fpr95": fpr_at_95_tpr(inside.scores[method], scored[name].scores[method]),
            }
            for name in ood_names
        }
    flags = {name: float(scored[name].flagged.mean()) for name in ["val", "test", *ood_names]}
    return {"methods": methods, "flag_rates": flags}


def _targets(model: Mapping[str, Any], ood_names: list[str]) -> list[dict[str, Any]]:
    """Each target of the issue for one model: the figure, the bar and whether it is met."""
    rows = [("ECE, test set, calibrated", model["calibration"]["test"]["after"], "<=", "ece_test")]
    if model["name"] in TARGETED:
        flags, methods = model["ood"]["flag_rates"], model["ood"]["methods"]
        rows.append(("flagged, Fashion-MNIST test set", flags["test"], "<=", "flag_test"))
        for name in ood_names:
            bar = "flag_digits" if name == "digits" else "flag_other"
            rows.append((f"flagged, {name}", flags[name], ">=", bar))
        rows.append(("AUROC, digits", methods["combined"]["digits"]["auroc"], ">=", "auroc_digits"))
    out = []
    for label, value, sense, bar in rows:
        met = value <= TARGETS[bar] if sense == "<=" else value >= TARGETS[bar]
        out.append({"target": label, "value": value, "bar": f"{sense} {TARGETS[bar]}", "met": met})
    if model["name"] in TARGETED:
        methods = model["ood"]["methods"]
        better = all(
            methods["combined"][n]["auroc"] > methods["msp"][n]["auroc"]
            and methods["combined"][n]["fpr95"] <= methods["msp"][n]["fpr95"]
            for n in ood_names
        )
        out.append(
            {
                "target": "default flag score better than MSP on every set (AUROC and FPR95)",
                "value": better,
                "bar": "true",
                "met": better,
            }
        )
    return out


def measure_model(model_dir: Path, name: str, data: Dataset) -> dict[str, Any]:
    root = model_dir / name
    card_json = json.loads((root / "model.json").read_text())
    card = load_card(root / "model.json")
    version = max((p.name for p in root.iterdir() if p.name.isdigit()), key=int)
    facts = card_json["versions"][version]
    path = root / version / "model.onnx"
    detector = load_detector(root / version / OOD_FILE)
    reference = _reference_layer(path, data, card.input)
    oods = ood_sets(data, card.input, "benchmark")
    inputs = {
        "val": images_to_tensor(data.val.images, card.input),
        "test": images_to_tensor(data.test.images, card.input),
        **oods,
    }
    scored = _score_sets(path, detector, reference, inputs)
    model: dict[str, Any] = {
        "name": name,
        "version": version,
        "layers": [_key(layer) for layer in detector.layers],
        "reference_layer": reference.name if reference else None,
        "methods": detector.name,
        "calibration": _calibration(facts["calibration"]["temperature"], scored, data),
        "ood": _ood(scored, list(oods)),
        "sets": {n: len(x) for n, x in inputs.items()},
        "selection": {
            key: facts["ood"]["selection"][key] for key in ("chosen", "single_methods", "sets")
        },
        "features": {_key(layer): layer.dimensions for layer in detector.layers},
    }
    model["targets"] = _targets(model, list(oods))
    # For the pictures only (not written to JSON): every image's default flag score.
    model["_combined"] = {n: scored[n].scores["combined"] for n in ["test", *oods]}
    return model


def _public(model: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in model.items() if not k.startswith("_")}


def main(argv: list[str] | None = None) -> None:
    from model_export.trust_render import render_markdown, render_pictures

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=Path("models"))
    parser.add_argument("--markdown", type=Path, help="rewrite the measured part of this file")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--images", type=Path, help="write the PNG figures into this folder")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args(argv)
    data = load_dataset("fashion-mnist")
    models = [measure_model(args.model_dir, name, data) for name in args.models]
    report = {
        "models": models,
        "targets": TARGETS,
        "machine": f"{platform.machine()} ({platform.system()}), ONNX Runtime {ort.__version__}",
    }
    if args.json:
        public = {**report, "models": [_public(m) for m in models]}
        args.json.write_text(json.dumps(public, indent=1) + "\n")
    if args.images:
        render_pictures(report, args.images)
    table = render_markdown(report)
    print(table)
    if args.markdown:
        text = args.markdown.read_text() if args.markdown.is_file() else f"{START}\n{END}\n"
        pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
        if not pattern.search(text):
            raise SystemExit(f"{args.markdown} has no {START} ... {END} markers")
        args.markdown.write_text(pattern.sub(lambda _: f"{START}\n{table}\n{END}", text))


if __name__ == "__main__":
    main()
