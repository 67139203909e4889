"""Real photographs to check imported models on (never downloaded).

The service ships three (chelsea, coffee, motorcycle: service/static/samples), so a `make
serve` install always has some; scikit-image ships chelsea (a cat), coffee, astronaut, rocket
and a motorcycle stereo pair, and scikit-learn china.jpg and flower.jpg, used where installed
(the tests, the reports).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path

__all__ = ["SKIMAGE_PHOTOS", "SKLEARN_PHOTOS", "find_photos", "photo_paths"]

_SERVICE = ("chelsea.jpg", "coffee.jpg", "motorcycle.jpg")
_SKIMAGE = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
# Every natural photograph scikit-image ships (camera, microscope, telescope; not its drawings,
# synthetic patterns or masks), and scikit-learn's two: calibration and out-of-distribution
# sets draw from these.
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "clock_motion.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "microaneurysms.png",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
)


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent if spec and spec.origin else None


def find_photos(sources: Iterable[tuple[str, str, tuple[str, ...]]]) -> dict[str, Path]:
    """Name (file stem) -> path of each photo found, from (package, folder inside it, file
    names) sources; a package not installed adds none, a later source wins a shared name."""
    found: dict[str, Path] = {}
    for package, folder, names in sources:
        root = _package_dir(package)
        for name in names:
            if root and (root / folder / name).is_file():
                found[Path(name).stem] = root / folder / name
    return found


def photo_paths() -> dict[str, Path]:
    """Name (file stem) -> path of every photo found: the service's samples, then those of
    scikit-image and scikit-learn where installed (they win for a shared name)."""
    return find_photos(
        (
            ("service", "static/samples", _SERVICE),
            ("skimage", "data", _SKIMAGE),
            ("sklearn", "datasets/images", SKLEARN_PHOTOS),
        )
    )
