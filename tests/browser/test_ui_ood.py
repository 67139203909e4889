"""The warning on an image the model's out-of-distribution check flagged.

Each classification result may carry ``"ood": {"score", "threshold", "flagged", "method"}``
(absent on older servers and for models without statistics). The tests take the server's
real answer and set that field, so they check what the page does with each case of the
contract, whatever the server computes for these images today."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from browser_support import Server, UiPage

if TYPE_CHECKING:
    from playwright.sync_api import Route

pytestmark = pytest.mark.browser

FLAGGED = {"score": 13.2461, "threshold": 9.5, "flagged": True, "method": "energy+mahalanobis"}
# service/ood.py also says which of the detector's methods fired for this image.
FLAGGED_BY_ONE = {
    "score": 1.37,
    "threshold": 1.0,
    "flagged": True,
    "method": "energy+mahalanobis",
    "fired": ["mahalanobis"],
}
NOT_FLAGGED = {"score": 4.1, "threshold": 9.5, "flagged": False, "method": "energy"}
ABSENT = None


def _with_ood(ood_for: Callable[[str], dict[str, Any] | None]) -> Callable[[Route], None]:
    """A route handler that sends the real classification with ``ood`` set per filename."""

    def handler(route: Route) -> None:
        response = route.fetch()
        body = response.json()
        for result in body["results"]:
            result.pop("ood", None)
            ood = ood_for(result["filename"])
            if ood is not None:
                result["ood"] = ood
        route.fulfill(response=response, json=body)

    return handler


def test_a_flagged_prediction_is_clearly_warned_about(ui: UiPage, server: Server) -> None:
    ui.page.route("**/classify?*", _with_ood(lambda name: FLAGGED))
    ui.open(server, "mobilenetv2-imagenet")
    ui.page.click("button.sample[data-file='motorcycle.jpg']")
    ui.wait_for_predictions("motorcycle.jpg", "mobilenetv2-imagenet")

    warning = ui.page.locator("#ood-warning")
    assert warning.is_visible()
    assert warning.get_attribute("role") == "alert"
    text = warning.inner_text()
    assert "This image does not look like what the model was trained on." in text
    assert "energy score and the Mahalanobis distance of its features" in text
    assert "treat these predictions with caution" in text
    assert "score 13.25 · threshold 9.5" in text
    # Above the predictions, where it is read first.
    box = ui.box("#ood-warning")
    assert box["y"] + box["height"] <= ui.box(".prediction-list")["y"]
    ui.element_shot(".panel-predictions", "ood-warning")


def test_the_warning_names_the_methods_that_fired(ui: UiPage, server: Server) -> None:
    ui.page.route("**/classify?*", _with_ood(lambda name: FLAGGED_BY_ONE))
    ui.open(server, "lenet5-fashion")
    ui.page.click("button.sample[data-file='fashion-dress.png']")
    ui.wait_for_predictions("fashion-dress.png", "lenet5-fashion")
    text = ui.page.locator("#ood-warning").inner_text()
    assert "Flagged by the Mahalanobis distance of its features: treat" in text
    assert "energy" not in text
    assert "score 1.37 · threshold 1" in text


@pytest.mark.parametrize("ood", [NOT_FLAGGED, ABSENT], ids=["not-flagged", "absent"])
def test_no_warning_unless_flagged(ui: UiPage, server: Server, ood: dict[str, Any] | None) -> None:
    # A flagged image first, so the test also shows that the warning does not outlive it.
    first = "fashion-bag.png"
    ui.page.route("**/classify?*", _with_ood(lambda name: FLAGGED if name == first else ood))
    ui.open(server, "lenet5-fashion")
    ui.page.click("button.sample[data-file='fashion-bag.png']")
    ui.wait_for_predictions("fashion-bag.png", "lenet5-fashion")
    warning = ui.page.locator("#ood-warning")
    assert warning.is_visible()

    ui.page.click("button.sample[data-file='fashion-trouser.png']")
    assert ui.wait_for_predictions("fashion-trouser.png", "lenet5-fashion")[0][0] == "Trouser"
    assert warning.is_hidden()
    assert warning.inner_text() == ""
