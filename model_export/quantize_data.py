"""Calibration and evaluation images for `cnnserve quantize`, as the model itself sees them.

Every image goes through the model's own preprocessing (``service.preprocessing``, the
resize, colour and normalisation of its model.json), so calibration ranges are those of
the tensors the server will feed. Three sources:

- a labelled dataset (Fashion-MNIST, the MNIST subset): calibration on its validation split,
  evaluation on its test split;
- a folder of the user's images (``--images DIR``): calibration on them, with flipped and
  cropped views to widen what a handful of files can show;
- the real photographs that ship inside installed packages (scikit-image, scikit-learn,
  matplotlib): calibration for ImageNet models when no folder is given, and evaluation of
  any unlabelled model, one canonical view per photo, as served.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader
from PIL import Image, ImageOps

from model_export.photos import SKIMAGE_PHOTOS, SKLEARN_PHOTOS, find_photos
from model_export.quantize_errors import CalibrationDataError
from service.errors import ServiceError
from service.model_card import InputSpec
from service.preprocessing import decode_image, to_tensor

__all__ = [
    "ArrayReader",
    "ImageSet",
    "dataset_images",
    "folder_images",
    "photo_images",
    "shipped_photos",
]

MAX_PIXELS = 40_000_000  # the service's default per-image limit
# Natural photographs (camera, microscope, telescope) shipped inside installed packages;
# drawings, synthetic patterns and masks are left out. Grey ones become RGB like any upload.
_PHOTOS = (
    ("skimage", "data", SKIMAGE_PHOTOS),
    ("sklearn", "datasets/images", SKLEARN_PHOTOS),
    ("matplotlib", "mpl-data/sample_data", ("grace_hopper.jpg",)),
)


@dataclass(frozen=True)
class ImageSet:
    """Model inputs (N, C, H, W) float32, with their names, labels if known, and provenance."""

    inputs: np.ndarray
    names: tuple[str, ...]
    labels: np.ndarray | None = None
    description: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.inputs)

    def head(self, n: int) -> ImageSet:
        labels = None if self.labels is None else self.labels[:n]
        return ImageSet(self.inputs[:n], self.names[:n], labels, self.description)


class ArrayReader(CalibrationDataReader):
    """ONNX Runtime's calibration reader over an array, at most ``batch`` images per call.

    Every call gets the same number of images (the largest divisor of the count up to
    ``batch``): the histogram calibrators (entropy, percentile) stack the batches and fail
    on a ragged last one.
    """

    def __init__(self, input_name: str, inputs: np.ndarray, *, batch: int = 32) -> None:
        batch = max(d for d in range(1, min(batch, len(inputs)) + 1) if len(inputs) % d == 0)
        self._feeds = [
            {input_name: inputs[start : start + batch]} for start in range(0, len(inputs), batch)
        ]
        self._iter: Iterator[dict[str, np.ndarray]] = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


def shipped_photos() -> dict[str, Path]:
    """Name (file stem) -> path of every photograph found in the installed packages."""
    return find_photos(_PHOTOS)


def _views(image: Image.Image, count: int, rng: np.random.Generator) -> list[Image.Image]:
    """The image, its mirror image, then random crops (30-100 % of the area, aspect 3:4 to
    4:3, half of them mirrored): what an upload of the same scene might look like."""
    views = [image, ImageOps.mirror(image)][:count]
    width, height = image.size
    while len(views) < count:
        area = width * height * rng.uniform(0.3, 1.0)
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        w = min(width, max(8, round(np.sqrt(area * aspect))))
        h = min(height, max(8, round(np.sqrt(area / aspect))))
        left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        crop = image.crop((left, top, left + w, top + h))
        views.append(ImageOps.mirror(crop) if rng.random() < 0.5 else crop)
    return views


def _views_text(views: int, seed: int) -> str:
    if views == 1:
        return ""
    text = "; per image the image and its mirror image"
    if views > 2:
        text += f" and {views - 2} random crops (30-100 % of the area, seed {seed})"
    return text


def _decode(path: Path) -> Image.Image | None:
    try:
        return decode_image(path.read_bytes(), max_pixels=MAX_PIXELS)
    except (OSError, ServiceError):
        return None


def _from_files(
    files: Mapping[str, Path], spec: InputSpec, *, views: int, seed: int
) -> tuple[list[np.ndarray], list[str], list[str]]:
    rng = np.random.default_rng(seed)
    tensors, names, skipped = [], [], []
    for name, path in files.items():
        image = _decode(path)
        if image is None:
            skipped.append(name)
            continue
        for i, view in enumerate(_views(image, views, rng)):
            tensors.append(to_tensor(view, spec))
            names.append(name if i == 0 else f"{name}#view{i}")
    return tensors, names, skipped


def folder_images(folder: Path, spec: InputSpec, *, views: int = 4, seed: int = 0) -> ImageSet:
    """Every decodable image file directly in ``folder`` (sorted by name), ``views`` views
    each; raises CalibrationDataError when there is none."""
    if not folder.is_dir():
        raise CalibrationDataError(f"--images {folder}: not a folder")
    files = {p.name: p for p in sorted(folder.iterdir()) if p.is_file()}
    tensors, names, skipped = _from_files(files, spec, views=views, seed=seed)
    if not tensors:
        raise CalibrationDataError(
            f"--images {folder}: no image in it could be decoded "
            f"({len(files)} file(s); PNG, JPEG, WebP, BMP, GIF and TIFF are read)"
        )
    description = {
        "source": f"the images in {folder}",
        "files": len(files) - len(skipped),
        "skipped_files": skipped,
        "views_per_image": views,
        "how_chosen": "every decodable file in the folder"
        + _views_text(views, seed)
        + ", each through the model's own preprocessing",
    }
    return ImageSet(np.stack(tensors), tuple(names), None, description)


def photo_images(spec: InputSpec, *, views: int = 1, seed: int = 0) -> ImageSet:
    """The shipped photographs (``shipped_photos``), ``views`` views each; the first view of
    each is the photo as the server would preprocess it."""
    photos = shipped_photos()
    tensors, names, skipped = _from_files(photos, spec, views=views, seed=seed)
    if not tensors:
        raise CalibrationDataError(
            "no shipped photograph found: install scikit-image and scikit-learn (the dev extra)"
        )
    description = {
        "source": "photographs shipped in scikit-image, scikit-learn and matplotlib",
        "files": len(photos) - len(skipped),
        "photos": sorted(set(photos) - set(skipped)),
        "views_per_image": views,
        "how_chosen": "every shipped photograph"
        + _views_text(views, seed)
        + ", each through the model's own preprocessing",
    }
    return ImageSet(np.stack(tensors), tuple(names), None, description)


def _normalised(images: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Dataset images (N, H, W uint8) as a grey float32 model's batch."""
    assert spec.mean is not None and spec.std is not None  # a float32 input has them
    mean, std = spec.mean[0], spec.std[0]
    return ((images.astype(np.float32) / 255.0 - mean) / std)[:, None].astype(np.float32)


