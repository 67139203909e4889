"""A minimal PNG encoder for uint8 arrays, so numpy images upload without Pillow."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import numpy.typing as npt

__all__ = ["encode_png"]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type by channel count: grey, grey + alpha, RGB, RGBA.
_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}


def _chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def encode_png(array: npt.NDArray[np.generic]) -> bytes:
    """Encode an HxW or HxWxC (C in 1..4) uint8 array as an 8-bit PNG, lossless."""
    if array.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    if array.ndim != 3 or array.shape[2] not in _COLOUR_TYPES:
        raise ValueError(
            f"image arrays must be HxW or HxWxC with C in 1..4, got shape {array.shape}"
        )
    height, width, channels = array.shape
    if height == 0 or width == 0:
        raise ValueError(f"image arrays must not be empty, got shape {array.shape}")
    # Each scanline starts with its filter type; 0 means "none".
    scanlines = np.zeros((height, 1 + width * channels), dtype=np.uint8)
    scanlines[:, 1:] = array.reshape(height, width * channels)
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPES[channels], 0, 0, 0)
    return b"".join(
        [
            _SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6)),
            _chunk(b"IEND", b""),
        ]
    )
