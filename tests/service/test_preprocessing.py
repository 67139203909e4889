"""Decoding and preprocessing: formats, colour modes, EXIF, crops, and refusals."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.errors import ImageTooLargeError, InvalidImageError
from service.model_card import InputSpec
from service.preprocessing import (
    DECODE_BYTES_PER_PIXEL,
    decode_image,
    open_image,
    preprocess,
    to_tensor,
)

GREY = InputSpec(color_mode="L", size=(28, 28), mean=(0.5,), std=(0.25,))
IMAGENET = InputSpec(
    color_mode="RGB",
    size=(224, 224),
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    resize="center-crop",
    resize_shorter=256,
)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def gradient(width: int = 64, height: int = 48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1), "RGB")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_every_accepted_format_decodes(fmt: str) -> None:
    image = decode_image(encode(gradient(), fmt), max_pixels=10**6)
    assert image.size == (64, 48)


def test_normalisation_uses_mean_and_std() -> None:
    white = Image.new("L", (28, 28), 255)
    tensor = to_tensor(white, GREY)
    assert tensor.shape == (1, 28, 28) and tensor.dtype == np.float32
    assert np.allclose(tensor, (1.0 - 0.5) / 0.25)


def test_center_crop_follows_torchvision() -> None:
    # A 512x256 (w x h) image: shorter side -> 256 leaves it as is; crop 224 from the centre.
    array = np.zeros((256, 512, 3), np.uint8)
    array[:, 256:] = 255  # right half white
    tensor = to_tensor(Image.fromarray(array), IMAGENET)
    assert tensor.shape == (3, 224, 224)
    column_means = tensor[0].mean(axis=0)
    assert column_means[:112].max() < 0 < column_means[112:].min()  # the edge is centred


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(encode(image, "JPEG", exif=exif), max_pixels=10**6)
    assert decoded.size == (20, 40)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "CMYK", "I;16", "1", "L"])
def test_colour_modes_convert(mode: str) -> None:
    base = gradient(32, 32)
    image = (
        base.convert(mode)
        if mode != "I;16"
        else Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257)
    )
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    decoded = decode_image(encode(image, fmt), max_pixels=10**6)
    for spec in (GREY, IMAGENET):
        tensor = to_tensor(decoded, spec)
        assert tensor.shape == (spec.channels, *spec.size)
        assert np.isfinite(tensor).all()


def test_sixteen_bit_greys_are_scaled_not_clipped() -> None:
    grey = np.asarray(gradient(32, 32).convert("L"), np.uint16)
    deep = Image.fromarray(grey * 257)
    assert deep.mode.startswith("I;16")
    tensor_16 = to_tensor(decode_image(encode(deep, "PNG"), max_pixels=10**6), GREY)
    tensor_8 = to_tensor(Image.fromarray(grey.astype(np.uint8), "L"), GREY)
    assert np.abs(tensor_16 - tensor_8).max() < 0.05


def test_transparent_pixels_become_black() -> None:
    image = Image.new("RGBA", (28, 28), (255, 255, 255, 0))
    tensor = to_tensor(decode_image(encode(image, "PNG"), max_pixels=10**6), GREY)
    assert np.allclose(tensor, (0.0 - 0.5) / 0.25)


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("L", (28, 28), 0), Image.new("L", (28, 28), 255)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert np.allclose(preprocess(data, GREY, max_pixels=10**6), -2.0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, I am text", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "could not be decoded|not an image"),
    ],
)
def test_garbage_is_an_invalid_image(data: bytes, message: str) -> None:
    with pytest.raises(InvalidImageError, match=message):
        decode_image(data, max_pixels=10**6)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "TIFF"])
def test_truncated_files_are_refused_not_padded(fmt: str) -> None:
    data = encode(gradient(256, 256), fmt)
    with pytest.raises(InvalidImageError):
        decode_image(data[: len(data) // 2], max_pixels=10**6)


def declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` (its pixels are an 8x8 image's)."""
    png = encode(Image.new("1", (8, 8)), "PNG")  # signature, then IHDR: its width, height
    ihdr = b"IHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big") + png[24:29]
    return png[:12] + ihdr + zlib.crc32(ihdr).to_bytes(4, "big") + png[33:]