def dataset_images(
    dataset: str, spec: InputSpec, *, calibration_size: int, eval_size: int | None, seed: int = 0
) -> tuple[ImageSet, ImageSet]:
    """(calibration, evaluation): a seeded sample of the validation split, and the first
    ``eval_size`` images of the test split (all of it when None), with their labels."""
    from model_export.datasets import Split, load_dataset

    if spec.color_mode != "L" or tuple(spec.size) != (28, 28):
        raise CalibrationDataError(
            f"{dataset} has 28x28 grey images; this model takes {spec.color_mode} {spec.size}"
        )
    data = load_dataset(dataset)
    order = np.random.default_rng(seed).permutation(len(data.val))[:calibration_size]
    calibration = ImageSet(
        _normalised(data.val.images[order], spec),
        tuple(f"val[{i}]" for i in order),
        data.val.labels[order],
        {
            "source": f"{dataset} validation split",
            "how_chosen": (
                f"{len(order)} images drawn without replacement (seed {seed}) from the "
                f"{len(data.val):,}-image validation split (never used for the test figures)"
            ),
        },
    )
    test = (
        data.test
        if eval_size is None
        else Split(data.test.images[:eval_size], data.test.labels[:eval_size])
    )
    evaluation = ImageSet(
        _normalised(test.images, spec),
        tuple(f"test[{i}]" for i in range(len(test))),
        test.labels,
        {"source": f"{dataset} test split", "images": len(test)},
    )
    return calibration, evaluation
