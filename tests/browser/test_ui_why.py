"""The "Why" panel: what made the model choose a class, as a heatmap over the image, for the
class a person picks in the predictions, with the methods the model supports."""

from __future__ import annotations

import contextlib
import io
import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from browser_support import SAMPLES, TIMES, Server, UiPage
from PIL import Image

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Request, Route

pytestmark = pytest.mark.browser

# Occlusion of MobileNetV2 is a few seconds of CPU; much longer on a busy machine.
OCCLUSION_TIMEOUT_MS = 120_000


def _query(request: Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(request.url).query).items()}


def _is_explain(request: Request) -> bool:
    return "/explain?" in request.url


def _methods(ui: UiPage) -> list[str]:
    return list(ui.page.eval_on_selector_all("#why-method option", "os => os.map(o => o.value)"))


def _bar_indices(ui: UiPage) -> list[int]:
    indices = ui.page.eval_on_selector_all(".prediction", "ps => ps.map(p => p.dataset.index)")
    return [int(i) for i in indices]


def _bar(ui: UiPage, rank: int) -> Locator:
    """The button of the ``rank``-th prediction (0: the top one)."""
    return ui.page.locator(".prediction").nth(rank).locator("button")


def _assert_is_the_servers_overlay(ui: UiPage, server_png: bytes) -> None:
    """The page's overlay is the picture the API draws for format=png: the same heatmap, the
    same colours and the same blend (the model input is decoded by the browser, not Pillow,
    so a few levels of difference are allowed)."""
    shown = np.asarray(ui.canvas_image("#why-canvas"), dtype=np.int16)
    picture = Image.open(io.BytesIO(server_png)).convert("RGB")
    scale = picture.width // shown.shape[1]  # the server enlarges small inputs (whole pixels)
    expected = np.asarray(picture, dtype=np.int16)[::scale, ::scale]
    assert expected.shape == shown.shape
    difference = np.abs(shown - expected)
    assert difference.mean() < 1.0, difference.mean()  # a one-pixel shift of the cat: 3.7
    assert np.percentile(difference, 99) <= 3, np.percentile(difference, 99)


def test_why_explains_the_top_class_then_the_one_clicked(ui: UiPage, server: Server) -> None:
    model = "mobilenetv2-imagenet"
    ui.open(server, model)
    panel = ui.page.locator("#why-panel")
    assert panel.is_hidden(), "nothing to explain before a classification"

    with ui.page.expect_request(_is_explain) as first:
        ui.page.click("button.sample[data-file='chelsea.jpg']")
    bars = ui.wait_for_predictions("chelsea.jpg", model)
    assert bars[0][0] == "Egyptian cat"
    shown = ui.wait_for_explanation(method="cam")
    assert _methods(ui) == ["cam", "occlusion"]  # the fast one first: the default
    query = _query(first.value)
    assert query == {"method": "cam", "target": "285", "format": "json", "version": "1"}
    assert (shown.target, shown.label) == (285, "Egyptian cat")
    assert shown.probability == f"{bars[0][1]:.1f}%"
    assert "Where the last convolutional layer's features" in shown.status
    assert ui.canvas_size("#why-canvas") == (224, 224)
    image = (SAMPLES / "chelsea.jpg").read_bytes()
    _assert_is_the_servers_overlay(
        ui, server.explain(model, image, method="cam", target="285", format="png").content
    )
    first_bar = _bar(ui, 0)
    assert first_bar.get_attribute("aria-pressed") == "true"
    # Cached or not: the session's server may have explained this image for an earlier test.
    timing = ui.page.locator("#why-timing").inner_text()
    assert re.fullmatch(r"\d+ ms round trip( · cached)?", timing), timing
    assert timing.endswith("cached") == shown.cached
    ui.element_shot("#why-panel", "panel")  # docs/img/ui-why.png is a copy of this one

    # Clicking another prediction explains that class.
    second = _bar_indices(ui)[1]
    with ui.page.expect_request(_is_explain) as again:
        _bar(ui, 1).click()
    assert _query(again.value)["target"] == str(second)
    shown = ui.wait_for_explanation(target=second, method="cam")
    assert shown.label == bars[1][0] and shown.probability == f"{bars[1][1]:.1f}%"
    assert first_bar.get_attribute("aria-pressed") == "false"
    assert _bar(ui, 1).get_attribute("aria-pressed") == "true"
    assert ui.page.input_value("#why-target") == str(second)

    # Switching the method explains the same class again, with that method.
    with ui.page.expect_request(_is_explain) as occluded:
        ui.page.select_option("#why-method", "occlusion")
    assert _query(occluded.value)["method"] == "occlusion"
    assert _query(occluded.value)["target"] == str(second)
    shown = ui.wait_for_explanation(target=second, method="occlusion", timeout=OCCLUSION_TIMEOUT_MS)
    assert shown.label == bars[1][0]
    assert f"when a 32{TIMES}32 px patch of the image is hidden" in shown.status
    ui.element_shot("#why-panel", "occlusion")

    # Back to CAM for this class: the server remembers it, and the page says so discreetly.
    ui.page.select_option("#why-method", "cam")
    shown = ui.wait_for_explanation(target=second, method="cam")
    assert shown.cached
    assert ui.page.locator("#why-timing").inner_text().endswith("· cached")


