"""API errors on the page: files that are not images, images that are too large, and a
server that wants an API key."""

from __future__ import annotations

import pytest
from browser_support import API_KEY, MAX_IMAGE_PIXELS, Server, UiPage, blank_png

pytestmark = pytest.mark.browser


def test_a_text_file_is_a_readable_error(ui: UiPage, server: Server) -> None:
    ui.console.allow_http(400, "/classify")
    ui.open(server, "lenet5-fashion")
    ui.page.click("button.sample[data-file='fashion-dress.png']")
    ui.wait_for_predictions("fashion-dress.png", "lenet5-fashion")

    ui.upload("notes.txt", b"These are my notes, not a picture.\n", mime="text/plain")
    error = ui.page.locator("#error")
    error.wait_for()
    assert error.get_attribute("data-code") == "invalid_image"
    assert "could not read this file as an image" in error.inner_text()
    assert "400 invalid_image" in error.inner_text()
    # The previous image's results are gone, not left to be mistaken for this file's.
    assert ui.page.locator(".prediction").count() == 0
    assert ui.page.locator("#grid-wrap").is_hidden()
    ui.shot("text-file-error")
    assert ui.console.seen_allowed, "Chromium logged no 400: was the request sent?"

    # A good image afterwards clears the error.
    ui.page.click("button.sample[data-file='fashion-bag.png']")
    ui.wait_for_predictions("fashion-bag.png", "lenet5-fashion")
    assert error.is_hidden()


def test_a_too_large_image_is_a_readable_error(ui: UiPage, server: Server) -> None:
    ui.console.allow_http(413, "/classify")
    ui.open(server, "lenet5-fashion")
    ui.upload("huge.png", blank_png(2100, MAX_IMAGE_PIXELS // 2000 + 1))
    error = ui.page.locator("#error")
    error.wait_for()
    assert error.get_attribute("data-code") == "image_too_large"
    assert "too large" in error.inner_text()
    assert str(MAX_IMAGE_PIXELS) in error.inner_text()  # the server's own message
    ui.shot("too-large-error")


def test_a_keyed_server_asks_for_a_key_and_sends_it(ui: UiPage, keyed_server: Server) -> None:
    ui.console.allow_http(401, "/v1/models")
    page = ui.page
    page.goto(keyed_server.url + "/")
    dialog = page.locator("#key-dialog")
    dialog.wait_for()
    assert page.evaluate("() => document.activeElement.id") == "key-input"
    ui.shot("key-dialog")

    page.fill("#key-input", "not-the-key")
    page.press("#key-input", "Enter")
    page.locator("#key-reason.is-error").wait_for()
    assert "not accepted" in page.inner_text("#key-reason")

    page.fill("#key-input", API_KEY)
    page.click("#key-form button[type=submit]")
    page.locator("#model-select:not([disabled])").wait_for()
    assert dialog.is_hidden()
    assert page.evaluate("() => sessionStorage.getItem('cnnserve.apiKey')") == API_KEY

    # Classifying and feature maps send the key too.
    page.click("button.sample[data-file='fashion-ankle-boot.png']")
    model = page.input_value("#model-select")
    ui.wait_for_predictions("fashion-ankle-boot.png", model)
    page.locator("#grid-canvas[data-layer]").wait_for()

    # The key lasts for the tab: a reload does not ask again.
    page.reload()
    page.locator("#model-select:not([disabled])").wait_for()
    assert dialog.is_hidden()
    assert page.locator("#key-button").is_visible()


def test_cancelling_the_key_dialog_explains_and_offers_it_again(
    ui: UiPage, keyed_server: Server
) -> None:
    ui.console.allow_http(401, "/v1/models")
    page = ui.page
    page.goto(keyed_server.url + "/")
    page.locator("#key-dialog").wait_for()
    page.keyboard.press("Escape")
    error = page.locator("#error")
    error.wait_for()
    assert error.get_attribute("data-code") == "unauthorized"
    assert "needs an API key" in error.inner_text()
    ui.shot("key-cancelled")

    page.click("#key-button")
    page.fill("#key-input", API_KEY)
    page.press("#key-input", "Enter")
    page.locator("#model-select:not([disabled])").wait_for()
    assert error.is_hidden()
