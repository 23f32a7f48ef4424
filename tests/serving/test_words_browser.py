"""Related words on the search page in a real headless Chromium, with JavaScript on and off."""

from __future__ import annotations

import urllib.parse

import pytest

from encoders.glove import locate_glove
from tests.serving.conftest import wait_until


@pytest.fixture(scope="module")
def server(request):
    """The page server (tests/serving/conftest.py), once GloVe is known to be there."""
    try:
        locate_glove("auto")
    except FileNotFoundError as exc:
        pytest.skip(str(exc).splitlines()[0])
    return request.getfixturevalue("page_server")


def _suggested(page) -> list[str]:
    return page.eval_on_selector_all("#words a.word", "links => links.map(a => a.textContent)")


def _click_a_suggestion(page) -> str:
    """Click the first related word; -> the word, once its page has loaded."""
    word = _suggested(page)[0]
    with page.expect_navigation():
        page.click("#words a.word >> nth=0")
    page.wait_for_load_state()
    assert urllib.parse.unquote_plus(urllib.parse.urlparse(page.url).query) == f"q={word}"
    return word


@pytest.mark.slow
@pytest.mark.parametrize("javascript", [False, True], ids=["no-js", "js"])
def test_click_a_related_word(server, browser, javascript: bool) -> None:
    context = browser.new_context(java_script_enabled=javascript)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url + "/")
    assert not page.locator("#words").is_visible()  # no query, no related words
    page.goto(server.url + "/?q=" + urllib.parse.quote("a dog on the grass"))
    assert page.locator("#words").is_visible()
    first = _suggested(page)
    assert first and not {"dog", "grass"} & set(first)

    word = _click_a_suggestion(page)
    assert page.inner_text("#title") == f"Results for “{word}”"
    assert page.locator("#grid figure.result").count() == 8
    assert page.input_value("#q") == word
    # The new page suggests words related to the clicked one.
    assert word not in _suggested(page)
    assert errors == []
    context.close()


@pytest.mark.slow
def test_a_search_in_place_refreshes_the_related_words(server, browser) -> None:
    page = browser.new_page()
    page.goto(server.url + "/?q=dog")
    before = _suggested(page)
    page.fill("#q", "grass")
    page.press("#q", "Enter")
    wait_until(page, "document.querySelector('#grid').dataset.renderedBy === 'js'")
    wait_until(
        page,
        "words => { const now = [...document.querySelectorAll('#words a.word')]"
        ".map(a => a.textContent); return now.length > 0 && now.join() !== words.join(); }",
        arg=before,
    )
    assert page.locator("#words").is_visible() and "grass" not in _suggested(page)
    word = _click_a_suggestion(page)  # a plain link: a real page load
    assert page.inner_text("#title") == f"Results for “{word}”"
    page.close()
