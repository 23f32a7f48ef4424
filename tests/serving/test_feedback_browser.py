"""Relevance feedback on the search page in a real headless Chromium: tick two, search again."""

from __future__ import annotations

import pytest


def _ids(page) -> list[str]:
    return page.eval_on_selector_all(
        "#grid figure.result", "els => els.map(e => e.dataset.imageId)"
    )


def _tick_two_and_search_again(page, server_url: str) -> tuple[list[str], list[str]]:
    """On a server-rendered result page: tick results 2 and 4, submit; (ticked, refined ids)."""
    boxes = page.locator("#grid input.relevant")
    assert boxes.count() == 8
    ticked = [boxes.nth(i).get_attribute("value") for i in (1, 3)]
    for i in (1, 3):
        boxes.nth(i).check()
    page.click("#feedback-submit")
    page.wait_for_url(f"{server_url}/feedback?**")
    page.wait_for_load_state()
    return ticked, _ids(page)


@pytest.mark.slow
def test_tick_two_results_and_search_again_without_javascript(page_server, browser) -> None:
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(page_server.url + "/")
    page.fill("#q", "a dog playing in the park")
    page.click("#search-form button")
    page.wait_for_load_state()
    before = _ids(page)
    ticked, after = _tick_two_and_search_again(page, page_server.url)
    assert "q=a+dog+playing+in+the+park" in page.url
    assert page.url.count("relevant=") == 2
    assert "Refined with 2 image(s)" in page.inner_text("#title")
    assert sorted(after) == sorted(before) and len(after) == 8  # all 8 photos, reordered
    # The two ticked images stay ticked, so the user can refine again.
    checked = page.eval_on_selector_all(
        "#grid input.relevant:checked", "els => els.map(e => e.value)"
    )
    assert sorted(checked) == sorted(ticked)
    # The refined order is the API's Rocchio ranking for the same judgement.
    api = page.request.post(
        page_server.url + "/api/feedback/search",
        data={"q": "a dog playing in the park", "relevant": ticked},
    ).json()
    assert after == [r["image_id"] for r in api["results"]]
    # Refining again from the refined page works too.
    page.locator("#grid input.relevant").nth(0).check()
    page.click("#feedback-submit")
    page.wait_for_load_state()
    assert "Refined with" in page.inner_text("#title")
    context.close()


@pytest.mark.slow
def test_the_same_form_works_with_javascript_on(page_server, browser) -> None:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(page_server.url + "/?q=" + "two people walking".replace(" ", "+"))  # server-rendered
    _, after = _tick_two_and_search_again(page, page_server.url)
    assert "Refined with 2 image(s)" in page.inner_text("#title") and len(after) == 8
    assert errors == []
    page.close()
