"""The hostile-input corpus: every case a named generator of one HTTP request.

``NATIVE`` targets /v1 (errors: ``{"error": {"code", "message", "detail"}}``), ``V2`` the
Open Inference Protocol (errors: ``{"error": "..."}``). Each case says which answers are
right: a list of (status, code) pairs (code "" on /v2, where errors carry no code), and
whether it is a valid-but-odd input that may instead succeed with 200. Nothing here is
random: a case builds the same bytes every run, so a failure replays exactly.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import orjson
from PIL import Image
from reliability_kit import native_error, v2_error

__all__ = ["NATIVE", "V2", "Case", "Probe", "judge"]

MiB = 1024 * 1024
CLASSIFY = "/v1/models/lenet5-fashion/classify"
CLASSIFY_RGB = "/v1/models/mobilenetv2-imagenet/classify"
MAPS = "/v1/models/lenet5-fashion/feature-maps"
INFER = "/v2/models/lenet5-fashion/infer"
BODY_LIMIT = 32 * MiB  # the default CNNSERVE_MAX_BODY_BYTES the corpus server runs with
# CNNSERVE_ADMIN_KEYS of the /v2 corpus server: the repository cases get past the key.
ADMIN_KEY = "hostile-corpus-admin-key"


@dataclass(frozen=True)
class Probe:
    """One request: ``content`` is bytes, or an iterator (sent chunked, no Content-Length)."""

    content: bytes | Iterator[bytes]
    headers: dict[str, str]


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    method: str
    path: str
    make: Callable[[], Probe]
    expect: tuple[tuple[int, str], ...]  # acceptable (status, error code); "" = any code
    valid: bool  # a valid-but-odd input: 200 is right too

    @property
    def v2(self) -> bool:
        return self.path.startswith("/v2")


NATIVE: list[Case] = []
V2: list[Case] = []


def _case(
    registry: list[Case],
    kind: str,
    *expect: tuple[int, str],
    path: str,
    method: str = "POST",
    valid: bool = False,
) -> Callable[[Callable[[], Probe]], Callable[[], Probe]]:
    def register(make: Callable[[], Probe]) -> Callable[[], Probe]:
        name = make.__name__.strip("_").replace("_", "-")
        registry.append(Case(name, kind, method, path, make, expect, valid))
        return make

    return register


def add(
    registry: list[Case],
    name: str,
    kind: str,
    path: str,
    make: Callable[[], Probe],
    *expect: tuple[int, str],
    method: str = "POST",
) -> None:
    """Register a case built by a shared generator under its own name."""
    registry.append(Case(name, kind, method, path, make, expect, False))


def native(
    kind: str,
    *expect: tuple[int, str],
    path: str = CLASSIFY,
    method: str = "POST",
    valid: bool = False,
) -> Callable[[Callable[[], Probe]], Callable[[], Probe]]:
    return _case(NATIVE, kind, *expect, path=path, method=method, valid=valid)


def v2(
    kind: str, *statuses: int, path: str = INFER, method: str = "POST", valid: bool = False
) -> Callable[[Callable[[], Probe]], Callable[[], Probe]]:
    return _case(V2, kind, *[(s, "") for s in statuses], path=path, method=method, valid=valid)


# -- building blocks ----------------------------------------------------------------------

INVALID = (400, "invalid_image")
TOO_LARGE = (413, "image_too_large")
PARAM = (400, "invalid_parameter")


def raw(data: bytes, content_type: str | None = "image/png", **headers: str) -> Probe:
    extra = {"Content-Type": content_type} if content_type else {}
    return Probe(data, extra | headers)


def gradient(width: int = 64, height: int = 48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1), "RGB")


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, depth: int, colour: int, idat: bytes) -> bytes:
    """A PNG from its parts: no encoder between us and the bytes that reach the server."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def tiff(width: int, height: int, strip_offset: int, strip_bytes: int, pixels: bytes) -> bytes:
    """A minimal little-endian, uncompressed, 8-bit grey TIFF with one strip."""
    entries = [
        (256, 4, 1, width),  # ImageWidth
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 4, 1, strip_offset),  # StripOffsets
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, strip_bytes),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + pixels


def jpeg_with_segment(marker: int, payload: bytes) -> bytes:
    """A real JPEG with one extra segment right after SOI (APPn, COM, ...)."""
    data = encode(gradient(32, 32), "JPEG", quality=90)
    segment = struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload
    return data[:2] + segment + data[2:]


