"""``/docs``: Swagger UI served by the app itself, so the API documentation works offline.

FastAPI's own /docs loads Swagger UI's script and styles from a CDN, which a server without
internet (or a browser behind a strict proxy) cannot reach. The assets come from the
``fastapi-offline`` package instead, mounted under ``/docs-assets``; the page's one inline
script carries a CSP nonce (``serving.http_hygiene.page_csp``).
"""

from __future__ import annotations

import importlib.resources

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from serving.http_hygiene import new_nonce, page_csp

ASSETS_URL = "/docs-assets"


def add_docs_routes(app: FastAPI) -> None:
    """``GET /docs`` and its assets (the app is built with ``docs_url=None``)."""
    assets = importlib.resources.files("fastapi_offline") / "static"
    app.mount(ASSETS_URL, StaticFiles(directory=str(assets)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        nonce = new_nonce()
        page = get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        )
        body = bytes(page.body).decode("utf-8").replace("<script>", f'<script nonce="{nonce}">')
        csp = page_csp(nonce, scripts_from_self=True)
        return HTMLResponse(body, headers={"Content-Security-Policy": csp})
