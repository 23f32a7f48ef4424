"""The search page in a real headless Chromium, with JavaScript on and off."""

from __future__ import annotations

import pytest


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
    page.goto(page_server.url + "/")
    page.fill("#q", "a dog playing in the park")
    page.press("#q", "Enter")
    page.wait_for_function("document.querySelector('#grid').dataset.renderedBy === 'js'")
    page.wait_for_function(
        "document.querySelectorAll('#grid figure.result img').length === 8 && "
        "[...document.querySelectorAll('#grid figure.result img')]"
        ".every(img => img.complete && img.naturalWidth > 0)"
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
    page.wait_for_function("document.querySelector('#title').textContent === 'More like this'")
    page.wait_for_function(
        "document.querySelectorAll('#grid figure.result img').length === 7 && "
        "[...document.querySelectorAll('#grid figure.result img')]"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )
    ids = page.eval_on_selector_all("#grid figure.result", "els => els.map(e => e.dataset.imageId)")
    assert clicked not in ids and len(ids) == 7

    # Image upload through the file input.
    page.set_input_files("#file", str(serve_photos[3]))
    page.click("#upload-form button")
    page.wait_for_function("document.querySelector('#title').textContent.includes('upload')")
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
