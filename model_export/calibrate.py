"""`cnnserve calibrate NAME --dataset`, also run by `cnnserve export`: how far to trust a
model trained here, fitted on the committed ONNX file through ONNX Runtime.

1. Temperature scaling (Guo et al. 2017): one T, fitted by minimising the negative
   log-likelihood of the validation split (golden-section search on log T); NLL and ECE
   before and after, on the validation split and on the test set.
2. Out-of-distribution statistics: class means and a shared covariance of every candidate
   layer's features on the training split (features.candidates, ood_fit); the layers that
   feed the flag chosen by measurement (ood_select); thresholds that flag ``flag_rate`` of
   the validation split, computed from the raw layer outputs by service.ood exactly as
   the service will; written to ``<version>/ood.npz`` (service.ood_file describes the file).

The facts go to ``model.json`` under ``"versions": {"<version>": {"calibration": ...,
"ood": ...}}``, beside what other commands keep there. Imported models: calibrate_images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from model_export.datasets import Dataset, load_dataset
from model_export.errors import ExportPipelineError
from model_export.features import (
    Candidate,
    FeatureExtractor,
    candidates,
    images_to_tensor,
    penultimate,
)
from model_export.ood_fit import RIDGE, ClassGaussians, thresholds_at_rate
from model_export.ood_select import Config, Scored, Selector, Trial
from model_export.ood_sets import ood_sets
from model_export.repository import record_version_facts
from service.calibration import (
    ECE_BINS,
    expected_calibration_error,
    negative_log_likelihood,
    softmax,
)
from service.model_card import InputSpec, load_card
from service.ood import MahalanobisLayer, OodDetector, OodMethod
from service.ood_file import load_detector, save_detector

__all__ = [
    "OOD_FILE",
    "VAL_FLAG_RATE",
    "CalibrationError",
    "calibrate_dataset",
    "calibration_facts",
    "fit_temperature",
    "model_version",
    "summary",
]

# The share of the validation split the flag raises. The bar is 6 % of the test
# set; 4.5 % leaves room for the test set being another draw (the 5,000-image validation
# estimate alone has a standard error of 0.3 points).
VAL_FLAG_RATE = 0.045
OOD_FILE = "ood.npz"
# A saved and reloaded detector must score as the fitted one did, to this relative error.
ROUND_TRIP_RTOL = 1e-9


class CalibrationError(ExportPipelineError):
    """The model or the images given cannot be calibrated; the message says why."""


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, *, low: float = 0.05, high: float = 20.0
) -> float:
    """The T in [low, high] minimising the NLL of softmax(logits / T): golden-section
    search on log T (the NLL is convex in 1 / T, so it has a single minimum)."""
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = math.log(low), math.log(high)

    def nll(log_t: float) -> float:
        return negative_log_likelihood(logits, labels, math.exp(log_t))

    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    while b - a > 1e-7:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    return math.exp((a + b) / 2.0)


def calibration_facts(
    temperature: float, sets: Mapping[str, tuple[np.ndarray, np.ndarray]]
) -> dict[str, Any]:
    """NLL and ECE before and after scaling, per named (logits, labels) set."""
    facts: dict[str, Any] = {"temperature": round(temperature, 6), "nll": {}, "ece": {}}
    for name, (logits, labels) in sets.items():
        facts["nll"][name] = {
            "before": round(negative_log_likelihood(logits, labels), 6),
            "after": round(negative_log_likelihood(logits, labels, temperature), 6),
        }
        facts["ece"][name] = {
            "before": round(expected_calibration_error(softmax(logits), labels), 6),
            "after": round(expected_calibration_error(softmax(logits, temperature), labels), 6),
        }
    facts["ece_bins"] = ECE_BINS
    facts["images"] = {name: len(labels) for name, (_, labels) in sets.items()}
    return facts


def model_version(model_root: Path, version: str | None) -> str:
    """``version``, checked, or the highest version of the model."""
    if not (model_root / "model.json").is_file():
        raise CalibrationError(f"no model in {model_root}: model.json is missing")
    found = sorted(
        (p.name for p in model_root.iterdir() if p.is_dir() and p.name.isdigit()), key=int
    )
    if version is None and found:
        return found[-1]
    if version not in found:
        raise CalibrationError(f"{model_root.name} has no version {version}; it has {found}")
    return version


def _fit_gaussians(
    extractor: FeatureExtractor, images: np.ndarray, labels: np.ndarray, classes: int
) -> dict[str, MahalanobisLayer]:
    """Every candidate's class Gaussians on the training split, as a scoring layer."""
    fits = {c.key: ClassGaussians(classes, c.dims) for c in extractor.features}
    for rows, _, tensors in extractor.batches(images, "training split"):
        for key, features in extractor.pooled(tensors).items():
            fits[key].add(features, labels[rows])
    layers = {}
    for c in extractor.features:
        means, covariance = fits[c.key].result(ridge=RIDGE)
        layers[c.key] = MahalanobisLayer.from_covariance(
            c.name, c.output, means, covariance, grid=c.grid
        )
    return layers


