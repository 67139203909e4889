"""Feature maps and receptive fields on the page, checked against the API's own numbers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from browser_support import (
    SAMPLES,
    TIMES,
    Server,
    UiPage,
    channel_argmax,
    grid_layout,
    receptive_region,
    skimage_photo,
)

from service.visualize import viridis

pytestmark = pytest.mark.browser

# The top of the colour map, as the service draws it in its PNG grids.
VIRIDIS_TOP = tuple(int(v) for v in viridis(np.array(1.0)))


def _layer(models: dict[str, dict[str, Any]], model: str, name: str) -> dict[str, Any]:
    return next(layer for layer in models[model]["layers"] if layer["name"] == name)


def _assert_outline(
    ui: UiPage, rf: dict[str, Any], unit: tuple[int, int], size: list[int]
) -> dict[str, float]:
    """The outline on the input is the unit's receptive field, scaled to the displayed input."""
    top, left, height, width = receptive_region(rf, *unit, size)
    assert ui.page.get_attribute("#rf-box", "data-unit") == f"{unit[0]},{unit[1]}"
    shown = ui.box("#input-canvas")
    scale_y, scale_x = shown["height"] / size[0], shown["width"] / size[1]
    outline = ui.box("#rf-box")
    assert outline["width"] == pytest.approx(width * scale_x, abs=1.0)
    assert outline["height"] == pytest.approx(height * scale_y, abs=1.0)
    assert outline["x"] - shown["x"] == pytest.approx(left * scale_x, abs=1.0)
    assert outline["y"] - shown["y"] == pytest.approx(top * scale_y, abs=1.0)
    return outline


def test_a_layer_shows_its_channels_as_a_grid_of_the_api_data(
    ui: UiPage, server: Server, models: dict[str, dict[str, Any]]
) -> None:
    image = (SAMPLES / "fashion-sneaker.png").read_bytes()
    ui.open(server, "lenet5-fashion")
    ui.upload("sneaker.png", image)
    ui.wait_for_predictions("sneaker.png", "lenet5-fashion")
    ui.choose_layer("conv2")

    shape = _layer(models, "lenet5-fashion", "conv2")["output_shape"]
    channels, height, width = shape
    canvas_w, canvas_h = ui.canvas_size("#grid-canvas")
    cols, scale = grid_layout(channels, width, canvas_w)
    assert canvas_h == -(-channels // cols) * (height * scale + 2) + 2
    assert ui.distinct_colours("#grid-canvas") > 20, "the grid looks blank"
    assert ui.page.locator("#maps-timing").inner_text().endswith("KB")

    # Clicking a tile enlarges that channel; its brightest unit is where the API's is.
    channel = 5
    ui.page.mouse.click(*ui.grid_point(shape, channel, height / 2, width / 2))
    assert ui.page.get_attribute("#channel-canvas", "data-channel") == str(channel)
    assert ui.canvas_size("#channel-canvas") == (width, height)
    i, j = channel_argmax(server.feature_map("lenet5-fashion", image, "conv2"), channel)
    assert ui.pixel("#channel-canvas", j, i) == VIRIDIS_TOP
    ui.shot("conv2-grid")


def test_hovering_a_unit_outlines_its_receptive_field_and_deeper_layers_see_more(
    ui: UiPage, server: Server, models: dict[str, dict[str, Any]]
) -> None:
    model = "lenet5-fashion"
    size = models[model]["input"]["size"]
    ui.open(server, model)
    ui.page.click("button.sample[data-file='fashion-ankle-boot.png']")
    ui.wait_for_predictions("fashion-ankle-boot.png", model)

    widths = {}
    for name in ("conv1", "conv2", "pool2"):
        layer = _layer(models, model, name)
        _, height, width = layer["output_shape"]
        ui.choose_layer(name)
        unit = (height // 2, width // 2)
        ui.hover_unit(*unit, height, width)
        outline = _assert_outline(ui, layer["receptive_field"], unit, size)
        widths[name] = outline["width"]
        ui.shot(f"receptive-field-{name}")
    assert widths["conv1"] < widths["conv2"] < widths["pool2"]

    # A unit at the edge: the region is clipped to the image.
    layer = _layer(models, model, "pool2")
    ui.hover_unit(0, 0, *layer["output_shape"][1:])
    _assert_outline(ui, layer["receptive_field"], (0, 0), size)


def test_hovering_the_grid_on_a_photo_model(
    ui: UiPage, server: Server, models: dict[str, dict[str, Any]]
) -> None:
    model = "mobilenetv2-imagenet"
    size = models[model]["input"]["size"]
    name = "features.7.conv.1.2"
    layer = _layer(models, model, name)
    channels = layer["output_shape"][0]
    ui.open(server, model)
    ui.upload("coffee.png", skimage_photo("coffee.png"))
    ui.wait_for_predictions("coffee.png", model)
    ui.choose_layer(name)

    channel, unit = math.ceil(math.sqrt(channels)) + 1, (7, 4)  # second row, second tile
    ui.page.mouse.move(*ui.grid_point(layer["output_shape"], channel, *unit))
    _assert_outline(ui, layer["receptive_field"], unit, size)
    assert f"sees a 75{TIMES}75 px region" in ui.page.locator("#rf-info").inner_text()
    ui.shot("photo-grid-hover")

    # The last feature layer's units see (nearly) the whole image.
    deep = _layer(models, model, "features.18.2")
    ui.choose_layer("features.18.2")
    ui.hover_unit(3, 3, *deep["output_shape"][1:])
    outline = _assert_outline(ui, deep["receptive_field"], (3, 3), size)
    assert outline["width"] == pytest.approx(ui.box("#input-canvas")["width"], abs=1.0)