def test_a_fashion_model_offers_occlusion_and_answers_the_keyboard(
    ui: UiPage, server: Server
) -> None:
    model = "lenet5-fashion"
    ui.open(server, model)
    ui.page.click("button.sample[data-file='fashion-ankle-boot.png']")
    bars = ui.wait_for_predictions("fashion-ankle-boot.png", model)
    shown = ui.wait_for_explanation(method="occlusion")
    assert _methods(ui) == ["occlusion"]
    assert shown.label == bars[0][0] == "Ankle boot"
    assert ui.canvas_size("#why-canvas") == (28, 28)  # drawn at the input's size, shown larger
    assert ui.box("#why-canvas")["width"] >= 224
    image = (SAMPLES / "fashion-ankle-boot.png").read_bytes()
    png = server.explain(model, image, method="occlusion", target=str(shown.target), format="png")
    _assert_is_the_servers_overlay(ui, png.content)

    # Every control has a label; a prediction is a button that Enter presses.
    unlabelled = ui.page.eval_on_selector_all(
        "#why-panel select, #why-panel canvas",
        "els => els.filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))"
        ".map(e => e.id)",
    )
    assert unlabelled == []
    assert "Ankle boot" in (ui.page.get_attribute("#why-canvas", "aria-label") or "")
    assert ui.page.get_attribute("#why-status", "aria-live") == "polite"
    third = _bar_indices(ui)[2]
    _bar(ui, 2).focus()
    ui.page.keyboard.press("Enter")
    shown = ui.wait_for_explanation(target=third)
    assert shown.label == bars[2][0]
    ui.page.focus("#why-target")
    ui.page.keyboard.press("Home")  # a select changes with the keyboard, and explains
    shown = ui.wait_for_explanation(target=_bar_indices(ui)[0])
    assert shown.label == "Ankle boot"


def test_a_later_click_cancels_the_explanation_still_running(ui: UiPage, server: Server) -> None:
    model = "lenet5-fashion"
    held: list[Route] = []

    def hold_the_second_class(route: Route) -> None:
        if _query(route.request)["target"] == str(second):
            held.append(route)  # never answered while the page waits
        else:
            route.continue_()

    ui.open(server, model)
    ui.page.click("button.sample[data-file='fashion-sneaker.png']")
    bars = ui.wait_for_predictions("fashion-sneaker.png", model)
    ui.wait_for_explanation()
    second, third = _bar_indices(ui)[1:3]
    ui.page.route("**/explain?*", hold_the_second_class)

    _bar(ui, 1).click()
    ui.page.locator("#why-panel[data-state='computing']").wait_for()
    assert ui.page.get_attribute("#why-figure", "aria-busy") == "true"
    status = ui.page.inner_text("#why-status")
    assert status.startswith(f"Computing the occlusion for \u201c{bars[1][0]}\u201d"), status
    ui.shot("computing")

    with ui.page.expect_event("requestfailed") as cancelled:
        _bar(ui, 2).click()
    assert _query(cancelled.value)["target"] == str(second)
    assert cancelled.value.failure == "net::ERR_ABORTED"
    shown = ui.wait_for_explanation(target=third)
    assert shown.label == bars[2][0]
    for route in held:  # the cancelled request is gone: answering it changes nothing
        with contextlib.suppress(Exception):  # Playwright may refuse a cancelled request
            route.continue_()
    assert ui.page.get_attribute("#why-panel", "data-target") == str(third)


def test_an_explanation_error_is_shown_like_the_other_errors(ui: UiPage, server: Server) -> None:
    ui.console.allow_http(400, "/explain")
    error = {
        "error": {
            "code": "method_not_supported",
            "message": "model mobilenetv2-imagenet cannot have cam explanations: (a test)",
            "detail": {"method": "cam", "supported": ["occlusion"]},
        }
    }
    body = json.dumps(error)
    ui.page.route(
        "**/explain?*",
        lambda route: route.fulfill(status=400, content_type="application/json", body=body),
    )
    ui.open(server, "mobilenetv2-imagenet")
    ui.page.click("button.sample[data-file='coffee.jpg']")
    ui.wait_for_predictions("coffee.jpg", "mobilenetv2-imagenet")
    alert = ui.page.locator("#why-error")
    alert.wait_for()
    assert alert.get_attribute("role") == "alert"
    assert alert.get_attribute("data-code") == "method_not_supported"
    text = alert.inner_text()
    assert "cannot be explained with that method" in text
    assert "(a test)" in text  # the server's own message
    assert "400 method_not_supported" in text
    assert ui.page.get_attribute("#why-panel", "data-state") == "error"
    assert "is-empty" in (ui.page.get_attribute("#why-stage", "class") or "")
    assert _methods(ui) == ["occlusion"], "the server said which methods the model has"
    assert ui.page.locator("#error").is_hidden(), "the image itself was fine"
    ui.element_shot("#why-panel", "error")

    # The next successful explanation clears the error.
    ui.page.unroute("**/explain?*")
    _bar(ui, 1).click()
    ui.wait_for_explanation(method="occlusion", timeout=OCCLUSION_TIMEOUT_MS)
    assert alert.is_hidden()


def test_a_server_without_explanations_shows_no_panel(ui: UiPage, server: Server) -> None:
    explains: list[str] = []

    def older_server(route: Route) -> None:
        response = route.fetch()
        body: dict[str, Any] = response.json()
        for info in body["models"]:
            info.pop("explanations", None)
        route.fulfill(response=response, json=body)

    ui.page.route("**/v1/models", older_server)
    ui.page.on("request", lambda r: explains.append(r.url) if _is_explain(r) else None)
    ui.open(server, "lenet5-fashion")
    ui.page.click("button.sample[data-file='fashion-bag.png']")
    assert ui.wait_for_predictions("fashion-bag.png", "lenet5-fashion")[0][0] == "Bag"
    ui.page.locator("#grid-canvas[data-layer]").wait_for()
    assert ui.page.locator("#why-panel").is_hidden()
    assert ui.page.locator(".prediction button").count() == 0, "bars are not buttons then"
    assert explains == []
