"""Image bytes -> model input: decode safely, then colour, resize and normalise per model.json.

Safety first: the canvas size is read from the header and checked against the pixel limit
before any pixel is decoded; truncated files are refused (Pillow's LOAD_TRUNCATED_IMAGES
stays off); animated images give their first frame; EXIF orientation is applied.
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from service.errors import ImageTooLargeError, InvalidImageError
from service.model_card import InputSpec

__all__ = [
    "ACCEPTED_FORMATS",
    "decode_image",
    "load_image",
    "open_image",
    "preprocess",
    "to_tensor",
]

ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"})
_FORMATS = tuple(sorted(ACCEPTED_FORMATS))
_HIGH_DEPTH_MODES = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0}


@contextlib.contextmanager
def _decoding() -> Iterator[None]:
    """Pillow's many ways of failing on bad bytes, as the service's two image errors."""
    try:
        yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"the image declares too many pixels: {exc}") from None
    except UnidentifiedImageError:
        raise InvalidImageError(
            "the data is not an image in an accepted format "
            f"({', '.join(sorted(ACCEPTED_FORMATS))})"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, struct.error) as exc:
        raise InvalidImageError(f"the image could not be decoded: {exc}") from None


def open_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Read only the header: an accepted format, a canvas within ``max_pixels``. No pixel is
    decoded yet (``load_image`` does that), so ``image.size`` tells what decoding will cost."""
    if not data:
        raise InvalidImageError("the image is empty (0 bytes)")
    with _decoding():
        with warnings.catch_warnings():  # Pillow only checks for bombs when it opens
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_FORMATS)
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
        return image


def load_image(image: Image.Image) -> Image.Image:
    """Decode an image from ``open_image``: its first frame, EXIF orientation applied."""
    with _decoding():
        image.seek(0)  # the first frame of an animation
        image.load()
        # exif_transpose returns a copy even when there is nothing to turn: skip it then.
        if image.getexif().get(ExifTags.Base.Orientation, 1) == 1:
            return image
        return ImageOps.exif_transpose(image) or image


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode one image, refusing bombs, truncation and formats we do not accept."""
    return load_image(open_image(data, max_pixels=max_pixels))


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
    # Resize the shorter side (torchvision's Resize(int)), then take the centre. Only the
    # crop window is resampled (``box``): resizing the whole image first would let a thin
    # strip (1 x 40M pixels, a few hundred bytes of PNG) demand gigabytes.
    shorter = spec.resize_shorter or min(height, width)
    w, h = image.size
    new_w, new_h = (shorter, int(shorter * h / w)) if w <= h else (int(shorter * w / h), shorter)
    top, left = round((new_h - height) / 2.0), round((new_w - width) / 2.0)
    # The window in resized coordinates, clipped to the resized image; the rest is padding.
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + width, new_w), min(top + height, new_h)
    if (new_w, new_h) == (w, h):
        window = image.crop((x0, y0, x1, y1))
    else:
        sx, sy = w / new_w, h / new_h
        box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
        window = image.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR, box=box)
    if window.size == (width, height):
        return window
    canvas = Image.new(window.mode, (width, height), 0)
    canvas.paste(window, (x0 - left, y0 - top))
    return canvas


# id(spec) -> (spec, scale, offset); the spec is kept so that its id is never reused.
_NORMALISATION: dict[int, tuple[InputSpec, np.ndarray, np.ndarray]] = {}


def _normalisation(spec: InputSpec) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset), shaped (C, 1, 1): pixel * scale - offset == (pixel / 255 - mean) / std.
    Cached per spec object (hashing a pydantic model per image costs more than this)."""
    cached = _NORMALISATION.get(id(spec))
    if cached is None or cached[0] is not spec:
        std = np.asarray(spec.std, dtype=np.float32)
        scale = (1.0 / (std * 255.0)).astype(np.float32).reshape(-1, 1, 1)
        offset = (np.asarray(spec.mean, dtype=np.float32) / std).reshape(-1, 1, 1)
        if len(_NORMALISATION) > 256:  # specs come from model cards: a handful, unless reloaded
            _NORMALISATION.clear()
        cached = _NORMALISATION[id(spec)] = (spec, scale, offset)
    return cached[1], cached[2]


def to_tensor(image: Image.Image, spec: InputSpec, *, out: np.ndarray | None = None) -> np.ndarray:
    """A decoded image as the model's (C, H, W) float32 input, written into ``out`` (a row of
    a batch, say) when given: one pass from the uint8 pixels, no intermediate copies."""
    image = _resize(_to_mode(image, spec.color_mode), spec)
    pixels = np.asarray(image)
    hwc = pixels[:, :, None] if pixels.ndim == 2 else pixels
    if out is None:
        out = np.empty((hwc.shape[2], hwc.shape[0], hwc.shape[1]), dtype=np.float32)
    scale, offset = _normalisation(spec)
    np.multiply(hwc.transpose(2, 0, 1), scale, out=out)
    out -= offset
    return out


def preprocess(data: bytes, spec: InputSpec, *, max_pixels: int) -> np.ndarray:
    """Bytes of one image -> (C, H, W) float32, or a domain error."""
    return to_tensor(decode_image(data, max_pixels=max_pixels), spec)
