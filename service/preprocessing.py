"""Image bytes -> model input: decode safely, then colour, resize and normalise per model.json.

Safety first, and every step's cost bounded by the pixels it produces:

- the container's structure (chunks, segments, strips, metadata, EXIF) is checked before
  Pillow parses it (``service.imagescan``), and PNG text is capped at the same budget;
- the canvas size is read from the header and checked against the pixel limit before any
  pixel is decoded (the service's limit replaces Pillow's process-wide one); truncated
  files are refused (Pillow's LOAD_TRUNCATED_IMAGES stays off);
- animated images give their first frame; EXIF orientation is applied by a transposition,
  without re-serialising the EXIF block;
- the image is resized in its own colour mode where that is cheaper than converting it
  first (transparent and high-depth images), so a large upload is copied at most twice
  (peak memory about 12 bytes per decoded pixel: ``DECODE_BYTES_PER_PIXEL``);
- floating-point images must be finite: NaN or infinite pixels are refused.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import numpy as np
from PIL import ExifTags, Image, PngImagePlugin, UnidentifiedImageError

from service.errors import ImageTooLargeError, InvalidImageError
from service.imagescan import MAX_METADATA_BYTES, check_structure
from service.model_card import InputSpec

__all__ = [
    "ACCEPTED_FORMATS",
    "DECODE_BYTES_PER_PIXEL",
    "decode_image",
    "load_image",
    "open_image",
    "preprocess",
    "to_pixels",
    "to_tensor",
]

ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"})
# Peak bytes of memory per pixel while one image is decoded and preprocessed (the decoded
# canvas, one copy for a transposition or a premultiplied resize, a float32 view of a
# high-depth image), measured by tests/service/test_preprocessing.py.
DECODE_BYTES_PER_PIXEL = 12
_FORMATS = tuple(sorted(ACCEPTED_FORMATS))
_STRIP_PIXELS = 1 << 20  # a high-depth image is scanned this many pixels at a time
_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
_HIGH_DEPTH = _SIXTEEN_BIT | {"I", "F"}
# EXIF orientation -> the transposition that shows the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Decompressed PNG text (tEXt, zTXt, iTXt) per image: the same budget as other metadata
# (Pillow's default is 64 MiB, which 64 small PNGs turned into 4 GB).
PngImagePlugin.MAX_TEXT_MEMORY = MAX_METADATA_BYTES
# The pixel limit is the service's (``max_image_pixels``, checked by ``open_image`` as the
# header is read, where Pillow checks its own): Pillow's process-wide one would cap the
# setting at 89 M pixels, and its warning between 89 M and 179 M can only be made an error
# through the warnings filters, which are process-wide and not safe to change per image
# from the decode threads.
Image.MAX_IMAGE_PIXELS = None


class _Decoding:
    """Pillow's many ways of failing on bad bytes, as an invalid image (a class, not a
    generator: it wraps every image twice on the hot path)."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: Any
    ) -> None:
        if not isinstance(error, Exception):  # none, or a cancellation: through as it is
            return
        if isinstance(error, UnidentifiedImageError):
            raise InvalidImageError(
                "the data is not an image in an accepted format "
                f"({', '.join(sorted(ACCEPTED_FORMATS))})"
            ) from None
        if isinstance(error, _UNDECODABLE):
            raise InvalidImageError(f"the image could not be decoded: {error}") from None


_UNDECODABLE = (OSError, SyntaxError, ValueError, EOFError, TypeError, IndexError, struct.error)
_decoding = _Decoding()


def open_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Read only the header: an accepted format, a bounded structure, a canvas within
    ``max_pixels``. No pixel is decoded yet (``load_image`` does that), so ``image.size``
    tells what decoding will cost."""
    if not data:
        raise InvalidImageError("the image is empty (0 bytes)")
    check_structure(data)
    with _decoding:
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
    """Decode an image from ``open_image``: its first frame, shown upright (EXIF orientation
    applied as a transposition; the EXIF block is read, never re-encoded)."""
    with _decoding:
        image.seek(0)  # the first frame of an animation
        image.load()
        upright = _UPRIGHT.get(image.getexif().get(ExifTags.Base.Orientation, 1))
        if upright is None:
            return image
        turned = image.transpose(upright)
        image.close()  # the decoded canvas: one copy at a time
        return turned


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode one image, refusing bombs, truncation and formats we do not accept."""
    return load_image(open_image(data, max_pixels=max_pixels))


