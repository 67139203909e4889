"""The PNG encoder that lets numpy arrays upload without Pillow, checked by Pillow."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cnn_client._png import encode_png

MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def _decode(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


@pytest.mark.parametrize("channels", [None, 1, 2, 3, 4])
def test_round_trips_through_pillow_losslessly(channels: int | None) -> None:
    rng = np.random.default_rng(channels or 0)
    shape = (13, 29) if channels is None else (13, 29, channels)
    array = rng.integers(0, 256, size=shape, dtype=np.uint8)

    png = encode_png(array)
    Image.open(io.BytesIO(png)).verify()  # checks every chunk's CRC
    decoded = _decode(png)

    assert decoded.mode == MODES[channels or 1]
    assert decoded.size == (29, 13)
    expected = array if channels is None or channels > 1 else array[:, :, 0]
    np.testing.assert_array_equal(np.asarray(decoded), expected)


def test_encodes_a_real_photo() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    photo = skimage_data.chelsea()
    np.testing.assert_array_equal(np.asarray(_decode(encode_png(photo))), photo)


def test_encodes_non_contiguous_views() -> None:
    array = np.arange(64 * 48 * 3, dtype=np.uint32).astype(np.uint8).reshape(64, 48, 3)
    view = array[::2, ::-3]
    np.testing.assert_array_equal(np.asarray(_decode(encode_png(view))), view)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 4), dtype=np.float32), "uint8"),
        (np.zeros((4, 4, 5), dtype=np.uint8), "shape"),
        (np.zeros(16, dtype=np.uint8), "shape"),
        (np.zeros((0, 4), dtype=np.uint8), "empty"),
    ],
)
def test_rejects_what_png_cannot_hold(array: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_png(array)
