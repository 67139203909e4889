"""The benchmark inputs: the same PNG bytes for every server and for the in-process limit.

lenet5-fashion and resnet-fashion get the first image of the official Fashion-MNIST test set
(28x28 grey);
mobilenetv2-imagenet gets scikit-image's chelsea, resized to 256x256 so that decoding costs
the same for everyone and resizing is a real step (256 -> 224 crop, like torchvision).
Both are written once under ``benchmarks/results/raw/inputs`` and reused.
"""

from __future__ import annotations

import functools
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "MATRIX_MODELS",
    "MODELS",
    "RAMP_MS",
    "RAW",
    "REPO",
    "image_path",
    "model_repository",
    "source_tree",
]

REPO = Path(__file__).resolve().parent.parent
RAW = REPO / "benchmarks" / "results" / "raw"
MODELS = ("lenet5-fashion", "mobilenetv2-imagenet", "resnet-fashion")
MATRIX_MODELS = MODELS[:2]  # make bench's matrix; resnet-fashion is for FP32 against INT8
CHELSEA_SIZE = (256, 256)
# About one request's service time on one core: the connections' first requests go out this
# far apart (benchmarks/multipart.lua), the server is busy from the start and the queue
# builds up as it would in a steady state.
RAMP_MS = {"lenet5-fashion": 1, "mobilenetv2-imagenet": 10, "resnet-fashion": 2}


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
        path.write_bytes(_fashion_png() if model.endswith("-fashion") else _chelsea_png())
    return path


@functools.cache  # built once per run: servers started later find it as it was
def model_repository(model: str) -> Path:
    """A model folder holding only version 1 of ``model`` (links to models/<model>'s files),
    so that every server, the peers and cnnserve at any commit alike, runs the same FP32
    graph (cnnserve today serves model.json's ``default_version``, an INT8 version for some
    models; before that it served the highest) and their memory figures compare."""
    root = RAW / "repos" / model
    folder = root / model
    shutil.rmtree(root, ignore_errors=True)
    folder.mkdir(parents=True)
    source = REPO / "models" / model
    for path in source.iterdir():
        if path.name == "model.json":
            card = json.loads(path.read_text())
            card["versions"] = {k: v for k, v in card.get("versions", {}).items() if k == "1"}
            card["default_version"] = "1"
            (folder / path.name).write_text(json.dumps(card, indent=2) + "\n")
        elif path.is_file() or path.name == "1":
            (folder / path.name).symlink_to(path, target_is_directory=path.is_dir())
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
