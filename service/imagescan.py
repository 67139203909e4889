"""Refuse image files whose structure, not their pixels, would make decoding expensive.

Pillow walks containers in Python: every PNG chunk, JPEG segment, GIF sub-block or TIFF strip
costs microseconds, and every EXIF value becomes a Python object. A file can therefore cost
seconds and gigabytes while declaring a handful of pixels (an 8x8 TIFF with four million
strips, a 28x28 PNG with three million EXIF rationals). The pixel limits bound what pixels
cost; ``check_structure`` bounds the rest, before Pillow sees the file, by walking the
container itself (lengths and counts only: nothing is decompressed or decoded) and stopping at
the first limit passed, so the walk costs O(limit), not O(file):

- pieces (chunks, segments, sub-blocks, IFD entries, strips, tiles, frames): at most
  ``max(MIN_PIECES, pixels // PIXELS_PER_PIECE)``, so their cost stays within that of
  decoding the pixels they carry;
- metadata (text, EXIF, ICC profiles, XMP, comments, unknown chunks): ``MAX_METADATA_BYTES``;
- EXIF: ``MAX_EXIF_BYTES``, what one JPEG segment can hold;
- JPEG scans: ``MAX_JPEG_SCANS`` (libjpeg passes over the image once per progressive scan).

Formats are told by their signature; anything else is left to Pillow, which refuses it.
Truncated or malformed containers stop the walk quietly: Pillow then says what is wrong.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass

from service.errors import ImageTooLargeError

__all__ = [
    "MAX_EXIF_BYTES",
    "MAX_JPEG_SCANS",
    "MAX_METADATA_BYTES",
    "MIN_PIECES",
    "PIXELS_PER_PIECE",
    "check_structure",
]

MIN_PIECES = 1024
PIXELS_PER_PIECE = 1024
MAX_METADATA_BYTES = 2 * 1024 * 1024
MAX_EXIF_BYTES = 64 * 1024
MAX_JPEG_SCANS = 128

# PNG chunks that carry pixels or a few bytes of colour facts: not counted as metadata.
_PNG_IMAGE_CHUNKS = frozenset(
    b"IHDR PLTE IDAT IEND tRNS gAMA cHRM sRGB sBIT pHYs bKGD acTL fcTL fdAT".split()
)
# TIFF field type -> bytes per value (BYTE, ASCII, SHORT, LONG, RATIONAL, ... LONG8, IFD8).
_TIFF_TYPE_SIZES = dict(
    zip(range(1, 19), (1, 1, 2, 4, 8, 1, 1, 2, 4, 8, 4, 8, 4, 1, 1, 8, 8, 8), strict=True)
)
# JPEG SOFn markers: the frame header, which holds the image size.
_JPEG_FRAMES = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)
_TIFF_PIECE_TAGS = frozenset({273, 279, 324, 325})  # strip and tile offsets and byte counts
_TIFF_EXIF_IFD = 34665


@dataclass
class _Walk:
    """What a walk has counted so far, checked against the limits as it grows."""

    format: str
    pixels: int = 0
    pieces: int = 0
    metadata: int = 0

    def piece_limit(self) -> int:
        return max(MIN_PIECES, self.pixels // PIXELS_PER_PIECE)

    def count(self, pieces: int = 1, *, what: str = "pieces") -> None:
        self.pieces += pieces
        limit = self.piece_limit()
        if self.pieces > limit:
            raise _refusal(
                f"the {self.format} file has more than {limit} {what} "
                f"(the limit for {self.pixels} pixels)",
                limit=limit,
                what=what,
            )

    def meta(self, size: int, *, what: str = "metadata") -> None:
        self.metadata += size
        if self.metadata > MAX_METADATA_BYTES:
            raise _refusal(
                f"the {self.format} file carries more than {MAX_METADATA_BYTES} bytes of "
                f"metadata ({what})",
                limit=MAX_METADATA_BYTES,
                what="metadata bytes",
            )

    def exif(self, size: int) -> None:
        if size > MAX_EXIF_BYTES:
            raise _refusal(
                f"the {self.format} file's EXIF block is {size} bytes; the limit is "
                f"{MAX_EXIF_BYTES}",
                limit=MAX_EXIF_BYTES,
                what="EXIF bytes",
            )
        self.meta(size, what="EXIF")


def _refusal(message: str, *, limit: int, what: str) -> ImageTooLargeError:
    return ImageTooLargeError(message, limit=limit, what=what)


def check_structure(data: bytes) -> None:
    """Raise ``ImageTooLargeError`` when the file's structure passes a limit (module doc)."""
    walkers: tuple[tuple[bytes, Callable[[bytes, _Walk], None], str], ...] = (
        (b"\x89PNG\r\n\x1a\n", _png, "PNG"),
        (b"\xff\xd8", _jpeg, "JPEG"),
        (b"GIF87a", _gif, "GIF"),
        (b"GIF89a", _gif, "GIF"),
        (b"II*\x00", _tiff, "TIFF"),
        (b"MM\x00*", _tiff, "TIFF"),
        (b"RIFF", _webp, "WebP"),
    )
    for signature, walk, name in walkers:
        if data.startswith(signature):
            with contextlib.suppress(struct.error):  # cut short: Pillow refuses it, saying why
                walk(data, _Walk(name))
            return
    # BMP has no pieces or metadata beyond a fixed header (and an ICC profile, which
    # Pillow does not read from BMP files).


