"""The search page in a real headless Chromium, with JavaScript on and off."""

from __future__ import annotations

import pytest

from tests.serving.conftest import wait_until


def _loaded_thumbnails(page) -> int:
    """Result images the browser actually decoded (naturalWidth > 0)."""
    return page.evaluate(
        "() => [...document.querySelectorAll('#grid figure.result img')]"
        ".filter(img => img.complete && img.naturalWidth > 0).length"
    )


@pytest.mark.slow
def test_type_a_query_see_thumbnails_more_like_this(page_server, browser, serve_photos) -> None:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Anything the page's Content-Security-Policy blocks is reported on the console.
    page.on("console", lambda m: errors.append(m.text) if "Content Security" in m.text else None)
    page.goto(page_server.url + "/")
    page.fill("#q", "a dog playing in the park")
    page.press("#q", "Enter")
    wait_until(page, "document.querySelector('#grid').dataset.renderedBy === 'js'")
    wait_until(
        page,
        "document.querySelectorAll('#grid figure.result img').length === 8 && "
        "[...document.querySelectorAll('#grid figure.result img')]"
        ".every(img => img.complete && img.naturalWidth > 0)",
    )
    assert _loaded_thumbnails(page) == 8
    assert page.url.endswith("/?q=a%20dog%20playing%20in%20the%20park")
    assert "Results for" in page.inner_text("#title")

    # Caption and tags show on hover.
    first = page.locator("#grid figure.result").first
    assert not first.locator(".info").is_visible()
    first.hover()
    assert first.locator(".info").is_visible()
    assert "tags:" in first.locator(".info").inner_text()

    # Clicking a thumbnail opens its details.
    first.locator("a.thumb").click()
    page.wait_for_selector("#details:not([hidden])")
    assert "Source" in page.inner_text("#details")

    clicked = first.get_attribute("data-image-id")
    first.locator("a.more").click()
    wait_until(page, "document.querySelector('#title').textContent === 'More like this'")
    wait_until(
        page,
        "document.querySelectorAll('#grid figure.result img').length === 7 && "
        "[...document.querySelectorAll('#grid figure.result img')]"
        ".every(img => img.complete && img.naturalWidth > 0)",
    )
    ids = page.eval_on_selector_all("#grid figure.result", "els => els.map(e => e.dataset.imageId)")
    assert clicked not in ids and len(ids) == 7

    # Image upload through the file input.
    page.set_input_files("#file", str(serve_photos[3]))
    page.click("#upload-form button")
    wait_until(page, "document.querySelector('#title').textContent.includes('upload')")
    top = page.locator("#grid figure.result").first.inner_text()
    assert "score 1.000" in top
    assert errors == []
    page.close()


@pytest.mark.slow
def test_plain_form_search_without_javascript(page_server, browser) -> None:
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(page_server.url + "/")
    page.fill("#q", "two people walking")
    page.click("#search-form button")
    page.wait_for_load_state()
    assert "q=two+people+walking" in page.url
    assert page.get_attribute("#grid", "data-rendered-by") == "server"
    assert page.locator("#grid figure.result").count() == 8
    # Playwright's own evaluation still runs with page scripts off: the thumbnails decoded.
    page.wait_for_load_state("load")
    assert _loaded_thumbnails(page) == 8
    # "more like this" is a plain link without JavaScript.
    page.locator("#grid a.more").first.click()
    page.wait_for_load_state()
    assert "similar=" in page.url
    assert page.locator("#grid figure.result").count() == 7
    assert "More like this" in page.inner_text("#title")
    context.close()


@pytest.mark.slow
def test_api_docs_render_from_the_server_alone(page_server, browser) -> None:
    """/docs: Swagger UI from the server's own assets (no CDN: this machine has no internet)
    renders every route, under its CSP, without asking any other origin for anything."""
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on(
        "request", lambda r: None if r.url.startswith(page_server.url) else problems.append(r.url)
    )
    page.goto(page_server.url + "/docs")
    page.wait_for_selector(".swagger-ui .opblock-summary-path", timeout=30_000)
    paths = page.eval_on_selector_all(
        ".opblock-summary-path", "els => els.map(e => e.dataset.path || e.textContent)"
    )
    assert "/api/search" in paths and "/api/images/{image_id}" in paths
    assert problems == []
    page.close()
