"""The benchmark inputs: the same PNG bytes for every server and for the in-process limit.

lenet5-fashion gets the first image of the official Fashion-MNIST test set (28x28 grey);
mobilenetv2-imagenet gets scikit-image's chelsea, resized to 256x256 so that decoding costs
the same for everyone and resizing is a real step (256 -> 224 crop, like torchvision).
Both are written once under ``benchmarks/results/raw/inputs`` and reused.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["MODELS", "RAMP_MS", "RAW", "REPO", "image_path", "model_repository", "source_tree"]

REPO = Path(__file__).resolve().parent.parent
RAW = REPO / "benchmarks" / "results" / "raw"
MODELS = ("lenet5-fashion", "mobilenetv2-imagenet")
CHELSEA_SIZE = (256, 256)
# About one request's service time on one core: the connections' first requests go out this
# far apart (benchmarks/multipart.lua), the server is busy from the start and the queue
# builds up as it would in a steady state.
RAMP_MS = {"lenet5-fashion": 1, "mobilenetv2-imagenet": 10}


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _fashion_png() -> bytes:
    from model_export.datasets import load_fashion_mnist

    images = load_fashion_mnist().test.images
    return _png(Image.fromarray(np.asarray(images[0], dtype=np.uint8).reshape(28, 28), "L"))


def _chelsea_png() -> bytes:
    from model_export.photos import photo_paths

    with Image.open(photo_paths()["chelsea"]) as photo:
        return _png(photo.convert("RGB").resize(CHELSEA_SIZE, Image.Resampling.BILINEAR))


def image_path(model: str) -> Path:
    """The PNG every server classifies for ``model`` (built on first use)."""
    path = RAW / "inputs" / f"{model}.png"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_fashion_png() if model.startswith("lenet5") else _chelsea_png())
    return path


def model_repository(model: str) -> Path:
    """A model folder holding only ``model`` (a link to models/<model>), so that every server
    loads the same single model and their memory figures compare."""
    root = RAW / "repos" / model
    link = root / model
    if not link.exists():
        root.mkdir(parents=True, exist_ok=True)
        link.symlink_to(REPO / "models" / model, target_is_directory=True)
    return root


def source_tree(ref: str) -> Path:
    """``service/`` as it was at ``ref``, in a folder to put first on PYTHONPATH."""
    target = RAW / f"ref-{ref}"
    if not (target / "service").is_dir():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "archive", "--format=tar", ref, "service"],
            cwd=REPO,
            check=True,
            capture_output=True,
        ).stdout
        archive_path = target / "service.tar"
        archive_path.write_bytes(archive)
        with tarfile.open(archive_path) as tar:
            tar.extractall(target, filter="data")
        archive_path.unlink()
    return target