def _png(data: bytes, walk: _Walk) -> None:
    position, end = 8, len(data)
    while position + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, position)
        walk.count(what="chunks")
        if kind == b"IHDR" and length >= 8:
            width, height = struct.unpack_from(">II", data, position + 8)
            walk.pixels = width * height
        elif kind == b"eXIf":
            walk.exif(length)
        elif kind not in _PNG_IMAGE_CHUNKS:
            walk.meta(length, what=kind.decode("latin-1"))
        if kind == b"IEND":
            return
        position += 12 + length


def _jpeg(data: bytes, walk: _Walk) -> None:
    position, end = 2, len(data)
    while position + 4 <= end:
        if data[position] != 0xFF:
            position += 1  # junk between segments: Pillow skips it byte by byte too
            walk.count(what="segments")
            continue
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            walk.count(what="segments")
            continue
        walk.count(what="segments")
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers
            position += 2
            continue
        (length,) = struct.unpack_from(">H", data, position + 2)
        if marker in _JPEG_FRAMES and position + 9 <= end:
            height, width = struct.unpack_from(">HH", data, position + 5)
            walk.pixels = width * height
        elif marker == 0xE1 and data.startswith(b"Exif\x00\x00", position + 4):
            walk.exif(length)
        elif 0xE0 <= marker <= 0xEF or marker == 0xFE:  # APPn, COM
            walk.meta(length, what=f"APP{marker - 0xE0}" if marker != 0xFE else "COM")
        if marker == 0xDA:  # start of scan: the rest is entropy-coded data and later scans
            scans = data.count(b"\xff\xda", position)
            if scans > MAX_JPEG_SCANS:
                raise _refusal(
                    f"the JPEG file has {scans} scans; the limit is {MAX_JPEG_SCANS}",
                    limit=MAX_JPEG_SCANS,
                    what="scans",
                )
            return
        position += 2 + length


def _gif(data: bytes, walk: _Walk) -> None:
    if len(data) < 13:
        return
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    walk.pixels = width * height
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    end = len(data)
    while position < end:
        block = data[position]
        walk.count(what="blocks")
        if block == 0x2C or block == 0x3B:  # the first image, or the trailer: done
            return
        if block != 0x21 or position + 2 > end:
            return  # not a GIF block: Pillow says what is wrong
        position += 2  # introducer and label
        while position < end and (size := data[position]):  # data sub-blocks
            walk.count(what="sub-blocks")
            walk.meta(size, what="extension")
            position += 1 + size
        position += 1


def _tiff(data: bytes, walk: _Walk) -> None:
    order = "<" if data.startswith(b"II") else ">"
    (offset,) = struct.unpack_from(order + "I", data, 4)
    if offset + 2 > len(data):
        return
    (entries,) = struct.unpack_from(order + "H", data, offset)
    walk.count(entries, what="IFD entries")
    fields: list[tuple[int, int, int]] = []
    dims: dict[int, int] = {}
    for index in range(entries):
        at = offset + 2 + 12 * index
        if at + 12 > len(data):
            return
        tag, kind, count = struct.unpack_from(order + "HHI", data, at)
        fields.append((tag, kind, count))
        if tag in (256, 257):  # width, height: a SHORT or a LONG, left-aligned in the field
            dims[tag] = struct.unpack_from(order + ("H" if kind == 3 else "I"), data, at + 8)[0]
    walk.pixels = dims.get(256, 0) * dims.get(257, 0)
    for tag, kind, count in fields:
        size = count * _TIFF_TYPE_SIZES.get(kind, 1)
        if tag in _TIFF_PIECE_TAGS:
            if tag in (273, 324):  # offsets: one per strip or tile (their counts match)
                walk.count(count, what="strips or tiles")
        elif tag == _TIFF_EXIF_IFD:
            continue  # a pointer; Pillow reads that IFD only when asked, and we never ask
        elif size > 4:
            walk.meta(size, what=f"TIFF tag {tag}")


def _webp(data: bytes, walk: _Walk) -> None:
    if data[8:12] != b"WEBP":
        return
    position, end = 12, len(data)
    while position + 8 <= end:
        kind, size = struct.unpack_from("<4sI", data, position)
        walk.count(what="chunks")
        if kind == b"VP8X" and position + 18 <= end:
            width = int.from_bytes(data[position + 12 : position + 15], "little") + 1
            height = int.from_bytes(data[position + 15 : position + 18], "little") + 1
            walk.pixels = width * height
        elif kind == b"EXIF":
            walk.exif(size)
        elif kind in (b"ICCP", b"XMP "):
            walk.meta(size, what=kind.decode("latin-1").strip())
        position += 8 + size + (size & 1)