def _score(
    extractor: FeatureExtractor,
    layers: Mapping[str, MahalanobisLayer],
    images: np.ndarray,
    description: str,
) -> Scored:
    """Logits and every candidate's nearest-class distance for one image set."""
    logits: list[np.ndarray] = []
    distances: dict[str, list[np.ndarray]] = {key: [] for key in layers}
    for _, batch_logits, tensors in extractor.batches(images, description):
        logits.append(batch_logits)
        for key, features in extractor.pooled(tensors).items():
            distances[key].append(layers[key].distances(features).min(axis=1))
    return Scored(np.concatenate(logits), {k: np.concatenate(v) for k, v in distances.items()})


def _final_detector(
    chosen: Trial,
    layers: Mapping[str, MahalanobisLayer],
    selector: Selector,
    path: Path,
    val: np.ndarray,
    rate: float,
) -> tuple[OodDetector, dict[str, float], np.ndarray]:
    """The chosen configuration, its thresholds set on the validation split scored by
    service.ood from the raw layer outputs (one more pass over the split). Also returns
    the first batch's input, to check the saved file against."""
    picked = [layers[key] for key in chosen.config.layers]
    if len(picked) > 1:
        picked = [
            layers[key].with_standardisation(selector.center[key], selector.scale[key])
            for key in chosen.config.layers
        ]
    methods = [OodMethod("energy")] if chosen.config.energy else []
    if picked:
        methods.append(OodMethod("mahalanobis", layers=tuple(picked)))
    draft = OodDetector(tuple(methods))
    extractor = _extractor_for(path, draft.layers)
    parts: dict[str, list[np.ndarray]] = {m.name: [] for m in methods}
    for _, logits, tensors in extractor.batches(val, "validation split, as served"):
        for name, batch_scores in draft.method_scores(logits, tensors).items():
            parts[name].append(batch_scores)
    scores = {name: np.concatenate(v) for name, v in parts.items()}
    thresholds, quantile, achieved = thresholds_at_rate(scores, rate)
    final = OodDetector(
        tuple(
            OodMethod(m.name, thresholds[m.name], float(np.median(scores[m.name])), m.layers)
            for m in methods
        )
    )
    return final, {"quantile": quantile, "val_flag_rate": achieved}, val[: extractor.batch_size]


def _extractor_for(onnx_path: Path, layers: tuple[MahalanobisLayer, ...]) -> FeatureExtractor:
    wanted = [Candidate(layer.name, layer.output, layer.grid, layer.dimensions) for layer in layers]
    return FeatureExtractor(onnx_path, wanted)


def _check_saved(path: Path, fitted: OodDetector, onnx_path: Path, probe: np.ndarray) -> None:
    """Refuse a statistics file that does not score as the fitted detector does."""
    loaded = load_detector(path)
    _, logits, tensors = next(_extractor_for(onnx_path, fitted.layers).batches(probe))
    expected, got = fitted.assess(logits, tensors), loaded.assess(logits, tensors)
    worst = float(np.max(np.abs(got.score - expected.score) / (np.abs(expected.score) + 1e-12)))
    if worst > ROUND_TRIP_RTOL or got.fired != expected.fired:
        raise CalibrationError(
            f"{path} scores differently from the fitted statistics (largest relative "
            f"difference {worst:.3e}, bound {ROUND_TRIP_RTOL:g})"
        )


def _describe(
    chosen: Trial, trials: list[Trial], selector: Selector, last: str | None
) -> dict[str, Any]:
    """Why these layers: the chosen configuration, the runners-up and the single methods."""
    alone = [selector.trial(Config(True, ())), selector.trial(Config(False, chosen.config.layers))]
    if last is not None and last in selector.val.distances:
        alone.append(selector.trial(Config(False, (last,))))
    figures = "; ".join(f"{t.config.label} alone {min(t.flag_rates.values()):.1%}" for t in alone)
    return {
        "why": f"{chosen.config.label} flags at least {min(chosen.flag_rates.values()):.1%} "
        f"of every selection set with {chosen.val_flag_rate:.1%} of the validation split "
        f"flagged ({figures})",
        "criterion": "the largest smallest share flagged over the selection sets, at the "
        "target validation flag rate; ties: the mean AUROC; greedy, up to 3 layers",
        "chosen": chosen.to_json(),
        "runners_up": [t.to_json() for t in trials if t is not chosen][:5],
        "single_methods": [t.to_json() for t in alone],
    }


