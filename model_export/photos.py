"""Real photographs shipped inside installed packages (never downloaded).

scikit-image ships chelsea (a cat), coffee, astronaut, rocket and a motorcycle stereo pair;
scikit-learn ships china.jpg and flower.jpg. Used to verify exports of ImageNet models and
by the tests.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["photo_paths"]

_SKIMAGE = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png")
_SKLEARN = ("china.jpg", "flower.jpg")


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent if spec and spec.origin else None


def photo_paths() -> dict[str, Path]:
    """Name (file stem) -> path of every bundled photo found in the installed packages."""
    found: dict[str, Path] = {}
    for package, folder, names in (
        ("skimage", "data", _SKIMAGE),
        ("sklearn", "datasets/images", _SKLEARN),
    ):
        root = _package_dir(package)
        for name in names:
            if root and (root / folder / name).is_file():
                found[Path(name).stem] = root / folder / name
    return found
