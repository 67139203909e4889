"""Explanations through the client and the `cnnserve` CLI, against a real `cnnserve serve`."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from cnn_client import AsyncClient, Client, Explanation, InvalidInputError

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CNNSERVE = Path(sys.executable).parent / "cnnserve"
CHELSEA = REPO / "service" / "static" / "samples" / "chelsea.jpg"
Fashion = tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]


@pytest.fixture(scope="module")
def boot(tmp_path_factory: pytest.TempPathFactory, fashion: Fashion) -> Path:
    """The first Fashion-MNIST test image (an ankle boot, class 9) as a PNG file."""
    images, labels = fashion
    assert labels[0] == 9
    path = tmp_path_factory.mktemp("fashion") / "test-0-ankle-boot.png"
    Image.fromarray(images[0]).save(path)
    return path


def _raw_explanation(url: str, image: Path, model: str, **params: Any) -> httpx.Response:
    """The same request, sent without the client: what the server itself says."""
    with image.open("rb") as file:
        return httpx.post(
            f"{url}/v1/models/{model}/explain",
            params=params,
            files={"file": (image.name, file)},
            timeout=120,
        )


def _check_pixel_map(explanation: Explanation, size: tuple[int, int]) -> None:
    """Over the model input: every pixel in [0, 1], and each cell's value at its centre."""
    pixels = explanation.pixel_map(size)
    assert pixels.shape == size and pixels.dtype == np.float32
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    centres = 0
    for row, col in np.ndindex(*explanation.shape):
        y, x = explanation.grid.centre(row, col)
        if float(y).is_integer() and float(x).is_integer() and y < size[0] and x < size[1]:
            assert pixels[int(y), int(x)] == pytest.approx(explanation.heatmap[row, col], abs=1e-6)
            centres += 1
    assert centres > 0, "no cell centre on a whole pixel: pick a grid that has one"


@pytest.mark.parametrize(
    ("method", "options"), [("cam", {}), ("occlusion", {"window": 33, "stride": 16})]
)
def test_both_methods_explain_the_cat(server_url: str, method: str, options: Any) -> None:
    with Client(server_url) as client:
        info = client.model("mobilenetv2-imagenet")
        explanation = client.explain(
            CHELSEA, model="mobilenetv2-imagenet", method=method, **options
        )
    assert set(info.explanations) == {"occlusion", "cam"}
    assert explanation.method == method
    assert (explanation.target.index, explanation.target.label) == (285, "Egyptian cat")
    assert 0.0 < explanation.target.probability <= 1.0
    assert explanation.parameters == ({} if method == "cam" else options)

    raw = _raw_explanation(server_url, CHELSEA, "mobilenetv2-imagenet", method=method, **options)
    body = raw.json()
    assert explanation.shape == tuple(body["heatmap"]["shape"])
    np.testing.assert_array_equal(explanation.heatmap, np.float32(body["heatmap"]["values"]))
    assert list(explanation.grid.jump) == body["heatmap"]["grid"]["jump"]
    assert explanation.heatmap.min() >= 0.0 and explanation.heatmap.max() == 1.0

    assert info.input is not None and tuple(info.input.size) == (224, 224)
    _check_pixel_map(explanation, (224, 224))


def test_occlusion_on_a_fashion_image(server_url: str, boot: Path) -> None:
    with Client(server_url) as client:
        top = client.classify(boot, model="lenet5-fashion").top
        default = client.explain(boot, model="lenet5-fashion")
        chosen = client.explain(
            boot, model="lenet5-fashion", target="T-shirt/top", window=7, stride=3
        )
    assert default.method == "occlusion"
    assert (
        (default.target.index, default.target.label) == (top.index, top.label) == (9, "Ankle boot")
    )
    assert default.target.probability == pytest.approx(top.probability, abs=1e-4)
    window, stride = default.parameters["window"], default.parameters["stride"]
    cells = (28 - window) // stride + 1
    assert default.shape == (cells, cells)
    assert (chosen.target.index, chosen.target.label) == (0, "T-shirt/top")
    assert chosen.parameters == {"window": 7, "stride": 3}
    assert chosen.shape == (8, 8)
    _check_pixel_map(chosen, (28, 28))
    # The same image and question again: the server's cache answers, with the same heatmap.
    with Client(server_url) as client:
        again = client.explain(boot, model="lenet5-fashion", target=0, window=7, stride=3)
    assert again.cached and again.elapsed_ms == chosen.elapsed_ms
    np.testing.assert_array_equal(again.heatmap, chosen.heatmap)


