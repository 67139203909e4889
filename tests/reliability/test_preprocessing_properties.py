"""Properties of the preprocessing, for every committed model's input spec (hypothesis).

1. Any image Pillow can encode, of any mode and size within the limits, decodes to a finite
   (C, H, W) float32 tensor of the model's shape, in bounded time (thin strips included).
2. Any byte string (random, or a real image with bytes flipped, cut or spliced) gives that,
   or a domain error (invalid_image, image_too_large): never another exception.
"""

from __future__ import annotations

import io
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from reliability_kit import Summary
from testkit import MODELS

from service.errors import ImageTooLargeError, InvalidImageError
from service.model_card import InputSpec, load_card
from service.preprocessing import preprocess

SPECS: dict[str, InputSpec] = {
    path.parent.name: load_card(path).input for path in sorted(MODELS.glob("*/model.json"))
}
MAX_PIXELS = 40_000_000
# Modes Pillow decodes from the accepted formats, and the formats that can hold each.
MODES = {
    "1": ["PNG", "BMP", "TIFF", "GIF"],
    "L": ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"],
    "LA": ["PNG", "TIFF"],
    "P": ["PNG", "BMP", "GIF", "TIFF"],
    "RGB": ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"],
    "RGBA": ["PNG", "WEBP", "TIFF"],
    "CMYK": ["JPEG", "TIFF"],
    "YCbCr": ["JPEG", "TIFF"],
    "I;16": ["PNG", "TIFF"],
    "I": ["TIFF", "PNG"],
    "F": ["TIFF"],
}
COUNTS: dict[str, int] = {}
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _check(tensor: np.ndarray, spec: InputSpec) -> None:
    assert tensor.dtype == np.float32
    assert tensor.shape == (spec.channels, *spec.size)
    assert np.isfinite(tensor).all()


@st.composite
def images(draw: st.DrawFn) -> tuple[str, str, int, int, int]:
    """(mode, format, width, height, seed): small to print when a case fails."""
    mode = draw(st.sampled_from(sorted(MODES)))
    fmt = draw(st.sampled_from(MODES[mode]))
    thin = draw(st.booleans())  # strips and needles as well as ordinary pictures
    width = draw(st.integers(1, 40_000 if thin else 300))
    height = draw(st.integers(1, 3 if thin else 300))
    if draw(st.booleans()):
        width, height = height, width
    return mode, fmt, width, height, draw(st.integers(0, 2**32 - 1))


def encode(mode: str, fmt: str, width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    elif mode == "I":
        image = Image.fromarray(rng.integers(-(2**31), 2**31 - 1, (height, width), dtype=np.int32))
    elif mode == "F":
        scale = [1.0, 1e6, 1e30][seed % 3]
        image = Image.fromarray(rng.normal(0, scale, (height, width)).astype(np.float32), "F")
    else:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels, "RGB").convert(mode)
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        assume(False)  # Pillow cannot write this mode in this format: not an input
    return buffer.getvalue()


# The deadline is part of the property: a few hundred bytes must never buy seconds of work.
@settings(
    max_examples=300, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow]
)
@given(image=images(), model=st.sampled_from(sorted(SPECS)))
def test_any_decodable_image_gives_a_finite_tensor_of_the_models_shape(
    image: tuple[str, str, int, int, int], model: str
) -> None:
    _check(preprocess(encode(*image), SPECS[model], max_pixels=MAX_PIXELS), SPECS[model])
    COUNTS["decodable"] = COUNTS.get("decodable", 0) + 1


def _seed_images() -> list[bytes]:
    gradient = np.linspace(0, 255, 40 * 30, dtype=np.uint8).reshape(30, 40)
    picture = Image.fromarray(np.stack([gradient, gradient[::-1], 255 - gradient], -1))
    seeds = []
    for fmt, options in (
        ("PNG", {}),
        ("JPEG", {"quality": 80}),
        ("WEBP", {}),
        ("GIF", {}),
        ("TIFF", {}),
        ("BMP", {}),
        ("JPEG", {"progressive": True}),
        ("PNG", {"save_all": True, "append_images": [picture.rotate(90)]}),
    ):
        buffer = io.BytesIO()
        picture.save(buffer, format=fmt, **options)
        seeds.append(buffer.getvalue())
    return seeds


SEEDS = _seed_images()


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    how = draw(st.sampled_from(["random", "flip", "truncate", "splice", "header"]))
    if how == "random":
        return draw(st.binary(max_size=4096))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    if how == "flip":
        for _ in range(draw(st.integers(1, 16))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif how == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif how == "splice":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=256))
    else:  # rewrite the first 64 bytes, where formats keep their sizes and offsets
        head = draw(st.binary(min_size=1, max_size=64))
        data[8 : 8 + len(head)] = head
    return bytes(data)


@settings(
    max_examples=1000, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow]
)
@given(data=hostile_bytes(), model=st.sampled_from(sorted(SPECS)))
def test_any_bytes_give_a_tensor_or_a_domain_error(data: bytes, model: str) -> None:
    spec = SPECS[model]
    try:
        tensor = preprocess(data, spec, max_pixels=MAX_PIXELS)
    except (InvalidImageError, ImageTooLargeError):
        COUNTS["refused"] = COUNTS.get("refused", 0) + 1
        return
    _check(tensor, spec)
    COUNTS["accepted"] = COUNTS.get("accepted", 0) + 1


def test_record_the_properties(summary: Summary) -> None:
    summary.row(
        "properties/preprocessing",
        area="property tests",
        tried=f"hypothesis: decodable images of {len(MODES)} modes in 6 formats, any size "
        f"within limits, for {len(SPECS)} models; random and mutated bytes",
        held=True,
        decodable_examples=COUNTS.get("decodable", 0),
        byte_examples_refused=COUNTS.get("refused", 0),
        byte_examples_accepted=COUNTS.get("accepted", 0),
    )
