"""Swagger UI at /docs, from files installed with the service.

FastAPI's default loads it from a CDN, which an offline or locked-down host cannot reach;
``fastapi-offline`` ships the files, and they are served from /docs-assets. The pages start
Swagger UI with an inline script, so they carry a policy of their own that allows it.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

__all__ = ["DOCS_POLICY", "install_docs"]

ASSETS = Path(fastapi_offline.__file__).parent / "static"
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; frame-ancestors 'none'"
)


def install_docs(app: FastAPI) -> None:
    """Serve the interactive API docs; build the app with docs_url=None and redoc_url=None."""
    app.mount("/docs-assets", StaticFiles(directory=ASSETS), name="docs-assets")
    title = f"{app.title} API"
    headers = {"Content-Security-Policy": DOCS_POLICY}

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=title,
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )
        page.headers.update(headers)
        return page