def _white_point(image: Image.Image) -> float:
    """The value a high-depth image's white maps from: 65535 for 16-bit; for 32-bit integer
    and float images their largest value (255 when an integer image stays within 8 bits).
    Float images with NaN or infinite pixels are refused. Read in strips of rows, so that no
    full-size copy of the image is made."""
    if image.mode in _SIXTEEN_BIT:
        return 65535.0
    width, height = image.size
    rows = max(1, _STRIP_PIXELS // width)
    top = -np.inf
    for y in range(0, height, rows):
        strip = np.asarray(image.crop((0, y, width, min(y + rows, height))))
        if image.mode == "F" and not np.isfinite(strip).all():
            raise InvalidImageError(
                "the image has NaN or infinite pixel values; floating-point images must be finite"
            )
        top = max(top, float(strip.max()))
    if image.mode == "I" and top <= 255:
        return 255.0
    return max(top, 1.0)


def _to_grey(image: Image.Image, white: float) -> Image.Image:
    """A (small) high-depth image as 8-bit grey, ``white`` mapped to 255, negatives to 0."""
    array = np.asarray(image, dtype=np.float32) * np.float32(255.0 / white)
    np.clip(array, 0, 255, out=array)
    return Image.fromarray(array.astype(np.uint8), "L")


def _resizable(image: Image.Image, target: str) -> Image.Image:
    """The image in a mode that is cheap to resize and exact to convert afterwards: L, LA,
    RGB, RGBA, or a high-depth mode (scaled to grey after resizing)."""
    mode = image.mode
    if mode in _HIGH_DEPTH or mode in ("L", "LA", "RGBA"):
        return image
    if mode == "RGB":  # a grey model: 1 byte per pixel to resize instead of 4
        return image.convert("L") if target == "L" else image
    if mode in ("P", "PA"):
        return image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
    if mode == "La":
        return image.convert("LA")
    if mode == "RGBa":
        return image.convert("RGBA")
    if mode == "1":
        return image.convert("L")
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV


def _on_black(image: Image.Image) -> Image.Image:
    """Transparency composited onto black (what the models saw in training: no alpha)."""
    if image.mode not in ("LA", "RGBA"):
        return image
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)


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
    """(scale, offset), shaped to broadcast over one input in the spec's layout:
    pixel * scale - offset == (pixel / 255 - mean) / std. Cached per spec object (hashing a
    pydantic model per image costs more than this)."""
    cached = _NORMALISATION.get(id(spec))
    if cached is None or cached[0] is not spec:
        assert spec.mean is not None and spec.std is not None  # a float32 spec has them
        shape = (-1, 1, 1) if spec.layout == "NCHW" else (1, 1, -1)
        std = np.asarray(spec.std, dtype=np.float32)
        scale = (1.0 / (std * 255.0)).astype(np.float32).reshape(shape)
        offset = (np.asarray(spec.mean, dtype=np.float32) / std).reshape(shape)
        if len(_NORMALISATION) > 256:  # specs come from model cards: a handful, unless reloaded
            _NORMALISATION.clear()
        cached = _NORMALISATION[id(spec)] = (spec, scale, offset)
    return cached[1], cached[2]


def to_tensor(image: Image.Image, spec: InputSpec, *, out: np.ndarray | None = None) -> np.ndarray:
    """A decoded image as one input of the model (``spec.shape()``, ``spec.numpy_dtype``),
    written into ``out`` (a row of a batch, say) when given: one pass from the uint8 pixels,
    no intermediate copies."""
    white = _white_point(image) if image.mode in _HIGH_DEPTH else None
    image = _resize(_resizable(image, spec.color_mode), spec)
    if white is not None:
        image = _to_grey(image, white)
    image = _on_black(image)
    if image.mode != spec.color_mode:
        image = image.convert(spec.color_mode)
    pixels = np.asarray(image)
    hwc = pixels[:, :, None] if pixels.ndim == 2 else pixels
    view = hwc.transpose(2, 0, 1) if spec.layout == "NCHW" else hwc
    if out is None:
        out = np.empty(view.shape, dtype=spec.numpy_dtype)
    if spec.dtype == "uint8":
        np.copyto(out, view)
        return out
    scale, offset = _normalisation(spec)
    np.multiply(view, scale, out=out)
    out -= offset
    return out


def to_pixels(tensor: np.ndarray, spec: InputSpec) -> np.ndarray:
    """One input of the model back as an image: (H, W, C) uint8 (normalisation undone)."""
    hwc = tensor.transpose(1, 2, 0) if spec.layout == "NCHW" else tensor
    if spec.dtype == "uint8":
        return np.ascontiguousarray(hwc)
    assert spec.mean is not None and spec.std is not None
    values = (hwc * np.asarray(spec.std) + np.asarray(spec.mean)) * 255.0
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def preprocess(data: bytes, spec: InputSpec, *, max_pixels: int) -> np.ndarray:
    """Bytes of one image -> one input of the model (``to_tensor``), or a domain error."""
    return to_tensor(decode_image(data, max_pixels=max_pixels), spec)
