"""`cnnserve calibrate NAME --images DIR [--labels FILE]`: imported models, whose training
data is not here.

The images are in-distribution examples (photos of the kind the model was trained on),
preprocessed by the service's own code as the model's model.json says. With labels, T is
fitted on them by minimising the NLL and the ECE is measured before and after on the same
images (there is no held-out set: say so when quoting it). With or without labels, the
energy threshold flags ``flag_rate`` of them. Without ``--images`` at all the model keeps
the energy score with no threshold, and the facts say why.

The labels FILE has one line per image: the file name (relative to DIR), a tab, and the
class, as its index in the model's output or its label exactly as model.json spells it.
Blank lines and lines starting with ``#`` are skipped. Only the images it lists are used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from model_export.calibrate import (
    OOD_FILE,
    VAL_FLAG_RATE,
    CalibrationError,
    calibration_facts,
    fit_temperature,
    model_version,
)
from model_export.features import FeatureExtractor
from model_export.ood_fit import thresholds_at_rate
from model_export.repository import record_version_facts
from service.model_card import ModelCard, load_card
from service.ood import OodDetector, OodMethod, energy
from service.ood_file import save_detector
from service.preprocessing import preprocess

__all__ = ["MIN_IMAGES", "calibrate_images", "read_labels", "record_no_statistics"]

MIN_IMAGES = 50
_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
_MAX_PIXELS = 40_000_000
NO_DATA = (
    "imported without its training data: the energy score is reported with no threshold, "
    "so nothing is flagged; `cnnserve calibrate NAME --images DIR` sets one from "
    "in-distribution images"
)


def read_labels(path: Path, labels: list[str]) -> dict[str, int]:
    """File name -> class index from a labels FILE (see the module docstring)."""
    if not path.is_file():
        raise CalibrationError(f"labels file {path} does not exist")
    by_name = {label: i for i, label in enumerate(labels)}
    found: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, tab, value = line.partition("\t")
        value = value.strip()
        if not tab or not name or not value:
            raise CalibrationError(f"{path}:{number}: expected 'file name<TAB>class'")
        if value.isdigit() and int(value) < len(labels):
            found[name] = int(value)
        elif value in by_name:
            found[name] = by_name[value]
        else:
            raise CalibrationError(
                f"{path}:{number}: {value!r} is neither a class index below {len(labels)} "
                "nor one of the model's labels"
            )
    if not found:
        raise CalibrationError(f"labels file {path} lists no images")
    return found


def _images(directory: Path, names: list[str] | None, card: ModelCard) -> np.ndarray:
    if not directory.is_dir():
        raise CalibrationError(f"{directory} is not a folder of images")
    if names is None:
        paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in _SUFFIXES)
    else:
        paths = [directory / name for name in names]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise CalibrationError(f"images named in the labels file are missing: {missing[:5]}")
    if len(paths) < MIN_IMAGES:
        raise CalibrationError(
            f"{len(paths)} images in {directory}; a threshold needs at least {MIN_IMAGES}"
        )
    batch = np.empty((len(paths), card.input.channels, *card.input.size), np.float32)
    for i, path in enumerate(paths):
        try:
            batch[i] = preprocess(path.read_bytes(), card.input, max_pixels=_MAX_PIXELS)
        except Exception as exc:  # the service's image errors, with the file named
            raise CalibrationError(f"{path} cannot be read as an image: {exc}") from None
    return batch


def calibrate_images(
    name: str,
    *,
    images: Path,
    labels: Path | None = None,
    model_dir: Path = Path("models"),
    version: str | None = None,
    flag_rate: float = VAL_FLAG_RATE,
) -> dict[str, Any]:
    """An energy threshold (and, with labels, a temperature) from in-distribution images."""
    root = model_dir / name
    version = model_version(root, version)
    card = load_card(root / "model.json")
    if card.output_kind != "logits":
        raise CalibrationError(f"{name} outputs probabilities: both T and energy need logits")
    known = read_labels(labels, card.labels) if labels is not None else None
    batch = _images(images, list(known) if known else None, card)
    logits, _ = FeatureExtractor(root / version / "model.onnx", []).run(batch, "images")
    command = f"cnnserve calibrate {name} --images {images}" + (
        f" --labels {labels}" if labels else ""
    )
    fitted_on = f"{len(batch)} in-distribution images from {images}"
    facts: dict[str, Any] = {}
    if known is not None:
        target = np.array(list(known.values()))
        temperature = fit_temperature(logits, target)
        facts["calibration"] = calibration_facts(temperature, {"images": (logits, target)}) | {
            "fitted_on": fitted_on + " (ECE measured on the same images: no held-out set)",
            "command": command,
        }
    scores = {"energy": energy(logits)}
    thresholds, quantile, achieved = thresholds_at_rate(scores, flag_rate)
    method = OodMethod("energy", thresholds["energy"], float(np.median(scores["energy"])))
    save_detector(root / version / OOD_FILE, OodDetector((method,)))
    facts["ood"] = {
        "file": OOD_FILE,
        "methods": ["energy"],
        "energy_temperature": 1.0,
        "layers": [],
        "thresholds": {"energy": method.threshold},
        "centers": {"energy": method.center},
        "quantile": round(quantile, 6),
        "val_flag_rate": round(achieved, 6),
        "target_val_flag_rate": flag_rate,
        "fitted_on": fitted_on + " (no training data: no Mahalanobis statistics)",
        "command": command,
    }
    record_version_facts(root, version, facts)
    return facts


def record_no_statistics(
    name: str, *, model_dir: Path = Path("models"), version: str | None = None
) -> dict[str, Any]:
    """Say in model.json that the model has the energy score only, with no threshold."""
    root = model_dir / name
    version = model_version(root, version)
    facts = {
        "ood": {
            "file": None,
            "methods": ["energy"],
            "energy_temperature": 1.0,
            "layers": [],
            "thresholds": {"energy": None},
            "why": NO_DATA,
            "command": f"cnnserve calibrate {name}",
        }
    }
    fitted = root / version / OOD_FILE
    if fitted.exists():
        raise CalibrationError(
            f"{fitted} holds fitted statistics; remove it first to go back to no threshold"
        )
    record_version_facts(root, version, facts)
    return facts