def jpeg_sized(width: int, height: int) -> bytes:
    """A real 8x8 JPEG whose SOF0 header declares another size."""
    data = bytearray(encode(Image.new("L", (8, 8), 128), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"b0undary") -> bytes:
    """A multipart body from (part headers, part body) pairs, exactly as given."""
    body = b""
    for headers, content in parts:
        body += b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + content + b"\r\n"
    return body + b"--" + boundary + b"--\r\n"


def file_part(data: bytes, name: str = "file", filename: str = "a.png") -> tuple[bytes, bytes]:
    headers = (
        f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        "Content-Type: image/png"
    )
    return headers.encode(), data


def form(parts: list[tuple[bytes, bytes]], boundary: bytes = b"b0undary") -> Probe:
    content_type = "multipart/form-data; boundary=" + boundary.decode()
    return Probe(multipart(parts, boundary), {"Content-Type": content_type})


def small_png() -> bytes:
    return encode(gradient(28, 28).convert("L"), "PNG")


# -- corrupt and truncated images ---------------------------------------------------------


@native("corrupt or truncated image", INVALID)
def empty_png() -> Probe:
    return raw(b"")


@native("corrupt or truncated image", INVALID)
def png_truncated_half() -> Probe:
    data = encode(gradient(256, 256), "PNG")
    return raw(data[: len(data) // 2])


@native("corrupt or truncated image", INVALID)
def png_signature_and_ihdr_only() -> Probe:
    return raw(raw_png(28, 28, 8, 0, b"")[:33])


@native("corrupt or truncated image", INVALID)
def png_bad_crc() -> Probe:
    data = bytearray(small_png())
    data[29] ^= 0xFF  # the IHDR's CRC
    return raw(bytes(data))


@native("corrupt or truncated image", INVALID)
def png_idat_not_zlib() -> Probe:
    return raw(raw_png(28, 28, 8, 0, b"\x00" * 8 + b"this is not deflate" * 20))


@native("corrupt or truncated image", INVALID)
def png_idat_short() -> Probe:
    return raw(raw_png(64, 64, 8, 2, zlib.compress(b"\x00" * 100)))


@native("corrupt or truncated image", INVALID)
def png_invalid_bit_depth() -> Probe:
    return raw(raw_png(28, 28, 7, 0, zlib.compress(b"\x00" * (28 * 29))))


@native("corrupt or truncated image", INVALID)
def jpeg_truncated() -> Probe:
    data = encode(gradient(256, 256), "JPEG", quality=90)
    return raw(data[: len(data) // 2], "image/jpeg")


@native("corrupt or truncated image", INVALID)
def jpeg_soi_only() -> Probe:
    return raw(b"\xff\xd8\xff", "image/jpeg")


@native("corrupt or truncated image", INVALID, valid=True)
def jpeg_scrambled_entropy_data() -> Probe:
    # libjpeg decodes corrupt entropy data with warnings: garbage pixels, but an image.
    data = bytearray(encode(gradient(64, 64), "JPEG", quality=90))
    start = data.index(b"\xff\xda") + 20
    rng = np.random.default_rng(8)
    data[start:-2] = rng.integers(0, 255, len(data) - 2 - start, dtype=np.uint8).tobytes()
    return raw(bytes(data), "image/jpeg")


@native("corrupt or truncated image", INVALID)
def webp_truncated() -> Probe:
    data = encode(gradient(256, 256), "WEBP", quality=80)
    return raw(data[: len(data) // 2], "image/webp")


@native("corrupt or truncated image", INVALID)
def webp_riff_header_only() -> Probe:
    return raw(b"RIFF" + struct.pack("<I", 0x7FFFFFF0) + b"WEBPVP8 ", "image/webp")


@native("corrupt or truncated image", INVALID)
def gif_header_only() -> Probe:
    return raw(b"GIF89a" + struct.pack("<HHBBB", 28, 28, 0, 0, 0), "image/gif")


@native("corrupt or truncated image", INVALID)
def gif_truncated() -> Probe:
    data = encode(gradient(256, 256), "GIF")
    return raw(data[: len(data) // 2], "image/gif")


@native("corrupt or truncated image", INVALID)
def tiff_truncated() -> Probe:
    data = encode(gradient(256, 256), "TIFF")
    return raw(data[: len(data) // 2], "image/tiff")


@native("corrupt or truncated image", INVALID)
def tiff_strip_offset_past_the_end() -> Probe:
    return raw(tiff(28, 28, 1 << 30, 28 * 28, b"\x00" * 16), "image/tiff")


@native("corrupt or truncated image", INVALID)
def tiff_ifd_offset_loops() -> Probe:
    return raw(b"II*\x00" + struct.pack("<I", 4) + b"\x00" * 16, "image/tiff")


@native("corrupt or truncated image", INVALID)
def bmp_truncated() -> Probe:
    data = encode(gradient(64, 64), "BMP")
    return raw(data[: len(data) // 2], "image/bmp")


# -- not images, and polyglots ------------------------------------------------------------


@native("not an image or polyglot", INVALID)
def text_as_png() -> Probe:
    return raw(b"hello, I am a text file and not a picture at all\n")


@native("not an image or polyglot", INVALID)
def html_as_jpeg() -> Probe:
    return raw(b"<!doctype html><script>alert(1)</script>", "image/jpeg")


@native("not an image or polyglot", INVALID)
def pdf_as_png() -> Probe:
    return raw(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n")


@native("not an image or polyglot", INVALID)
def zip_as_webp() -> Probe:
    return raw(b"PK\x03\x04" + b"\x00" * 26 + b"PK\x05\x06" + b"\x00" * 18, "image/webp")


@native("not an image or polyglot", INVALID)
def svg_as_image() -> Probe:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><script/></svg>'
    return raw(svg, "image/svg+xml")


@native("not an image or polyglot", INVALID)
def ppm_is_not_accepted() -> Probe:
    return raw(encode(gradient(28, 28), "PPM"))


@native("not an image or polyglot", INVALID)
def eps_is_not_accepted() -> Probe:
    return raw(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "image/eps")


@native("not an image or polyglot", INVALID)
def gif_header_with_javascript() -> Probe:
    return raw(b"GIF89a/*\x00\x00*/=1;alert(document.domain);//" + b"\x00" * 16, "image/gif")


@native("not an image or polyglot", INVALID, valid=True)
def png_with_a_zip_appended() -> Probe:
    return raw(small_png() + b"PK\x03\x04" + b"\x00" * 26 + b"PK\x05\x06" + b"\x00" * 18)


@native("not an image or polyglot", INVALID, valid=True)
def jpeg_with_html_comment() -> Probe:
    return raw(jpeg_with_segment(0xFE, b"<script>alert(1)</script>"), "image/jpeg")


# -- decompression bombs: small files declaring huge canvases -----------------------------


@native("decompression bomb", TOO_LARGE)
def png_declares_100k_by_100k() -> Probe:
    return raw(raw_png(100_000, 100_000, 1, 0, zlib.compress(b"\x00" * 1024)))


@native("decompression bomb", TOO_LARGE)
def png_7000_square_of_zeros() -> Probe:
    # 49 Mpx, past the 40 Mpx limit but under Pillow's own bomb guard: our check refuses it.
    return raw(encode(Image.new("1", (7000, 7000)), "PNG"))


@native("decompression bomb", TOO_LARGE)
def gif_declares_65535_square() -> Probe:
    data = (
        b"GIF89a"
        + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0)
        + b","
        + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0)
        + b"\x02\x02\x44\x01\x00;"
    )
    return raw(data, "image/gif")


@native("decompression bomb", TOO_LARGE)
def jpeg_declares_65500_square() -> Probe:
    return raw(jpeg_sized(65500, 65500), "image/jpeg")


@native("decompression bomb", TOO_LARGE, INVALID)
def webp_canvas_16384_square() -> Probe:
    data = bytearray(encode(gradient(8, 8), "WEBP", exif=Image.Exif().tobytes()))
    vp8x = data.index(b"VP8X")
    data[vp8x + 12 : vp8x + 18] = (16383).to_bytes(3, "little") * 2
    return raw(bytes(data), "image/webp")


@native("decompression bomb", TOO_LARGE)
def tiff_declares_100k_square() -> Probe:
    return raw(tiff(100_000, 100_000, 8, 10**10 % (1 << 32), b""), "image/tiff")


@native("decompression bomb", TOO_LARGE)
def bmp_declares_100k_square() -> Probe:
    header = struct.pack("<IiiHHIIiiII", 40, 100_000, 100_000, 1, 24, 0, 0, 0, 0, 0, 0)
    return raw(b"BM" + struct.pack("<IHHI", 54 + 16, 0, 0, 54) + header + b"\x00" * 16, "image/bmp")


@native("decompression bomb", TOO_LARGE, INVALID)
def png_text_chunk_bomb() -> Probe:
    # A zTXt chunk inflating to 64 MiB before the pixels: Pillow caps text chunks.
    text = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"\x00" * (64 * MiB), 9))
    image = small_png()
    return raw(image[:33] + text + image[33:])


# -- valid but odd images -----------------------------------------------------------------


@native("odd but valid image", INVALID, valid=True)
def png_16_bit_grey() -> Probe:
    grey = np.asarray(gradient(40, 30).convert("L"), np.uint16) * 257
    return raw(encode(Image.fromarray(grey), "PNG"))


@native("odd but valid image", INVALID, valid=True)
def png_16_bit_rgb() -> Probe:
    rows = b"".join(b"\x00" + np.full(3 * 20, 0x1234, ">u2").tobytes() for _ in range(20))
    return raw(raw_png(20, 20, 16, 2, zlib.compress(rows)))


@native("odd but valid image", INVALID, valid=True)
def jpeg_cmyk() -> Probe:
    return raw(encode(gradient(64, 64).convert("CMYK"), "JPEG"), "image/jpeg")


@native("odd but valid image", INVALID, valid=True)
def png_palette_with_transparency() -> Probe:
    image = gradient(32, 32).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return raw(encode(image, "PNG", transparency=0))


@native("odd but valid image", INVALID, valid=True)
def gif_animated() -> Probe:
    frames = [Image.new("L", (28, 28), value) for value in (0, 128, 255)]
    return raw(encode(frames[0], "GIF", save_all=True, append_images=frames[1:]), "image/gif")


@native("odd but valid image", INVALID, valid=True)
def webp_animated() -> Probe:
    frames = [gradient(32, 32), gradient(32, 32).rotate(90)]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    return raw(data, "image/webp")


@native("odd but valid image", INVALID, valid=True)
def apng_animated() -> Probe:
    frames = [gradient(32, 32), gradient(32, 32).rotate(90)]
    return raw(encode(frames[0], "PNG", save_all=True, append_images=frames[1:]))


@native("odd but valid image", INVALID, valid=True)
def tiff_float32() -> Probe:
    data = np.linspace(-5, 5, 28 * 28, dtype=np.float32).reshape(28, 28)
    return raw(encode(Image.fromarray(data, "F"), "TIFF"), "image/tiff")


@native("odd but valid image", INVALID, valid=True)
def tiff_32_bit_int() -> Probe:
    data = np.arange(28 * 28, dtype=np.int32).reshape(28, 28) * 1000
    return raw(encode(Image.fromarray(data, "I"), "TIFF"), "image/tiff")


@native("odd but valid image", INVALID, valid=True)
def png_1_bit() -> Probe:
    return raw(encode(gradient(30, 30).convert("1"), "PNG"))


@native("odd but valid image", INVALID, valid=True)
def png_1x1() -> Probe:
    return raw(encode(Image.new("L", (1, 1), 200), "PNG"))


@native("odd but valid image", INVALID, valid=True, path=CLASSIFY_RGB)
def png_1x1_centre_crop_model() -> Probe:
    return raw(encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"))


@native("odd but valid image", INVALID, TOO_LARGE, valid=True, path=CLASSIFY_RGB)
def png_1x40000_strip_centre_crop_model() -> Probe:
    # 40k pixels in ~200 bytes; resizing the short side to 256 before cropping would ask for
    # 256 x 10.24M pixels (7.5 GiB of RGB).
    return raw(encode(Image.new("RGB", (1, 40_000), (200, 10, 10)), "PNG"))


@native("odd but valid image", INVALID, TOO_LARGE, valid=True, path=CLASSIFY_RGB)
def png_40000x1_strip_centre_crop_model() -> Probe:
    return raw(encode(Image.new("L", (40_000, 1), 99), "PNG"))


@native("odd but valid image", INVALID, TOO_LARGE, valid=True)
def png_1x40000_strip_stretch_model() -> Probe:
    return raw(encode(Image.new("L", (1, 40_000), 99), "PNG"))


@native("odd but valid image", INVALID, TOO_LARGE, valid=True, path=CLASSIFY_RGB)
def png_36_megapixels_within_the_limit() -> Probe:
    return raw(encode(Image.new("L", (6000, 6000), 0), "PNG"))


@native("odd but valid image", INVALID, valid=True)
def jpeg_progressive() -> Probe:
    return raw(encode(gradient(64, 64), "JPEG", progressive=True, quality=90), "image/jpeg")


# -- EXIF oddities --------------------------------------------------------------------------


def _exif_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(gradient(40, 20), "JPEG", exif=exif)


@native("EXIF oddity", INVALID, valid=True)
def exif_orientation_out_of_range() -> Probe:
    return raw(_exif_jpeg(9), "image/jpeg")


@native("EXIF oddity", INVALID, valid=True)
def exif_orientation_is_text() -> Probe:
    # IFD0: one ASCII entry for Orientation, its 14 bytes right after the IFD (offset 26).
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x0112, 2, 14, 26) + struct.pack("<I", 0)
    payload = b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd + b"rotate please\x00"
    return raw(jpeg_with_segment(0xE1, payload), "image/jpeg")


@native("EXIF oddity", INVALID, valid=True)
def exif_garbage_after_header() -> Probe:
    rng = np.random.default_rng(6)
    payload = b"Exif\x00\x00" + rng.integers(0, 255, 300, dtype=np.uint8).tobytes()
    return raw(jpeg_with_segment(0xE1, payload), "image/jpeg")


@native("EXIF oddity", INVALID, valid=True)
def exif_ifd_points_at_itself() -> Probe:
    # IFD0 has one entry, the Exif sub-IFD pointer, and it points back at IFD0.
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x8769, 4, 1, 8) + struct.pack("<I", 8)
    return raw(jpeg_with_segment(0xE1, b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd))


@native("EXIF oddity", INVALID, valid=True)
def exif_entry_claims_4g_values() -> Probe:
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x0112, 3, 0xFFFFFFFF, 100) + b"\0" * 4
    payload = b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + ifd
    return raw(jpeg_with_segment(0xE1, payload), "image/jpeg")


# -- multipart ------------------------------------------------------------------------------


@native("multipart", (413, "too_many_images"))
def sixty_five_files() -> Probe:
    return form([file_part(small_png(), filename=f"{i}.png") for i in range(65)])


@native("multipart", (413, "too_many_images"))
def two_thousand_tiny_files() -> Probe:
    return form([file_part(b"x", filename=f"{i}.png") for i in range(2000)])


@native("multipart", PARAM)
def wrong_field_name() -> Probe:
    return form([file_part(small_png(), name="image")])


@native("multipart", PARAM)
def file_sent_as_text_field() -> Probe:
    return form([(b'Content-Disposition: form-data; name="file"', b"just text")])


@native("multipart", PARAM)
def no_boundary_parameter() -> Probe:
    return Probe(multipart([file_part(small_png())]), {"Content-Type": "multipart/form-data"})


@native("multipart", PARAM)
def boundary_not_in_body() -> Probe:
    body = multipart([file_part(small_png())], boundary=b"other")
    return Probe(body, {"Content-Type": "multipart/form-data; boundary=b0undary"})


@native("multipart", PARAM)
def body_ends_mid_part() -> Probe:
    body = multipart([file_part(small_png())])
    return Probe(body[: len(body) // 2], {"Content-Type": "multipart/form-data; boundary=b0undary"})


@native("multipart", PARAM)
def boundary_of_8_kib() -> Probe:
    return form([file_part(small_png())], boundary=b"z" * 8192)


@native("multipart", PARAM)
def part_without_content_disposition() -> Probe:
    return form([(b"Content-Type: image/png", small_png())])


@native("multipart", PARAM)
def two_hundred_text_fields() -> Probe:
    fields = [(f'Content-Disposition: form-data; name="f{i}"'.encode(), b"v") for i in range(200)]
    return form([file_part(small_png()), *fields])


@native("multipart", PARAM)
def part_header_of_64_kib() -> Probe:
    headers, data = file_part(small_png())
    return form([(headers + b"\r\nX-Padding: " + b"a" * 65536, data)])


@native("multipart", PARAM)
def only_the_closing_boundary() -> Probe:
    return Probe(b"--b0undary--\r\n", {"Content-Type": "multipart/form-data; boundary=b0undary"})


@native("multipart", PARAM, valid=True)
def filename_with_traversal_and_controls() -> Probe:
    return form([file_part(small_png(), filename="../../etc/passwd\x01\x7f<script>")])


# -- content types and body sizes ---------------------------------------------------------


@native("content type", (415, "unsupported_media_type"))
def no_content_type() -> Probe:
    return raw(small_png(), None)


@native("content type", (415, "unsupported_media_type"))
def json_content_type() -> Probe:
    return raw(small_png(), "application/json")


@native("content type", (415, "unsupported_media_type"))
def garbage_content_type() -> Probe:
    return raw(small_png(), ";;;===,,,")


@native("content type", (415, "unsupported_media_type"))
def urlencoded_form() -> Probe:
    return raw(b"file=" + b"A" * 100, "application/x-www-form-urlencoded")


@native("body size", (413, "body_too_large"))
def body_over_the_limit_declared() -> Probe:
    return raw(b"\x00" * (BODY_LIMIT + 1))


@native("body size", (413, "body_too_large"))
def body_over_the_limit_chunked() -> Probe:
    def chunks() -> Iterator[bytes]:
        for _ in range(BODY_LIMIT // MiB + 2):
            yield b"\x00" * MiB

    return Probe(chunks(), {"Content-Type": "image/png"})


@native("body size", (413, "body_too_large"))
def multipart_over_the_limit_chunked() -> Probe:
    body = multipart([file_part(b"\x00" * (BODY_LIMIT + MiB))])

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), MiB):
            yield body[start : start + MiB]

    return Probe(chunks(), {"Content-Type": "multipart/form-data; boundary=b0undary"})


@native("body size", INVALID, valid=True)
def gzip_content_encoding_is_not_undone() -> Probe:
    return raw(gzip.compress(small_png()), "image/png", **{"Content-Encoding": "gzip"})


# -- query parameters -----------------------------------------------------------------------


def _good() -> Probe:
    return raw(small_png())


for _query in (
    "top_k=0",
    "top_k=-1",
    "top_k=11",
    "top_k=99999999999999999999999999",
    "top_k=2.5",
    "top_k=%00",
    "top_k=",
    "top_k=1e3",
    "version=..%2F..%2F1",
    "version=9999999999999",
    "version=-1",
    "version=1%0d%0aX-Injected:%201",
):
    add(NATIVE, f"query-{_query}", "query parameter", f"{CLASSIFY}?{_query}", _good, PARAM)
add(
    NATIVE,
    "query-version=000000002",
    "query parameter",
    f"{CLASSIFY}?version=000000002",
    _good,
    (404, "model_not_found"),
)
for _query, _code in (
    ("layer=..%2F..%2F..%2Fetc%2Fpasswd", "unknown_layer"),
    ("layer=%00%0d%0a", "unknown_layer"),
    ("layer=" + "x" * 4096, "unknown_layer"),
    ("layer=conv1&format=exe", "invalid_parameter"),
    ("layer=conv1&layer=conv2&format=npy", "invalid_parameter"),
    ("&".join(["layer=nope"] * 500), "unknown_layer"),
):
    _name = f"feature-maps-{_query[:40]}" + ("..." if len(_query) > 40 else "")
    add(NATIVE, _name, "query parameter", f"{MAPS}?{_query}", _good, (400, _code))


# -- model names and methods ----------------------------------------------------------------

NOT_FOUND = ((404, "model_not_found"), (404, "not_found"))

for _model in (
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e",
    "%00",
    "lenet5-fashion%00",
    "%0d%0aSet-Cookie:%20x=1",
    "%E2%80%AEnoihsaf-5tenel",  # right-to-left override
    "a" * 4096,
    "lenet5-fashion%2F1",
):
    _name = f"model-{_model[:40]}" + ("..." if len(_model) > 40 else "")
    add(NATIVE, _name, "model or layer name", f"/v1/models/{_model}/classify", _good, *NOT_FOUND)


@native("model or layer name", *NOT_FOUND, method="GET", path="/v1/models/..%2F..%2Fmodels")
def get_model_traversal() -> Probe:
    return Probe(b"", {})


@native("method", (405, "method_not_allowed"), method="PUT")
def put_on_classify() -> Probe:
    return _good()


@native("method", (405, "method_not_allowed"), method="GET")
def get_on_classify() -> Probe:
    return Probe(b"", {})


@native("method", (405, "method_not_allowed"), method="DELETE", path="/v1/models/lenet5-fashion")
def delete_a_model() -> Probe:
    return Probe(b"", {})


# -- the Open Inference Protocol --------------------------------------------------------------

IMAGE = np.zeros((1, 1, 28, 28), np.float32)


def tensor(array: np.ndarray = IMAGE, **fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "input",
        "shape": list(array.shape),
        "datatype": "FP32",
        "data": array.ravel().tolist(),
    }
    return base | fields


def as_json(body: object, **headers: str) -> Probe:
    return Probe(orjson.dumps(body), {"Content-Type": "application/json"} | headers)


def text(body: bytes, **headers: str) -> Probe:
    return Probe(body, {"Content-Type": "application/json"} | headers)


def binary(header: dict[str, object], data: bytes, length: str | None = None) -> Probe:
    head = orjson.dumps(header)
    return Probe(
        head + data,
        {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(head)) if length is None else length,
        },
    )


def binary_input(size: int, **fields: object) -> dict[str, object]:
    spec = tensor(IMAGE) | {"parameters": {"binary_data_size": size}} | fields
    del spec["data"]
    return {"inputs": [spec]}


@v2("V2 JSON body", 400)
def v2_empty_body() -> Probe:
    return text(b"")


@v2("V2 JSON body", 400)
def v2_unterminated_json() -> Probe:
    return text(b'{"inputs": [')


@v2("V2 JSON body", 400)
def v2_not_utf8() -> Probe:
    return text(b"\xff\xfe{\x00}\x00")


@v2("V2 JSON body", 400)
def v2_top_level_array() -> Probe:
    return text(b"[1, 2, 3]")


@v2("V2 JSON body", 400)
def v2_deeply_nested_arrays() -> Probe:
    return text(b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")


@v2("V2 JSON body", 400)
def v2_deeply_nested_objects() -> Probe:
    return text(b'{"a":' * 50_000 + b"1" + b"}" * 50_000)


@v2("V2 JSON body", 400)
def v2_deeply_nested_data() -> Probe:
    data = b"[" * 5000 + b"0" + b"]" * 5000
    return text(b'{"inputs":[{"name":"input","shape":[1],"datatype":"FP32","data":' + data + b"}]}")


@v2("V2 JSON body", 400)
def v2_no_inputs() -> Probe:
    return as_json({"id": "x", "outputs": []})


@v2("V2 JSON body", 400)
def v2_input_is_a_string() -> Probe:
    return as_json({"inputs": ["input"]})


@v2("V2 JSON body", 400)
def v2_duplicate_keys_and_huge_id() -> Probe:
    return text(b'{"id": "' + b"i" * 100_000 + b'", "inputs": 1, "inputs": 2}')


@v2("V2 tensor", 400)
def v2_unknown_datatype() -> Probe:
    return as_json({"inputs": [tensor(datatype="FP128")]})


@v2("V2 tensor", 400)
def v2_bytes_datatype() -> Probe:
    return as_json({"inputs": [tensor(datatype="BYTES", data=["a"] * 784)]})


@v2("V2 tensor", 400, valid=True)
def v2_int8_datatype() -> Probe:
    return as_json({"inputs": [tensor(datatype="INT8", data=[1] * 784)]})


@v2("V2 tensor", 400)
def v2_fewer_values_than_the_shape() -> Probe:
    return as_json({"inputs": [tensor(data=[0.0] * 10)]})


@v2("V2 tensor", 400)
def v2_more_values_than_the_shape() -> Probe:
    return as_json({"inputs": [tensor(data=[0.0] * 785)]})


@v2("V2 tensor", 400)
def v2_shape_not_the_models() -> Probe:
    return as_json({"inputs": [tensor(np.zeros((1, 3, 28, 28), np.float32))]})


@v2("V2 tensor", 400, 413)
def v2_shape_of_a_trillion() -> Probe:
    return as_json({"inputs": [tensor(shape=[10**12, 1, 28, 28], data=[0.0])]})


@v2("V2 tensor", 400, 413)
def v2_shape_product_overflows_int64() -> Probe:
    return as_json({"inputs": [tensor(shape=[2**40, 2**40, 2**40, 1], data=[0.0])]})


@v2("V2 tensor", 400)
def v2_negative_shape() -> Probe:
    return as_json({"inputs": [tensor(shape=[-1, 1, 28, 28])]})


@v2("V2 tensor", 400)
def v2_shape_of_strings() -> Probe:
    return as_json({"inputs": [tensor(shape=["1", "1", "28", "28"])]})


@v2("V2 tensor", 400)
def v2_shape_of_floats() -> Probe:
    return as_json({"inputs": [tensor(shape=[1.0, 1.5, 28, 28])]})


@v2("V2 tensor", 400)
def v2_shape_with_a_thousand_dims() -> Probe:
    return as_json({"inputs": [tensor(shape=[1] * 1000)]})


@v2("V2 tensor", 400, 413)
def v2_batch_past_the_limit() -> Probe:
    return as_json({"inputs": [tensor(np.zeros((65, 1, 28, 28), np.float32))]})


@v2("V2 tensor", 400)
def v2_zero_batch() -> Probe:
    return as_json({"inputs": [tensor(np.zeros((0, 1, 28, 28), np.float32))]})


@v2("V2 tensor", 400)
def v2_nan_literal() -> Probe:
    return text(orjson.dumps({"inputs": [tensor()]}).replace(b"0.0", b"NaN", 1))


@v2("V2 tensor", 400)
def v2_infinity_literal() -> Probe:
    return text(orjson.dumps({"inputs": [tensor()]}).replace(b"0.0", b"-Infinity", 1))


@v2("V2 tensor", 400)
def v2_number_past_float64() -> Probe:
    return text(orjson.dumps({"inputs": [tensor()]}).replace(b"0.0", b"1e999", 1))


@v2("V2 tensor", 400)
def v2_number_past_fp32() -> Probe:
    return text(orjson.dumps({"inputs": [tensor()]}).replace(b"0.0", b"1e300", 1))


@v2("V2 tensor", 400)
def v2_data_of_strings_and_nulls() -> Probe:
    return as_json({"inputs": [tensor(data=["0", None, True, {}] * 196)]})


@v2("V2 tensor", 400)
def v2_wrong_input_name() -> Probe:
    return as_json({"inputs": [tensor(name="../../input")]})


@v2("V2 tensor", 400)
def v2_two_inputs() -> Probe:
    return as_json({"inputs": [tensor(), tensor()]})


@v2("V2 tensor", 400)
def v2_unknown_output() -> Probe:
    return as_json({"inputs": [tensor()], "outputs": [{"name": "secret_layer"}]})


@v2("V2 tensor", 400)
def v2_classification_count_absurd() -> Probe:
    out = {"name": "logits", "parameters": {"classification": 10**9}}
    return as_json({"inputs": [tensor()], "outputs": [out]})


@v2("V2 tensor", 400)
def v2_classification_count_negative() -> Probe:
    out = {"name": "logits", "parameters": {"classification": -3}}
    return as_json({"inputs": [tensor()], "outputs": [out]})


@v2("V2 binary", 400)
def v2_binary_nan() -> Probe:
    data = np.full((1, 1, 28, 28), np.nan, np.float32).tobytes()
    return binary(binary_input(len(data)), data)


@v2("V2 binary", 400)
def v2_binary_infinity() -> Probe:
    data = np.full((1, 1, 28, 28), np.inf, np.float32).tobytes()
    return binary(binary_input(len(data)), data)


@v2("V2 binary", 400)
def v2_header_longer_than_body() -> Probe:
    return binary(binary_input(3136), b"\x00" * 100, length="100000")


@v2("V2 binary", 400)
def v2_header_length_negative() -> Probe:
    return binary(binary_input(3136), b"\x00" * 3136, length="-5")


@v2("V2 binary", 400)
def v2_header_length_not_a_number() -> Probe:
    return binary(binary_input(3136), b"\x00" * 3136, length="12abc")


@v2("V2 binary", 400)
def v2_header_length_past_int64() -> Probe:
    return binary(binary_input(3136), b"\x00" * 3136, length="9" * 40)


@v2("V2 binary", 400)
def v2_binary_size_not_the_shapes() -> Probe:
    return binary(binary_input(100), b"\x00" * 100)


@v2("V2 binary", 400)
def v2_binary_size_past_the_body() -> Probe:
    return binary(binary_input(3136), b"\x00" * 1000)


@v2("V2 binary", 400)
def v2_binary_size_negative() -> Probe:
    return binary(binary_input(-3136), b"\x00" * 3136)


@v2("V2 binary", 400)
def v2_binary_fp16_odd_bytes() -> Probe:
    return binary(binary_input(1567, datatype="FP16"), b"\x00" * 1567)


@v2("V2 binary", 400)
def v2_binary_and_json_data_both() -> Probe:
    header = binary_input(3136)
    header["inputs"][0]["data"] = [0.0] * 784  # type: ignore[index]
    return binary(header, b"\x00" * 3136)


@v2("V2 binary", 400)
def v2_binary_trailing_bytes() -> Probe:
    return binary(binary_input(3136), b"\x00" * 4000)


@v2("V2 encoding", 400, 413)
def v2_gzip_bomb() -> Probe:
    bomb = gzip.compress(b"\x00" * (256 * MiB), 9)  # ~250 KiB inflating past the body limit
    return text(bomb, **{"Content-Encoding": "gzip"})


@v2("V2 encoding", 400)
def v2_gzip_truncated() -> Probe:
    return text(
        gzip.compress(orjson.dumps({"inputs": [tensor()]}))[:50], **{"Content-Encoding": "gzip"}
    )


@v2("V2 encoding", 400, 415)
def v2_unsupported_encoding() -> Probe:
    return text(orjson.dumps({"inputs": [tensor()]}), **{"Content-Encoding": "br"})


@v2("V2 encoding", 413)
def v2_body_over_the_limit() -> Probe:
    return text(b" " * (BODY_LIMIT + 1))


def _good_v2() -> Probe:
    return as_json({"inputs": [tensor()]})


for _model in ("..%2F..%2Fetc%2Fpasswd", "%00", "%0d%0aX:%201", "a" * 4096):
    _name = f"v2-model-{_model[:30]}" + ("..." if len(_model) > 30 else "")
    add(V2, _name, "V2 model name", f"/v2/models/{_model}/infer", _good_v2, (404, ""))
add(V2, "v2-version-99", "V2 model name", f"{INFER[:-6]}/versions/99/infer", _good_v2, (404, ""))
add(
    V2,
    "v2-version-dotdot",
    "V2 model name",
    f"{INFER[:-6]}/versions/..%2F1/infer",
    _good_v2,
    (400, ""),
    (404, ""),
)


@v2("V2 repository", 404, path="/v2/repository/models/..%2F..%2Ftmp/load")
def v2_load_traversal() -> Probe:
    return as_json({}, **{"X-API-Key": ADMIN_KEY})


@v2("V2 repository", 400, path="/v2/repository/models/lenet5-fashion/load")
def v2_load_file_override() -> Probe:
    return as_json({"parameters": {"file:1/model.onnx": "AAAA"}}, **{"X-API-Key": ADMIN_KEY})


@v2("V2 repository", 400, path="/v2/repository/models/lenet5-fashion/load")
def v2_load_bad_json() -> Probe:
    return text(b"{not json", **{"X-API-Key": ADMIN_KEY})


@v2("V2 repository", 400, path="/v2/repository/index")
def v2_index_ready_not_bool() -> Probe:
    return as_json({"ready": "yes"}, **{"X-API-Key": ADMIN_KEY})


def judge(case: Case, response: httpx.Response) -> str | None:
    """None when the answer is right for ``case``, else what is wrong with it."""
    status, text = response.status_code, response.text[:300]
    if status == 200 and case.valid:
        return None if "error" not in response.json() else f"200 with an error body: {text}"
    if status >= 500:
        return f"server error {status}: {text}"
    statuses = sorted({s for s, _ in case.expect})
    if status not in statuses:
        return f"status {status}, expected {statuses}{' or 200' if case.valid else ''}: {text}"
    try:
        if case.v2:
            v2_error(response)
            return None
        code = native_error(response)["code"]
    except (AssertionError, ValueError):
        return f"not the documented error shape: {text}"
    if (status, code) in case.expect or (status, "") in case.expect:
        return None
    return f"{status} {code!r}, expected one of {list(case.expect)}: {text}"


def send(client: httpx.Client, case: Case) -> tuple[int | str, str | None]:
    """Send one case; (status or transport error, verdict). A hang or a dropped connection
    is a failure like a 5xx: the per-request timeout turns a hang into one."""
    probe = case.make()
    try:
        response = client.request(
            case.method, case.path, content=probe.content, headers=probe.headers
        )
    except httpx.TransportError as exc:
        return type(exc).__name__, f"no answer: {type(exc).__name__}: {exc}"
    return response.status_code, judge(case, response)


def by_kind(outcomes: dict[str, tuple[Case, int | str, str | None]]) -> dict[str, dict[str, int]]:
    """Per kind: cases tried, cases that held, and how many were answered 200 / 4xx."""
    kinds: dict[str, dict[str, int]] = {}
    for case, status, verdict in outcomes.values():
        tally = kinds.setdefault(
            case.kind, {"cases": 0, "passed": 0, "ok_200": 0, "refused_4xx": 0}
        )
        tally["cases"] += 1
        tally["passed"] += verdict is None
        tally["ok_200"] += status == 200
        tally["refused_4xx"] += isinstance(status, int) and 400 <= status < 500
    return kinds
