"""The structure walk: real images of every format pass, crafted structures are refused."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import costly_inputs as crafted
import numpy as np
import pytest
from PIL import Image

from service.errors import ImageTooLargeError
from service.imagescan import (
    MAX_EXIF_BYTES,
    MAX_JPEG_SCANS,
    MAX_METADATA_BYTES,
    MIN_PIECES,
    check_structure,
)

SAMPLES = Path(__file__).resolve().parents[2] / "service" / "static" / "samples"


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise(width: int, height: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    array = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(array[:, :, 0] if channels == 1 else array, mode)


def _valid() -> dict[str, bytes]:
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "camera" * 100
    frames = [noise(64, 64, "L"), noise(64, 64, "L")]
    return {
        "png": encode(noise(300, 200), "PNG"),
        "png-small-idat": encode(noise(256, 256), "PNG", optimize=False),
        "png-text": encode(noise(64, 64), "PNG", pnginfo=_pnginfo(40)),
        "apng": encode(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "jpeg": encode(noise(640, 480), "JPEG", exif=exif),
        "jpeg-progressive": encode(noise(640, 480), "JPEG", progressive=True),
        "gif-animated": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "tiff-strips": encode(noise(500, 400), "TIFF"),
        "tiff-deflate": encode(noise(500, 400), "TIFF", compression="tiff_adobe_deflate"),
        "webp": encode(noise(200, 100), "WEBP", exif=exif),
        "bmp": encode(noise(50, 40), "BMP"),
        **{path.name: path.read_bytes() for path in SAMPLES.glob("*.*") if path.suffix != ".json"},
    }


def _pnginfo(chunks: int) -> object:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for i in range(chunks):
        info.add_text(f"key{i}", "value " * 50, zip=i % 2 == 0)
    return info


@pytest.mark.parametrize(("name", "data"), sorted(_valid().items()))
def test_real_images_of_every_format_pass(name: str, data: bytes) -> None:
    check_structure(data)  # raises on a refusal
    Image.open(io.BytesIO(data)).load()  # and they are what they say


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (crafted.png_exif_rationals(20_000), f"the limit is {MAX_EXIF_BYTES}"),
        (crafted.tiff_strips(MIN_PIECES + 1), "strips or tiles"),
        (crafted.jpeg_app_segments(MIN_PIECES + 1), "segments"),
        (crafted.gif_comment_subblocks(MIN_PIECES + 1), "sub-blocks"),
    ],
    ids=["png-exif", "tiff-strips", "jpeg-segments", "gif-sub-blocks"],
)
def test_crafted_structures_are_refused(data: bytes, fragment: str) -> None:
    with pytest.raises(ImageTooLargeError, match=fragment) as caught:
        check_structure(data)
    assert caught.value.detail["limit"] > 0


def test_pieces_scale_with_pixels() -> None:
    """A large image may have more pieces (one per 1024 pixels): a 2000x2000 TIFF with one
    row per strip passes; the same strip count on an 8x8 canvas does not."""
    big = encode(noise(2000, 2000, "L"), "TIFF", compression="tiff_adobe_deflate")
    check_structure(big)
    with pytest.raises(ImageTooLargeError):
        check_structure(crafted.tiff_strips(2000))


def test_metadata_bytes_are_bounded() -> None:
    chunk = crafted._chunk(b"tEXt", b"k\x00" + b"v" * (MAX_METADATA_BYTES // 4))
    data = crafted._png_with([chunk] * 5)
    with pytest.raises(ImageTooLargeError, match="metadata"):
        check_structure(data)


def test_progressive_scans_are_bounded() -> None:
    data = encode(noise(64, 64), "JPEG", progressive=True)
    scan = data.index(b"\xff\xda")
    many = data[:scan] + data[scan:-2] + b"\xff\xda\x00\x02" * MAX_JPEG_SCANS + data[-2:]
    with pytest.raises(ImageTooLargeError, match="scans"):
        check_structure(many)


@pytest.mark.parametrize("name", sorted(_valid()))
def test_truncation_never_raises_from_the_walk(name: str) -> None:
    """Cut anywhere, a file is either refused by a limit or left to Pillow: the walk itself
    never fails with a parsing error of its own."""
    data = _valid()[name]
    for end in range(0, min(len(data), 4096), 7):
        with contextlib.suppress(ImageTooLargeError):
            check_structure(data[:end])
