"""Every kind of image input becomes the right upload: name, bytes and media type."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnn_client._images import sniff, to_upload


def _png_of(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _pixels(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


@pytest.fixture
def grey() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(28, 28), dtype=np.uint8)


@pytest.fixture
def boot_png(tmp_path: Path, grey: np.ndarray) -> Path:
    path = tmp_path / "boot.png"
    path.write_bytes(_png_of(grey))
    return path


@pytest.mark.parametrize("as_type", [str, Path])
def test_paths_keep_their_name_and_bytes(boot_png: Path, as_type: type) -> None:
    upload = to_upload(as_type(boot_png), 3)
    assert (upload.filename, upload.content, upload.content_type) == (
        "boot.png",
        boot_png.read_bytes(),
        "image/png",
    )


def test_a_missing_path_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        to_upload(tmp_path / "nope.png")


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_bytes_are_named_by_index_and_sniffed(boot_png: Path, wrap: type) -> None:
    upload = to_upload(wrap(boot_png.read_bytes()), 7)
    assert upload.filename == "image-7.png"
    assert upload.content == boot_png.read_bytes()
    assert upload.content_type == "image/png"


def test_binary_files_keep_their_base_name(boot_png: Path) -> None:
    with boot_png.open("rb") as file:
        upload = to_upload(file)
    assert upload.filename == "boot.png"
    assert upload.content == boot_png.read_bytes()


def test_in_memory_files_are_named_by_index(boot_png: Path) -> None:
    upload = to_upload(io.BytesIO(boot_png.read_bytes()), 2)
    assert upload.filename == "image-2.png"


def test_text_files_are_refused(boot_png: Path) -> None:
    with boot_png.open("r", encoding="latin-1") as file, pytest.raises(TypeError, match="'rb'"):
        to_upload(file)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_pil_images_are_sent_as_lossless_png(grey: np.ndarray, mode: str) -> None:
    image = Image.fromarray(grey).convert(mode)
    upload = to_upload(image, 4)
    assert (upload.filename, upload.content_type) == ("image-4.png", "image/png")
    np.testing.assert_array_equal(_pixels(upload.content), np.asarray(image))


def test_pil_images_opened_from_files_keep_their_stem(tmp_path: Path, grey: np.ndarray) -> None:
    path = tmp_path / "shoe.jpg"
    Image.fromarray(grey).save(path, format="JPEG")
    with Image.open(path) as image:
        upload = to_upload(image)
        np.testing.assert_array_equal(_pixels(upload.content), np.asarray(image))
    assert upload.filename == "shoe.png"


def test_cmyk_images_are_converted_to_rgb(grey: np.ndarray) -> None:
    image = Image.fromarray(np.stack([grey] * 3, axis=-1)).convert("CMYK")
    assert Image.open(io.BytesIO(to_upload(image).content)).mode == "RGB"


@pytest.mark.parametrize("shape", [(28, 28), (28, 28, 1), (20, 30, 3), (20, 30, 4)])
def test_numpy_arrays_are_encoded_as_png(shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(2).integers(0, 256, size=shape, dtype=np.uint8)
    upload = to_upload(array, 5)
    assert (upload.filename, upload.content_type) == ("image-5.png", "image/png")
    expected = array[:, :, 0] if shape[2:] == (1,) else array
    np.testing.assert_array_equal(_pixels(upload.content), expected)


@pytest.mark.parametrize("value", [42, [1, 2, 3], None])
def test_other_types_are_refused(value: object) -> None:
    with pytest.raises(TypeError, match="an image must be"):
        to_upload(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("head", "media_type"),
    [
        (b"\xff\xd8\xff\xe0rest", "image/jpeg"),
        (b"GIF89a....", "image/gif"),
        (b"BM....", "image/bmp"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"II*\x00....", "image/tiff"),
        (b"not an image", "application/octet-stream"),
    ],
)
def test_sniffs_the_media_type(head: bytes, media_type: str) -> None:
    assert sniff(head)[0] == media_type
