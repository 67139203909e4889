"""What `cnnserve quantize` is asked to do: its options, and the images they select.

Calibration and evaluation images by model:

- a model trained on a labelled dataset here (``"dataset"`` in its model.json is
  fashion-mnist or mnist-5k), or ``--dataset``: calibration on the validation split,
  evaluation (accuracy and agreement) on the test split;
- ``--images DIR``: calibration on those images instead (the labelled test split, if any,
  still evaluates);
- anything else (an ImageNet model, an imported one): calibration on the shipped photographs
  unless ``--images`` is given; evaluation is top-1 agreement with FP32 on every shipped
  photograph (as served, then mirrored and cropped views) and on the folder's images, with
  which of them calibration saw.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model_export.datasets import DATASETS
from model_export.quantize_data import (
    ImageSet,
    dataset_images,
    folder_images,
    photo_images,
    shipped_photos,
)
from model_export.quantize_errors import CalibrationDataError, QuantizationError
from model_export.quantize_variants import CALIBRATION_METHODS, VARIANTS
from service.model_card import InputSpec

__all__ = ["QuantizeOptions", "image_sets"]


@dataclass(frozen=True)
class QuantizeOptions:
    """Everything `cnnserve quantize` takes besides the model's name and folder."""

    version: str | None = None  # the FP32 version to quantize; default: the highest FP32 one
    dataset: str | None = None  # default: the model card's, when it is one of DATASETS
    images: Path | None = None  # calibrate on these instead
    max_drop: float = 0.5  # accuracy points, where labels exist
    min_agreement: float = 0.9  # top-1 agreement with FP32 where FP32 is confident
    variants: tuple[str, ...] = tuple(VARIANTS)
    keep_fp32: tuple[str, ...] = ()  # nodes kept in FP32 whatever the measurements say
    calibration_method: str = "minmax"
    calibration_size: int = 1000  # images from a dataset's validation split
    eval_size: int | None = None  # first images of the test split; None: all of it
    views: int = 8  # views per photo or folder image for calibration
    eval_views: int = 8  # views per shipped photo for evaluation (unlabelled models)
    latency_rounds: int = 15
    batches: tuple[int, ...] = (1, 32)
    debug_images: int = 16  # images for the per-tensor comparison
    recover_layers: int = 4  # at most this many layers kept in FP32 to recover accuracy
    recover_variants: int = 2  # recovery is tried on this many of the fastest variants

    def check(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or not self.variants:
            raise QuantizationError(
                f"unknown variant(s) {', '.join(unknown) or '(none given)'}; "
                f"choose from {', '.join(VARIANTS)}"
            )
        if self.calibration_method not in CALIBRATION_METHODS:
            raise QuantizationError(
                f"unknown calibration method {self.calibration_method!r}; "
                f"choose from {', '.join(CALIBRATION_METHODS)}"
            )
        if self.dataset is not None and self.dataset not in DATASETS:
            raise QuantizationError(
                f"unknown dataset {self.dataset!r}; choose one of: {', '.join(DATASETS)}"
            )
        if self.max_drop < 0 or not 0 <= self.min_agreement <= 1:
            raise QuantizationError("--max-drop must be >= 0 and --min-agreement in [0, 1]")
        if min(self.calibration_size, self.views, self.eval_views, self.latency_rounds) < 1:
            raise QuantizationError("sizes, views and rounds must be at least 1")

    def command(self, name: str) -> str:
        """The command line that reproduces this run (model folder aside)."""
        parts = ["cnnserve quantize", name]
        defaults = QuantizeOptions()
        flags = {
            "--version": self.version,
            "--dataset": self.dataset,
            "--images": self.images,
            "--max-drop": self.max_drop,
            "--min-agreement": self.min_agreement,
            "--calibration-method": self.calibration_method,
            "--calibration-size": self.calibration_size,
            "--eval-size": self.eval_size,
            "--views": self.views,
            "--eval-views": self.eval_views,
            "--latency-rounds": self.latency_rounds,
        }
        for flag, value in flags.items():
            attr = flag.removeprefix("--").replace("-", "_")
            if value is not None and value != getattr(defaults, attr):
                parts.append(f"{flag} {value}")
        if self.variants != defaults.variants:
            parts += [f"--variant {v}" for v in self.variants]
        parts += [f"--keep-fp32 {node}" for node in self.keep_fp32]
        return " ".join(parts)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _photo_evaluation(spec: InputSpec, options: QuantizeOptions) -> ImageSet:
    """Every shipped photograph (as served, then more views with another seed than
    calibration's), then the folder's images as served. Records, per image, whether
    calibration saw the same file. Without scikit-image and co, the folder alone."""
    folder = options.images
    shipped = shipped_photos()
    inputs: list[np.ndarray] = []
    names: list[str] = []
    seen: list[bool] = []
    if shipped:
        photos = photo_images(spec, views=options.eval_views, seed=1)
        calibrated = {_digest(p) for p in folder.iterdir() if p.is_file()} if folder else None
        digests = {name: _digest(path) for name, path in shipped.items()}
        inputs.append(photos.inputs)
        names += photos.names
        # Without a folder, calibration used these very photos.
        seen += [calibrated is None or digests[n.split("#")[0]] in calibrated for n in photos.names]
    if folder is not None:
        own = folder_images(folder, spec, views=1)
        inputs.append(own.inputs)
        names += [f"{folder.name}/{n}" for n in own.names]
        seen += [True] * len(own)
    if not inputs:
        raise CalibrationDataError(
            "no shipped photograph to evaluate on: install scikit-image and scikit-learn "
            "(the dev extra), or give --images DIR"
        )
    sources = ["every shipped photograph"] if shipped else []
    if folder is not None:
        sources.append(f"the images in {folder}")
    return ImageSet(
        np.concatenate(inputs),
        tuple(names),
        None,
        {
            "source": " and ".join(sources),
            "images": len(names),
            "views_per_photo": options.eval_views,
            "how_chosen": (
                "each image as the server preprocesses it; each shipped photo also mirrored "
                "and cropped at random (30-100 % of the area, seed 1), through the model's own "
                "preprocessing"
            ),
            "in_calibration": seen,
        },
    )


def image_sets(card: dict[str, Any], options: QuantizeOptions) -> tuple[ImageSet, ImageSet]:
    """(calibration, evaluation) images for the model described by ``card``."""
    spec = InputSpec.model_validate(card["input"])
    dataset = options.dataset or (card.get("dataset") if card.get("dataset") in DATASETS else None)
    folder = (
        folder_images(options.images, spec, views=options.views)
        if options.images is not None
        else None
    )
    if dataset is not None:
        calibration, evaluation = dataset_images(
            dataset,
            spec,
            calibration_size=options.calibration_size,
            eval_size=options.eval_size,
        )
        return (folder or calibration), evaluation
    calibration = folder or photo_images(spec, views=options.views)
    return calibration, _photo_evaluation(spec, options)
