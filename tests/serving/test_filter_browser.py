"""The search page's filter box in a real headless Chromium, with JavaScript on and off."""

from __future__ import annotations

import pytest

from tests.serving.conftest import wait_until

QUERY = "a dog playing in the park"


def _result_ids(page) -> list[str]:
    return page.eval_on_selector_all(
        "#grid figure.result", "els => els.map(e => e.dataset.imageId)"
    )


@pytest.mark.slow
@pytest.mark.parametrize("javascript", [True, False])
def test_the_filter_box_keeps_only_matching_results(page_server, browser, javascript) -> None:
    context = browser.new_context(java_script_enabled=javascript)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(page_server.url + "/")
    page.fill("#q", QUERY)
    page.fill("#filter", 'site = "coco"')
    page.press("#q", "Enter")
    if javascript:
        wait_until(page, "document.querySelector('#grid').dataset.renderedBy === 'js'")
    page.wait_for_selector("#grid figure.result")
    ids = _result_ids(page)
    assert len(ids) == 4  # the fixture alternates flickr / coco over 8 photos
    assert all("site: coco" in text for text in page.locator("#grid .info").all_inner_texts())
    assert "filter=site" in page.url

    # A bad filter says why, in the page.
    page.fill("#filter", "nope >= 3")
    page.press("#q", "Enter")
    wait_until(page, "document.querySelector('#error').textContent.includes('bad filter')")
    assert "unknown field 'nope'" in page.inner_text("#error")
    assert errors == []
    context.close()
