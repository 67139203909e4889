"""Turn whatever the caller calls an image into a file upload: name, bytes, media type."""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeAlias

import numpy as np

from cnn_client._png import encode_png

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = ["ImageInput", "Upload", "to_upload"]

ImageInput: TypeAlias = (
    "str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | PILImage"
    " | np.ndarray[Any, Any]"
)
"""A path, encoded image bytes, a binary file object, a PIL image or a uint8 array."""

# (magic prefix, media type, file extension), checked in order.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png", ".png"),
    (b"\xff\xd8\xff", "image/jpeg", ".jpg"),
    (b"GIF87a", "image/gif", ".gif"),
    (b"GIF89a", "image/gif", ".gif"),
    (b"BM", "image/bmp", ".bmp"),
    (b"II*\x00", "image/tiff", ".tif"),
    (b"MM\x00*", "image/tiff", ".tif"),
)


@dataclass(frozen=True)
class Upload:
    """One multipart ``file`` part."""

    filename: str
    content: bytes
    content_type: str

    def as_file(self) -> tuple[str, bytes, str]:
        return (self.filename, self.content, self.content_type)


def sniff(content: bytes) -> tuple[str, str]:
    """The media type and extension that the leading bytes say, or octet-stream."""
    for magic, media_type, extension in _SIGNATURES:
        if content.startswith(magic):
            return media_type, extension
    if content[:4] == b"RIFF" and content[8:12] == b"WEBP":
        return "image/webp", ".webp"
    return "application/octet-stream", ""


def _from_bytes(content: bytes, filename: str | None, index: int) -> Upload:
    media_type, extension = sniff(content)
    return Upload(filename or f"image-{index}{extension}", content, media_type)


def _pil_image_class() -> type | None:
    # Only a caller who imported Pillow can pass a PIL image, so never import it here.
    module = sys.modules.get("PIL.Image")
    return getattr(module, "Image", None) if module is not None else None


def _from_pil(image: Any, index: int) -> Upload:
    if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    name = Path(getattr(image, "filename", "") or "").stem or f"image-{index}"
    return Upload(f"{name}.png", buffer.getvalue(), "image/png")


def _from_file(file: Any, index: int) -> Upload:
    content = file.read()
    if not isinstance(content, bytes | bytearray):
        raise TypeError("image file objects must be opened in binary mode ('rb')")
    name = getattr(file, "name", None)
    filename = os.path.basename(name) if isinstance(name, str) and name else None
    return _from_bytes(bytes(content), filename, index)


def to_upload(image: ImageInput, index: int = 0) -> Upload:
    """Read or encode one image; arrays and PIL images are sent as lossless PNG.

    ``index`` names uploads that carry no filename of their own (``image-3.png``).
    """
    if isinstance(image, np.ndarray):
        return Upload(f"image-{index}.png", encode_png(image), "image/png")
    pil_image = _pil_image_class()
    if pil_image is not None and isinstance(image, pil_image):
        return _from_pil(image, index)
    if isinstance(image, bytes | bytearray | memoryview):
        return _from_bytes(bytes(image), None, index)
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        return _from_bytes(path.read_bytes(), path.name, index)
    if hasattr(image, "read"):
        return _from_file(image, index)
    raise TypeError(
        "an image must be a path, bytes, a binary file object, a PIL image or a numpy array, "
        f"not {type(image).__name__}"
    )
