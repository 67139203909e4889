"""What the browser tests share: the live server handle, console recording, screenshots, and
the page's actions and readings in one place (so a test reads as what a person does)."""

from __future__ import annotations

import base64
import io
import math
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from PIL import Image

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage, Page

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
SAMPLES = ROOT / "service" / "static" / "samples"
# The servers' pixel limit: small enough that a test builds an image over it cheaply.
MAX_IMAGE_PIXELS = 4_000_000
API_KEY = "browser-test-key"
TIMES = "\u00d7"  # the multiplication sign the page writes shapes with
_FAILED_LOAD = re.compile(r"^Failed to load resource: the server responded with a status of (\d+)")


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]

    def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.get(self.url + path, headers=headers, timeout=30)

    def feature_map(self, model: str, image: bytes, layer: str) -> dict[str, Any]:
        """One layer of the API's JSON feature maps (what the page renders)."""
        response = httpx.post(
            f"{self.url}/v1/models/{model}/feature-maps",
            params={"layer": layer, "format": "json"},
            files={"file": ("image.png", image)},
            timeout=60,
        )
        response.raise_for_status()
        return dict(response.json()["layers"][0])

    def explain(self, model: str, image: bytes, **params: str) -> httpx.Response:
        """The API's explanation of ``image`` (``method``, ``target``, ``format``, ...)."""
        response = httpx.post(
            f"{self.url}/v1/models/{model}/explain",
            params=params,
            files={"file": ("image", image)},
            timeout=120,
        )
        response.raise_for_status()
        return response


@dataclass
class Console:
    """Console errors and uncaught exceptions of one page, less the ones a test announced."""

    errors: list[str] = field(default_factory=list)
    allowed: list[tuple[int, str]] = field(default_factory=list)
    seen_allowed: list[str] = field(default_factory=list)

    def allow_http(self, status: int, path_part: str) -> None:
        """Chromium logs every error response as a console error; this one is on purpose."""
        self.allowed.append((status, path_part))

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        url = message.location.get("url", "")
        failed = _FAILED_LOAD.match(message.text)
        if failed and any(
            int(failed.group(1)) == status and part in url for status, part in self.allowed
        ):
            self.seen_allowed.append(f"{message.text} ({url})")
            return
        self.errors.append(f"console error: {message.text} ({url})")

    def on_page_error(self, error: Exception) -> None:
        self.errors.append(f"uncaught exception: {error}")


@dataclass
class Explained:
    """What the "Why" panel shows once an explanation has arrived."""

    target: int
    method: str
    label: str
    probability: str
    cached: bool
    status: str