def test_pixel_limit_is_checked_from_the_header_before_decoding() -> None:
    # Small files declaring huge canvases: refused from the header, never decoded.
    bomb = encode(Image.new("1", (7000, 7000)), "PNG")
    assert len(bomb) < 20_000
    with pytest.raises(ImageTooLargeError) as caught:
        decode_image(bomb, max_pixels=40_000_000)
    assert caught.value.detail == {"width": 7000, "height": 7000, "limit": 40_000_000}
    with pytest.raises(ImageTooLargeError) as caught:  # 900 M pixels: 10x Pillow's default
        decode_image(declaring(30000, 30000), max_pixels=40_000_000)
    assert caught.value.detail == {"width": 30000, "height": 30000, "limit": 40_000_000}


def test_the_pixel_limit_is_the_services_not_pillows() -> None:
    """``max_image_pixels`` above Pillow's process-wide default (89 M) means what it says,
    and no warning is raised on the way (the test runs with warnings as errors): the
    header of a 10,000 x 10,000 PNG opens within a 200 M limit, and is refused at 50 M."""
    declared = declaring(10_000, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_image(declared, max_pixels=200_000_000).size == (10_000, 10_000)
        with pytest.raises(ImageTooLargeError) as caught:
            open_image(declared, max_pixels=50_000_000)
    assert caught.value.detail == {"width": 10_000, "height": 10_000, "limit": 50_000_000}


def test_svg_and_other_formats_are_not_accepted() -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'
    with pytest.raises(InvalidImageError, match="accepted format"):
        decode_image(svg, max_pixels=10**6)
    with pytest.raises(InvalidImageError):
        decode_image(encode(gradient(), "PPM"), max_pixels=10**6)


_PEAK_SCRIPT = """
import re, sys
from pathlib import Path
from service.model_card import InputSpec
from service.preprocessing import decode_image, to_tensor

data, target = Path(sys.argv[1]).read_bytes(), sys.argv[2]
channels = 3 if target == "RGB" else 1
spec = InputSpec(color_mode=target, size=(224, 224), mean=(0.5,) * channels,
                 std=(0.25,) * channels, resize="center-crop", resize_shorter=256)

def status(key):
    text = Path("/proc/self/status").read_text()
    return int(re.search(key + r":\\s+(\\d+) kB", text).group(1)) * 1024

to_tensor(decode_image(data, max_pixels=10**8), spec)  # imports, first-use allocations
Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) is now the current RSS
before = status("VmRSS")
to_tensor(decode_image(data, max_pixels=10**8), spec)
print(status("VmHWM") - before)
"""


@pytest.mark.parametrize(
    ("mode", "fmt", "target", "turned"),
    [
        ("RGBA", "PNG", "RGB", False),
        ("LA", "PNG", "L", False),
        ("P", "PNG", "RGB", False),
        ("I;16", "PNG", "L", False),
        ("F", "TIFF", "L", False),
        ("CMYK", "JPEG", "RGB", False),
        ("RGB", "JPEG", "RGB", True),
    ],
)
def test_decoding_takes_at_most_the_stated_bytes_per_pixel(
    tmp_path: Path, mode: str, fmt: str, target: str, turned: bool
) -> None:
    """DECODE_BYTES_PER_PIXEL, which sizes the process-wide decoding budget, holds for the
    costliest colour modes and for an EXIF-turned photo: the peak memory of a second decode
    in a fresh process (the first pays for imports and first-use allocations)."""
    side = 3000
    if mode == "I;16":
        image = Image.fromarray(np.full((side, side), 20000, np.uint16))
    elif mode == "F":
        image = Image.fromarray(np.full((side, side), 0.5, np.float32))
    else:
        image = Image.new(mode, (side, side))
    exif = Image.Exif()
    if turned:
        exif[0x0112] = 6
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(encode(image, fmt, exif=exif))
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(path), target],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    per_pixel = int(result.stdout.strip()) / side**2
    assert per_pixel <= DECODE_BYTES_PER_PIXEL, f"{mode} {fmt}: {per_pixel:.1f} bytes per pixel"
