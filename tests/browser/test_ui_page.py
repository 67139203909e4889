"""The web page in a real Chromium: models, images in every way a person gives them,
predictions, the model card, phone size and keyboard use."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from browser_support import SAMPLES, TIMES, Server, UiPage, skimage_photo

pytestmark = pytest.mark.browser


def test_page_is_served_with_its_assets_under_the_csp(server: Server) -> None:
    page = server.get("/")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for asset in re.findall(r'(?:src|href)="(/ui/[^"]+)"', page.text):
        assert server.get(asset).status_code == 200, asset
    assert server.get("/ui/app.js").headers["content-type"].startswith("text/javascript")


def test_page_lists_the_models_and_shows_the_model_card(
    ui: UiPage, server: Server, models: dict[str, dict[str, Any]]
) -> None:
    ui.open(server, "lenet5-fashion")
    page = ui.page
    options = page.eval_on_selector_all("#model-select option", "os => os.map(o => o.value)")
    assert sorted(options) == sorted(models)

    card = page.locator("#card")
    info = models["lenet5-fashion"]
    assert "lenet5" in card.locator(".facts").inner_text()
    assert f"{info['parameters']:,}" in card.inner_text()
    assert f"{info['metrics']['test_accuracy'] * 100:.2f}%" in card.inner_text()
    assert "CPU" in card.inner_text() and "CPUExecutionProvider" in card.inner_text()
    rows = card.locator("table.layers tbody tr")
    assert rows.count() == len(info["layers"])
    last = info["layers"][-1]
    cells = rows.last.locator("td").all_inner_texts()
    assert cells[1] == last["name"] and cells[2] == last["op_type"]
    assert cells[3] == TIMES.join(str(d) for d in last["output_shape"])
    assert cells[4] == TIMES.join(f"{s:g}" for s in last["receptive_field"]["size"])
    ui.shot("card")

    # The ImageNet model's card says where its accuracy comes from.
    page.select_option("#model-select", "mobilenetv2-imagenet")
    page.locator("body[data-model='mobilenetv2-imagenet']").wait_for()
    assert "71.88%" in card.inner_text() and "torchvision" in card.inner_text()
    assert f"224{TIMES}224 RGB" in card.inner_text()


def test_a_real_photo_gets_the_right_label_and_a_round_trip_time(
    ui: UiPage, server: Server
) -> None:
    ui.open(server, "mobilenetv2-imagenet")
    ui.upload("chelsea.png", skimage_photo("chelsea.png"))
    bars = ui.wait_for_predictions("chelsea.png", "mobilenetv2-imagenet")
    assert bars[0][0] == "Egyptian cat"
    assert len(bars) == 5
    assert [p for _, p in bars] == sorted((p for _, p in bars), reverse=True)

    timing = ui.page.locator("#timing")
    assert re.fullmatch(r"\d+ ms round trip", timing.inner_text())
    assert float(timing.get_attribute("data-ms") or 0) > 0
    # The input view is the model's input: the 224x224 centre crop of the photo.
    assert ui.canvas_size("#input-canvas") == (224, 224)
    ui.shot("photo-classified")

    ui.page.select_option("#topk-select", "3")
    ui.page.wait_for_function("() => document.querySelectorAll('.prediction').length === 3")


@pytest.mark.parametrize(
    ("model", "sample", "label"),
    [
        ("lenet5-fashion", "fashion-ankle-boot.png", "Ankle boot"),
        ("resnet-fashion", "fashion-trouser.png", "Trouser"),
        ("vggnet-fashion", "fashion-bag.png", "Bag"),
        ("mobilenetv2-imagenet", "coffee.jpg", "espresso"),
    ],
)
def test_bundled_samples_match_the_model(
    ui: UiPage, server: Server, model: str, sample: str, label: str
) -> None:
    ui.open(server, model)
    offered = ui.page.eval_on_selector_all("button.sample", "bs => bs.map(b => b.dataset.file)")
    fashion = model.endswith("-fashion")
    assert offered and all(f.startswith("fashion-") == fashion for f in offered)
    ui.page.click(f"button.sample[data-file='{sample}']")
    assert ui.wait_for_predictions(sample, model)[0][0] == label


def test_samples_are_small_real_images() -> None:
    for path in SAMPLES.glob("*.jpg"):
        assert path.stat().st_size <= 60_000, path
    assert len(list(SAMPLES.glob("fashion-*.png"))) >= 4


def test_drop_and_paste_give_the_page_an_image(ui: UiPage, server: Server) -> None:
    ui.open(server, "lenet5-fashion")
    boot = base64.b64encode((SAMPLES / "fashion-ankle-boot.png").read_bytes()).decode()
    bag = base64.b64encode((SAMPLES / "fashion-bag.png").read_bytes()).decode()
    make_transfer = """([name, b64]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type: "image/png" }));
        return transfer;
    }"""
    dropped = ui.page.evaluate_handle(make_transfer, ["dropped-boot.png", boot])
    ui.page.dispatch_event("#dropzone", "dragover", {"dataTransfer": dropped})
    assert "is-dragging" in (ui.page.get_attribute("#dropzone", "class") or "")
    ui.page.dispatch_event("#dropzone", "drop", {"dataTransfer": dropped})
    assert ui.wait_for_predictions("dropped-boot.png", "lenet5-fashion")[0][0] == "Ankle boot"

    ui.page.evaluate(
        f"""(args) => {{
            const transfer = ({make_transfer})(args);
            document.dispatchEvent(new ClipboardEvent("paste", {{ clipboardData: transfer }}));
        }}""",
        ["pasted-bag.png", bag],
    )
    assert ui.wait_for_predictions("pasted-bag.png", "lenet5-fashion")[0][0] == "Bag"


def test_keyboard_reaches_everything_in_order(ui: UiPage, server: Server) -> None:
    ui.open(server, "lenet5-fashion")
    page = ui.page
    unlabelled = page.eval_on_selector_all(
        "select, input, canvas[tabindex]",
        "els => els.filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))"
        ".map(e => e.id)",
    )
    assert unlabelled == []
    assert page.get_attribute("#predictions", "aria-live") == "polite"

    order = []
    for _ in range(5):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.className"))
    assert order == ["skip-link", "model-select", "topk-select", "file-input", "sample"]

    page.keyboard.press("Enter")  # the first sample
    ui.wait_for_predictions("fashion-ankle-boot.png", "lenet5-fashion")
    ui.wait_for_layer("relu1")
    page.focus("#channel-canvas")
    before = page.get_attribute("#rf-box", "data-unit")
    page.keyboard.press("ArrowRight")
    i, j = (int(v) for v in (before or "").split(","))
    assert page.get_attribute("#rf-box", "data-unit") == f"{i},{j + 1}"
    page.focus("#grid-canvas")
    channel = int(page.get_attribute("#channel-canvas", "data-channel") or 0)
    page.keyboard.press("ArrowRight" if channel < 5 else "ArrowLeft")
    assert page.get_attribute("#channel-canvas", "data-channel") != str(channel)
    ui.shot("keyboard")


def test_desktop_puts_the_maps_beside_the_image(ui: UiPage, server: Server) -> None:
    ui.open(server, "mobilenetv2-imagenet")
    ui.page.click("button.sample[data-file='chelsea.jpg']")
    assert ui.wait_for_predictions("chelsea.jpg", "mobilenetv2-imagenet")[0][0] == "Egyptian cat"
    ui.page.locator("#grid-canvas[data-layer]").wait_for()
    image, maps = ui.box(".panel-input"), ui.box(".panel-maps")
    assert maps["x"] >= image["x"] + image["width"]
    width, height = ui.canvas_size("#channel-canvas")
    ui.hover_unit(height * 15 // 28, width * 21 // 28, height, width)  # on the cat's left eye
    ui.page.locator("#rf-box:not([hidden])").wait_for()
    ui.shot("overview", full_page=False)  # docs/img/ui.png is a copy of this one


def test_phone_sized_screen(phone_ui: UiPage, server: Server) -> None:
    ui = phone_ui
    ui.open(server, "mobilenetv2-imagenet")
    ui.page.click("button.sample[data-file='chelsea.jpg']")
    assert ui.wait_for_predictions("chelsea.jpg", "mobilenetv2-imagenet")[0][0] == "Egyptian cat"
    ui.page.locator("#grid-canvas[data-layer]").wait_for()
    overflow = ui.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow} px"
    lefts = ui.page.eval_on_selector_all(
        ".panel", "ps => ps.map(p => Math.round(p.getBoundingClientRect().left))"
    )
    assert len(set(lefts)) == 1, "the panels should stack in one column"
    ui.shot("phone", full_page=False)
    ui.shot("phone-full")
