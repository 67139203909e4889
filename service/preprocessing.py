"""Image bytes -> model input: decode safely, then colour, resize and normalise per model.json.

Safety first: the canvas size is read from the header and checked against the pixel limit
before any pixel is decoded; truncated files are refused (Pillow's LOAD_TRUNCATED_IMAGES
stays off); animated images give their first frame; EXIF orientation is applied.
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import ImageTooLargeError, InvalidImageError
from service.model_card import InputSpec

__all__ = ["ACCEPTED_FORMATS", "decode_image", "preprocess", "to_tensor"]

ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"})
_HIGH_DEPTH_MODES = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0}


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode one image, refusing bombs, truncation and formats we do not accept."""
    if not data:
        raise InvalidImageError("the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=sorted(ACCEPTED_FORMATS))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"the image is {width}x{height} = {width * height} pixels; "
                    f"the limit is {max_pixels}",
                    width=width,
                    height=height,
                    limit=max_pixels,
                )
            if width < 1 or height < 1:
                raise InvalidImageError(f"the image has no pixels ({width}x{height})")
            image.seek(0)  # the first frame of an animation
            image.load()
            return ImageOps.exif_transpose(image) or image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"the image declares too many pixels: {exc}") from None
    except UnidentifiedImageError:
        raise InvalidImageError(
            "the data is not an image in an accepted format "
            f"({', '.join(sorted(ACCEPTED_FORMATS))})"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, struct.error) as exc:
        raise InvalidImageError(f"the image could not be decoded: {exc}") from None


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Convert to "L" or "RGB": high-depth scaled, transparency composited onto black."""
    if image.mode in _HIGH_DEPTH_MODES or image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = _HIGH_DEPTH_MODES.get(image.mode) or max(float(array.max()), 1.0)
        if image.mode == "I" and array.max() <= 255:
            top = 255.0
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return image if image.mode == mode else image.convert(mode)


def _resize(image: Image.Image, spec: InputSpec) -> Image.Image:
    height, width = spec.size
    if spec.resize == "stretch":
        return (
            image
            if image.size == (width, height)
            else image.resize((width, height), Image.Resampling.BILINEAR)
        )
    # Resize the shorter side (torchvision's Resize(int)), then take the centre.
    shorter = spec.resize_shorter or min(height, width)
    w, h = image.size
    if (w <= h and w != shorter) or (h < w and h != shorter):
        new = (shorter, int(shorter * h / w)) if w <= h else (int(shorter * w / h), shorter)
        image = image.resize(new, Image.Resampling.BILINEAR)
    w, h = image.size
    top, left = round((h - height) / 2.0), round((w - width) / 2.0)
    if top < 0 or left < 0:
        image = ImageOps.pad(image, (max(w, width), max(h, height)), color=0)
        w, h = image.size
        top, left = (h - height) // 2, (w - width) // 2
    return image.crop((left, top, left + width, top + height))


def to_tensor(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """A decoded image as the model's (C, H, W) float32 input."""
    image = _resize(_to_mode(image, spec.color_mode), spec)
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    scale = np.asarray(spec.std, dtype=np.float32) * 255.0
    offset = np.asarray(spec.mean, dtype=np.float32) / np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray((array / scale - offset).transpose(2, 0, 1))


def preprocess(data: bytes, spec: InputSpec, *, max_pixels: int) -> np.ndarray:
    """Bytes of one image -> (C, H, W) float32, or a domain error."""
    return to_tensor(decode_image(data, max_pixels=max_pixels), spec)
