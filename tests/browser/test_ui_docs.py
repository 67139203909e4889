"""The interactive API docs render offline: no CDN, no policy violation, every operation."""

from __future__ import annotations

import pytest
from browser_support import Server, UiPage

pytestmark = pytest.mark.browser


def test_swagger_ui_lists_every_operation_offline(ui: UiPage, server: Server) -> None:
    requests: list[str] = []
    ui.page.on("request", lambda request: requests.append(request.url))
    ui.page.goto(f"{server.url}/docs")
    ui.page.locator(".swagger-ui .opblock").first.wait_for()
    summaries = ui.page.locator(".swagger-ui .opblock-summary-path").all_inner_texts()
    assert "/v1/models/{name}/classify" in [s.replace("\u200b", "") for s in summaries]
    assert len(summaries) >= 15
    assert all(url.startswith(server.url) for url in requests), requests
    ui.shot("api-docs")
