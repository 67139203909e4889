"""Regenerate the web page's bundled sample images under service/static/samples/.

    .venv/bin/python tests/browser/make_samples.py

Fashion-MNIST: the first test image of a few classes, as 28x28 grey PNGs (light objects on
black, exactly as the dataset stores them). Photos for mobilenetv2-imagenet: scikit-image's
chelsea, coffee and motorcycle_left, the shorter side scaled to 256 pixels (what the model's
centre crop starts from) and saved as JPEGs of at most 60 KB. ``samples.json`` lists them
for the page. The output is deterministic: running it twice gives the same bytes.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from model_export.datasets import FASHION_LABELS, load_fashion_mnist

__all__ = ["FASHION_PICKS", "PHOTOS", "main"]

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "service" / "static" / "samples"
# Dataset class numbers; the first test image of each becomes a sample.
FASHION_PICKS = (9, 1, 2, 3, 7, 8)
# scikit-image file name -> (sample name, title).
PHOTOS = {
    "chelsea.png": ("chelsea.jpg", "Cat"),
    "coffee.png": ("coffee.jpg", "Coffee"),
    "motorcycle_left.png": ("motorcycle.jpg", "Motorcycle"),
}
MAX_JPEG_BYTES = 60_000
PHOTO_SHORTER_SIDE = 256


def _fashion_test_set() -> tuple[np.ndarray, np.ndarray]:
    test = load_fashion_mnist().test
    return test.images, test.labels


def _slug(label: str) -> str:
    return label.lower().replace("/", "-").replace(" ", "-")


def _fashion_samples() -> list[dict[str, str]]:
    images, labels = _fashion_test_set()
    entries = []
    for cls in FASHION_PICKS:
        index = int(np.flatnonzero(labels == cls)[0])
        name = f"fashion-{_slug(FASHION_LABELS[cls])}.png"
        Image.fromarray(images[index], "L").save(OUT / name, format="PNG", optimize=True)
        entries.append(
            {
                "file": name,
                "title": FASHION_LABELS[cls],
                "caption": f"Fashion-MNIST test image #{index}",
                "dataset": "fashion-mnist",
            }
        )
    return entries


def _jpeg_under_limit(image: Image.Image) -> bytes:
    for quality in range(88, 40, -4):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality, optimize=True)
        if buffer.tell() <= MAX_JPEG_BYTES:
            return buffer.getvalue()
    raise ValueError("could not fit the photo in the size limit")


def _photo_samples() -> list[dict[str, str]]:
    import skimage

    data_dir = Path(skimage.__file__).parent / "data"
    entries = []
    for source, (name, title) in PHOTOS.items():
        image = Image.open(data_dir / source).convert("RGB")
        width, height = image.size
        factor = PHOTO_SHORTER_SIDE / min(width, height)
        if factor < 1:
            size = (round(width * factor), round(height * factor))
            image = image.resize(size, Image.Resampling.LANCZOS)
        (OUT / name).write_bytes(_jpeg_under_limit(image))
        caption = f"scikit-image's {source.removesuffix('.png')}"
        entries.append({"file": name, "title": title, "caption": caption, "dataset": "imagenet"})
    return entries


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    entries = _fashion_samples() + _photo_samples()
    manifest = {"samples": entries}
    (OUT / "samples.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for entry in entries:
        print(f"{entry['file']:28} {(OUT / entry['file']).stat().st_size:7} bytes")


if __name__ == "__main__":
    main()
