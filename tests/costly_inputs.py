"""Crafted inputs whose cost lies in their structure, not their size or their pixels.

Each builds real bytes a client could send, the way the red-team pass built them: small
canvases carrying millions of container pieces or metadata values, or tiny files declaring
huge canvases of zeros. The figures in the names are the issue's; the builders take them as
arguments so a test can scale a case.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

__all__ = [
    "gif_comment_subblocks",
    "jpeg_app_segments",
    "png",
    "png_exif_rationals",
    "png_text_chunks",
    "png_zeros",
    "thin_png",
    "tiff_float",
    "tiff_strips",
]


def png(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png_with(chunks: list[bytes], size: tuple[int, int] = (28, 28)) -> bytes:
    data = png(Image.new("L", size))
    ihdr_end = 8 + 25  # signature, then IHDR (length, type, 13 bytes, CRC)
    return data[:ihdr_end] + b"".join(chunks) + data[ihdr_end:]


def png_exif_rationals(count: int = 3_000_000) -> bytes:
    """A 28x28 PNG whose eXIf chunk holds ``count`` RATIONAL values and an orientation of 6
    (so the image must be turned, which made Pillow re-serialise the whole block)."""
    header = b"II*\x00" + struct.pack("<I", 8)
    values_at = 8 + 2 + 2 * 12 + 4
    entries = struct.pack("<H", 2)
    entries += struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0)  # Orientation = 6
    entries += struct.pack("<HHII", 0x9999, 5, count, values_at)  # a private RATIONAL tag
    exif = header + entries + struct.pack("<I", 0) + struct.pack("<II", 1, 1) * count
    return _png_with([_chunk(b"eXIf", exif)])


def png_text_chunks(chunks: int = 66, size: int = 1 << 20) -> bytes:
    """A 28x28 PNG with ``chunks`` zTXt chunks, each ``size`` bytes once decompressed (a
    kilobyte compressed)."""
    payload = zlib.compress(b"\x00" * size, 9)
    return _png_with([_chunk(b"zTXt", b"k%d\x00\x00" % i + payload) for i in range(chunks)])


def png_zeros(width: int, height: int, mode: str = "L") -> bytes:
    """A canvas of zeros: a few kilobytes that decode to ``width * height`` pixels."""
    return png(Image.new(mode, (width, height)))


def thin_png(pixels: int) -> bytes:
    """A 1 x ``pixels`` strip (tens of kilobytes of PNG; the decode costs every pixel)."""
    return png(Image.new("L", (pixels, 1)))


def jpeg_app_segments(count: int = 7_000_000) -> bytes:
    """An 8x8 JPEG preceded by ``count`` empty APP5 segments (4 bytes each)."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "JPEG")
    data = buffer.getvalue()
    return data[:2] + b"\xff\xe5\x00\x02" * count + data[2:]


def gif_comment_subblocks(count: int = 14_000_000) -> bytes:
    """An 8x8 GIF whose comment extension is ``count`` one-byte sub-blocks."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "GIF")
    data = buffer.getvalue()
    flags = data[10]
    start = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the colour table
    return data[:start] + b"\x21\xfe" + b"\x01a" * count + b"\x00" + data[start:]


def tiff_strips(count: int = 4_000_000) -> bytes:
    """An 8x8 grey TIFF cut into ``count`` strips (offsets and byte counts, 8 bytes each)."""
    entries = 8
    offsets_at = 8 + 2 + 12 * entries + 4
    counts_at = offsets_at + 4 * count
    pixels_at = counts_at + 4 * count

    def entry(tag: int, kind: int, n: int, value: int) -> bytes:
        return struct.pack("<HHII", tag, kind, n, value)

    ifd = struct.pack("<H", entries) + b"".join(
        [
            entry(256, 4, 1, 8),  # width
            entry(257, 4, 1, 8),  # height
            entry(258, 3, 1, 8),  # bits per sample
            entry(259, 3, 1, 1),  # no compression
            entry(262, 3, 1, 1),  # black is zero
            entry(273, 4, count, offsets_at),  # strip offsets
            entry(278, 4, 1, 1),  # rows per strip
            entry(279, 4, count, counts_at),  # strip byte counts
        ]
    )
    offsets = np.full(count, pixels_at, "<u4").tobytes()
    counts = np.ones(count, "<u4").tobytes()
    return (
        b"II*\x00"
        + struct.pack("<I", 8)
        + ifd
        + struct.pack("<I", 0)
        + offsets
        + counts
        + (b"\x00" * 64)
    )


def tiff_float(array: np.ndarray) -> bytes:
    """A 32-bit float grey TIFF of ``array`` (NaN and infinities allowed)."""
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.float32), "F").save(buffer, "TIFF")
    return buffer.getvalue()