def test_cam_on_lenet_is_method_not_supported(server_url: str, boot: Path) -> None:
    with Client(server_url) as client:
        supported = client.model("lenet5-fashion").explanations
        with pytest.raises(InvalidInputError) as caught:
            client.explain(boot, model="lenet5-fashion", method="cam")
    error = caught.value
    assert (error.status, error.code) == (400, "method_not_supported")
    assert error.detail["method"] == "cam"
    assert tuple(error.detail["supported"]) == supported == ("occlusion",)


def test_a_bad_window_is_invalid_parameter(server_url: str, boot: Path) -> None:
    with Client(server_url) as client, pytest.raises(InvalidInputError) as caught:
        client.explain(boot, model="lenet5-fashion", window=99)
    assert (caught.value.code, caught.value.detail.get("parameter")) == (
        "invalid_parameter",
        "window",
    )


def test_the_overlay_is_a_png_of_the_model_input(server_url: str) -> None:
    with Client(server_url) as client:
        png = client.explanation_png(CHELSEA, model="mobilenetv2-imagenet", method="cam")
    overlay = Image.open(io.BytesIO(png))
    overlay.load()
    assert (overlay.format, overlay.size, overlay.mode) == ("PNG", (224, 224), "RGB")


def test_async_client_explains_the_same(server_url: str, boot: Path) -> None:
    async def explain() -> list[Explanation]:
        async with AsyncClient(server_url) as client:
            return list(
                await asyncio.gather(
                    client.explain(boot, model="lenet5-fashion", window=5, stride=3),
                    client.explain(CHELSEA, model="mobilenetv2-imagenet", method="cam"),
                )
            )

    asynchronous = asyncio.run(explain())
    with Client(server_url) as client:
        synchronous = [
            client.explain(boot, model="lenet5-fashion", window=5, stride=3),
            client.explain(CHELSEA, model="mobilenetv2-imagenet", method="cam"),
        ]
    for one, other in zip(asynchronous, synchronous, strict=True):
        assert (one.model, one.method, one.target, one.parameters, one.grid) == (
            other.model,
            other.method,
            other.target,
            other.parameters,
            other.grid,
        )
        np.testing.assert_array_equal(one.heatmap, other.heatmap)


# The command line, as a user runs it -------------------------------------------------


def _cnnserve(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CNNSERVE), *map(str, args)],
        cwd=REPO,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_writes_the_overlay(server_url: str, tmp_path: Path) -> None:
    out = tmp_path / "overlay.png"
    run = _cnnserve(
        "explain", CHELSEA, "--model", "mobilenetv2-imagenet", "--method", "cam",
        "--out", out, "--url", server_url,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(out)
    overlay = Image.open(out)
    overlay.load()
    assert (overlay.format, overlay.size) == ("PNG", (224, 224))


def test_cli_table(server_url: str) -> None:
    run = _cnnserve("explain", CHELSEA, "-m", "mobilenetv2-imagenet", "--url", server_url)
    assert run.returncode == 0, run.stderr
    assert "Egyptian cat (index 285)" in run.stdout
    assert "occlusion (window 32, stride 16)" in run.stdout


def test_cli_bad_window_is_one_error_line(server_url: str, boot: Path) -> None:
    run = _cnnserve("explain", boot, "-m", "lenet5-fashion", "--window", "99", "--url", server_url)
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: window must be")
    assert "invalid_parameter" in lines[0]
    assert run.stdout == ""