def _ood_facts(
    detector: OodDetector, achieved: Mapping[str, float], rate: float, description: dict[str, Any]
) -> dict[str, Any]:
    return {
        "file": OOD_FILE,
        "methods": [m.name for m in detector.methods],
        "energy_temperature": detector.energy_temperature,
        "layers": [
            {
                "name": layer.name,
                "output": layer.output,
                "grid": layer.grid,
                "features": layer.dimensions,
                "center": round(layer.center, 6),
                "scale": round(layer.scale, 6),
            }
            for layer in detector.layers
        ],
        "thresholds": {m.name: m.threshold for m in detector.methods},
        "centers": {m.name: m.center for m in detector.methods},
        "score": "max over methods of (score - center) / (threshold - center); "
        "flagged when above 1, that is when any method is past its own threshold",
        "quantile": round(achieved["quantile"], 6),
        "val_flag_rate": round(achieved["val_flag_rate"], 6),
        "target_val_flag_rate": rate,
        "ridge": RIDGE,
        "selection": description,
    }


def _inputs(data: Dataset, spec: InputSpec, limit: int | None) -> dict[str, np.ndarray]:
    return {
        name: images_to_tensor(split.images[:limit], spec)
        for name, split in (("train", data.train), ("val", data.val), ("test", data.test))
    }


def calibrate_dataset(
    name: str,
    *,
    dataset: str,
    model_dir: Path = Path("models"),
    version: str | None = None,
    flag_rate: float = VAL_FLAG_RATE,
    command: str | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Fit the temperature and the OOD statistics of a model trained on ``dataset``; write
    ``ood.npz`` and the facts into the repository; return the facts.

    ``limit`` keeps the first images of each split and set only (a quick check, not a fit
    to keep: every class must still appear in the training images).
    """
    root = model_dir / name
    version = model_version(root, version)
    card = load_card(root / "model.json")
    data = load_dataset(dataset)
    if len(card.labels) != data.num_classes or card.output_kind != "logits":
        raise CalibrationError(
            f"{name} has {len(card.labels)} {card.output_kind}; {dataset} needs "
            f"{data.num_classes} logits"
        )
    onnx_path = root / version / "model.onnx"
    proto = onnx.load(str(onnx_path))
    inputs = _inputs(data, card.input, limit)
    train_labels, val_labels = data.train.labels[:limit], data.val.labels[:limit]
    test_labels = data.test.labels[:limit]
    extractor = FeatureExtractor(onnx_path, candidates(proto))
    layers = _fit_gaussians(extractor, inputs["train"], train_labels, data.num_classes)
    val = _score(extractor, layers, inputs["val"], "validation split")
    test_logits, _ = FeatureExtractor(onnx_path, []).run(inputs["test"], "test set")
    temperature = fit_temperature(val.logits, val_labels)
    calibration = calibration_facts(
        temperature, {"val": (val.logits, val_labels), "test": (test_logits, test_labels)}
    )
    sets = {n: x[:limit] for n, x in ood_sets(data, card.input, "selection").items()}
    scored = {n: _score(extractor, layers, images, n) for n, images in sets.items()}
    selector = Selector(val, scored, rate=flag_rate)
    chosen, trials = selector.select()
    detector, achieved, probe = _final_detector(
        chosen, layers, selector, onnx_path, inputs["val"], flag_rate
    )
    save_detector(root / version / OOD_FILE, detector)
    _check_saved(root / version / OOD_FILE, detector, onnx_path, probe)
    last = penultimate(proto)
    description = _describe(chosen, trials, selector, last.key if last else None)
    description["sets"] = {n: len(images) for n, images in sets.items()}
    command = command or f"cnnserve calibrate {name} --dataset {dataset}"
    fitted_on = (
        f"{dataset}: statistics on the training split ({len(train_labels):,} images), "
        f"temperature and thresholds on the validation split ({len(val_labels):,})"
    )
    facts = {
        "calibration": calibration | {"fitted_on": fitted_on, "command": command},
        "ood": _ood_facts(detector, achieved, flag_rate, description)
        | {"fitted_on": fitted_on, "command": command},
    }
    record_version_facts(root, version, facts)
    return facts


def summary(facts: Mapping[str, Any]) -> dict[str, Any]:
    """The headline figures of calibrate_dataset's facts: T, test ECE, the OOD methods."""
    calibration, ood = facts["calibration"], facts["ood"]
    return {
        "temperature": calibration["temperature"],
        "test_ece": calibration["ece"]["test"],
        "ood_methods": ood["methods"],
        "ood_layers": [layer["name"] + f"@{layer['grid']}" for layer in ood["layers"]],
        "val_flag_rate": ood["val_flag_rate"],
    }