@dataclass
class UiPage:
    """The page under test, its console, and where its screenshots go."""

    page: Page
    console: Console
    name: str

    def shot(self, state: str, *, full_page: bool = True) -> Path:
        path = ARTIFACTS / f"{self.name}--{state}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    # ---- actions ------------------------------------------------------------------------

    def open(self, server: Server, model: str | None = None) -> None:
        self.page.goto(server.url + "/")
        self.page.locator("#model-select:not([disabled])").wait_for()
        if model:
            self.page.select_option("#model-select", model)
            self.page.locator(f"body[data-model='{model}']").wait_for()
        self.page.locator("button.sample").first.wait_for()  # samples.json may come last

    def upload(self, name: str, data: bytes, mime: str = "image/png") -> None:
        self.page.set_input_files("#file-input", {"name": name, "mimeType": mime, "buffer": data})

    def choose_layer(self, layer: str) -> None:
        self.page.select_option("#layer-select", layer)
        self.wait_for_layer(layer)

    # ---- readings -----------------------------------------------------------------------

    def wait_for_predictions(self, filename: str, model: str) -> list[tuple[str, float]]:
        """The (label, percent) bars once the page shows this file's results from ``model``."""
        self.page.wait_for_function(
            """([file, model]) => {
                 const meta = document.querySelector(".prediction-meta");
                 return meta && meta.textContent.startsWith(file + " · " + model + " v")
                   && !document.querySelector("#predictions").hasAttribute("aria-busy");
               }""",
            arg=[filename, model],
        )
        rows = self.page.locator(".prediction")
        bars = []
        for i in range(rows.count()):
            label = rows.nth(i).locator(".prediction-label").inner_text()
            value = rows.nth(i).locator(".prediction-value").inner_text()
            bars.append((label, float(value.rstrip("%"))))
        return bars

    def wait_for_explanation(
        self, *, target: int | None = None, method: str | None = None, timeout: float = 30_000
    ) -> Explained:
        """The "Why" panel once it shows an explanation (of ``target`` by ``method``)."""
        selector = "#why-panel[data-state='explained']"
        if target is not None:
            selector += f"[data-target='{target}']"
        if method is not None:
            selector += f"[data-method='{method}']"
        self.page.locator(selector).wait_for(timeout=timeout)
        panel = self.page.locator("#why-panel")
        return Explained(
            target=int(panel.get_attribute("data-target") or -1),
            method=panel.get_attribute("data-method") or "",
            label=self.page.inner_text("#why-label"),
            probability=self.page.inner_text("#why-probability"),
            cached=panel.get_attribute("data-cached") == "true",
            status=self.page.inner_text("#why-status"),
        )

    def element_shot(self, selector: str, state: str) -> Path:
        path = ARTIFACTS / f"{self.name}--{state}.png"
        self.page.locator(selector).screenshot(path=str(path))
        return path

    def wait_for_layer(self, layer: str) -> None:
        self.page.locator(f"#grid-canvas[data-layer='{layer}']").wait_for()
        self.page.locator("#grid-wrap:not([aria-busy])").wait_for()

    def box(self, selector: str) -> dict[str, float]:
        box = self.page.locator(selector).bounding_box()
        assert box is not None, f"{selector} is not displayed"
        return box

    def canvas_size(self, selector: str) -> tuple[int, int]:
        width, height = self.page.eval_on_selector(selector, "c => [c.width, c.height]")
        return int(width), int(height)

    def pixel(self, selector: str, x: int, y: int) -> tuple[int, int, int]:
        rgba = self.page.eval_on_selector(
            selector,
            "(c, [x, y]) => Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data)",
            [x, y],
        )
        return int(rgba[0]), int(rgba[1]), int(rgba[2])

    def canvas_image(self, selector: str) -> Image.Image:
        """What a canvas holds, as an RGB image of its own size."""
        url = self.page.eval_on_selector(selector, "c => c.toDataURL('image/png')")
        data = base64.b64decode(url.split(",", 1)[1])
        return Image.open(io.BytesIO(data)).convert("RGB")

    def distinct_colours(self, selector: str) -> int:
        return int(
            self.page.eval_on_selector(
                selector,
                """c => {
                     const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                     const seen = new Set();
                     for (let i = 0; i < d.length; i += 4) {
                       seen.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
                     }
                     return seen.size;
                   }""",
            )
        )

    def hover_unit(self, i: int, j: int, height: int, width: int) -> None:
        """Move the mouse over unit (i, j) of the enlarged channel (height x width units)."""
        self.page.locator("#channel-canvas").scroll_into_view_if_needed()
        canvas = self.box("#channel-canvas")
        self.page.mouse.move(
            canvas["x"] + (j + 0.5) * canvas["width"] / width,
            canvas["y"] + (i + 0.5) * canvas["height"] / height,
        )

    def grid_point(self, shape: list[int], channel: int, i: float, j: float) -> tuple[float, float]:
        """Where on the screen unit (i, j) of ``channel``'s tile is (fractions allowed).

        ``shape`` is the layer's [C, H, W]; the grid is scrolled into view first.
        """
        channels, height, width = shape
        self.page.locator("#grid-canvas").scroll_into_view_if_needed()
        canvas_w, canvas_h = self.canvas_size("#grid-canvas")
        cols, scale = grid_layout(channels, width, canvas_w)
        assert canvas_h == -(-channels // cols) * (height * scale + 2) + 2
        grid = self.box("#grid-canvas")
        css = grid["width"] / canvas_w
        r, q = divmod(channel, cols)
        return (
            grid["x"] + (2 + q * (width * scale + 2) + (j + 0.5) * scale) * css,
            grid["y"] + (2 + r * (height * scale + 2) + (i + 0.5) * scale) * css,
        )


# ---- what the page should show, computed independently of its JavaScript -------------------


def receptive_region(
    rf: dict[str, list[float]], i: int, j: int, size: list[int]
) -> tuple[float, float, float, float]:
    """(top, left, height, width) in input pixels of unit (i, j)'s region, clipped.

    The region is centred at start + index * jump (pixel k centred at k) and spans
    [centre - (size - 1) / 2, centre + (size - 1) / 2] inclusive, clipped to the input.
    """
    spans = []
    for d, index in ((0, i), (1, j)):
        centre = rf["start"][d] + index * rf["jump"][d]
        first = max(centre - (rf["size"][d] - 1) / 2, 0)
        last = min(centre + (rf["size"][d] - 1) / 2, size[d] - 1)
        spans.append((first, last - first + 1))
    return spans[0][0], spans[1][0], spans[0][1], spans[1][1]


def grid_layout(channels: int, width: int, canvas_width: int) -> tuple[int, int]:
    """(columns, integer tile scale) of a channel grid canvas ``canvas_width`` pixels wide.

    The layout is the service's PNG grid: ceil(sqrt(C)) columns of W*scale-pixel tiles with
    2-pixel gaps around them.
    """
    cols = math.ceil(math.sqrt(channels))
    scale = ((canvas_width - 2) / cols - 2) / width
    assert scale == int(scale) and scale >= 1, f"not a grid of integer-scaled tiles: {scale}"
    return cols, int(scale)


def channel_argmax(layer: dict[str, Any], channel: int) -> tuple[int, int]:
    import numpy as np

    c, h, w = layer["shape"]
    data = np.frombuffer(base64.b64decode(layer["data"]), dtype="<f4").reshape(c, h, w)
    i, j = np.unravel_index(int(np.argmax(data[channel])), (h, w))
    return int(i), int(j)


def blank_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 0).save(buffer, format="PNG")
    return buffer.getvalue()


def skimage_photo(name: str) -> bytes:
    """A real photo shipped with scikit-image (chelsea.png, coffee.png, ...)."""
    import skimage

    return (Path(skimage.__file__).parent / "data" / name).read_bytes()
