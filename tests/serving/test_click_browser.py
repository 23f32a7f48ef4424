"""The search page's click log in headless Chromium: views and clicks reach the Parquet log."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from serving.app import create_app
from serving.config import ServeConfig
from serving.event_log import EventLimits
from serving.event_writer import read_events
from serving.server import BackgroundServer
from tests.serving.conftest import wait_until


@pytest.fixture(scope="module")
def logged(tmp_path_factory, built_versions, serve_models):
    """A server with the click log on (files written only when the test flushes)."""
    from tests.serving.conftest import publish

    root = tmp_path_factory.mktemp("click-root")
    publish(root, built_versions["v2"], "v2")
    events = tmp_path_factory.mktemp("click-log")
    config = ServeConfig(
        index=str(root),
        models_dir=str(serve_models),
        poll_interval_s=0,
        events_dir=str(events),
        event_limits=EventLimits(flush_interval_s=3600),
    )
    app = create_app(config)
    with BackgroundServer(app) as running:
        yield running, app.state.event_writer, str(events)


def _logged_events(writer, folder: str, count: int) -> list[dict]:
    """The first ``count`` events the page sent, once they are in the log (beacons are async)."""
    deadline = time.monotonic() + 15
    rows: list[dict] = []
    while time.monotonic() < deadline:
        writer.flush()
        rows = read_events(folder).to_pylist()
        if len(rows) >= count:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"expected {count} events in the log, got {rows}")


@pytest.mark.slow
def test_views_and_clicks_reach_the_log(logged, browser, serve_photos: list[Path]) -> None:
    server, writer, folder = logged
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.url + "/?q=a+dog+on+grass")
    second = page.locator("#grid figure.result").nth(1)
    clicked = second.get_attribute("data-image-id")
    second.locator("a.thumb").click()  # opens the details in place
    page.wait_for_selector("#details:not([hidden])")
    view, click = _logged_events(writer, folder, 2)
    assert {k: view[k] for k in ("kind", "query_kind", "query", "version", "image_id")} == {
        "kind": "view", "query_kind": "text", "query": "a dog on grass", "version": "v2",
        "image_id": None,
    }  # fmt: skip
    assert (click["kind"], click["image_id"], click["rank"]) == ("click", clicked, 2)
    assert click["query"] == "a dog on grass" and click["serving_version"] == "v2"
    assert click["session"] and click["session"] == view["session"]

    # "more like this" (drawn in place by the page's script): a click, then a view of the
    # similar results.
    first = page.locator("#grid figure.result").first
    reference = first.get_attribute("data-image-id")
    first.locator("a.more").click()
    wait_until(page, "document.querySelector('#title').textContent === 'More like this'")
    more, similar = _logged_events(writer, folder, 4)[2:]
    assert (more["kind"], more["image_id"], more["rank"]) == ("click", reference, 1)
    assert (similar["kind"], similar["query_kind"], similar["query"]) == (
        "view", "similar", reference,
    )  # fmt: skip

    # A text search drawn in place, then an image upload: one view each, with the right kind.
    page.fill("#q", "two people walking")
    page.press("#q", "Enter")
    wait_until(page, "document.querySelector('#title').textContent.includes('people')")
    page.set_input_files("#file", str(serve_photos[3]))
    page.click("#upload-form button")
    wait_until(page, "document.querySelector('#title').textContent.includes('upload')")
    text_view, image_view = _logged_events(writer, folder, 6)[4:]
    assert (text_view["query_kind"], text_view["query"]) == ("text", "two people walking")
    assert (image_view["kind"], image_view["query_kind"]) == ("view", "image")
    assert errors == []
    page.close()
