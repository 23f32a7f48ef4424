"""Near-duplicate groups as served: the index job's groups collapse results by default, in the
API and in the page (a real headless Chromium, JavaScript on and off); ``dedupe=false`` shows
every member."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from benchmarks.variant_corpus import variant_bytes
from index.manifest import read_manifest
from index.near_duplicates import read_groups
from index.publish import version_dir
from pipelines import index_job
from tests.index_args import fake_index_args
from tests.serving.conftest import JOINT_MODEL, wait_until

QUERY = "a dog running on the grass"
PHOTOS, VARIANTS = 3, (2, 4)  # even variants are not mirrored: the fake encoder keeps them close
IMAGES = PHOTOS * (1 + len(VARIANTS)) + 1  # and one photo alone


@pytest.fixture(scope="module")
def dupes_root(tmp_path_factory, assets_dir, serve_models) -> Path:
    """A publish root serving v1: three Flickr8k photos with two variants each, one alone."""
    photos = sorted((assets_dir / "datasets" / "flickr8k" / "images").glob("*.jpg"))
    if len(photos) < PHOTOS + 1:
        pytest.skip("Flickr8k photos missing from the assets folder")
    corpus = tmp_path_factory.mktemp("served-dupes-corpus")
    for photo in photos[: PHOTOS + 1]:
        shutil.copy(photo, corpus / photo.name)
    for photo in photos[:PHOTOS]:
        for k in VARIANTS:
            (corpus / f"{photo.stem}-v{k}.jpg").write_bytes(variant_bytes(photo, k))
    root = tmp_path_factory.mktemp("served-dupes-root")
    from index.publish import publish_version

    index_job.run(
        fake_index_args(
            corpus, version_dir(str(root), "v1"), "v1", "--models", str(serve_models),
            "--joint_model", JOINT_MODEL, "--near_duplicates", "on",
            "--near_duplicate_threshold", "0.9",
        )
    )  # fmt: skip
    publish_version(str(root), "v1")
    return root


@pytest.fixture(scope="module")
def groups(dupes_root) -> dict[str, str]:
    folder = version_dir(str(dupes_root), "v1")
    found = read_groups(folder, read_manifest(folder))
    # How well the step finds groups is its own tests' and benchmark's business; here at least
    # two groups of variants exist, and what serving shows follows what the job wrote.
    assert found is not None and len(set(found.values())) >= 2
    return found


def _shown(groups: dict[str, str]) -> int:
    """Results a collapsed ranking of every image holds: one per group, plus the singletons."""
    return len(set(groups.values())) + IMAGES - len(groups)


def _hidden(groups: dict[str, str]) -> list[int]:
    """Sorted "+N near-duplicates" counts of the collapsed ranking (0 for singletons)."""
    sizes = {}
    for group in groups.values():
        sizes[group] = sizes.get(group, 0) + 1
    return sorted([0] * (IMAGES - len(groups)) + [size - 1 for size in sizes.values()])


@pytest.fixture(scope="module")
def dupes_server(dupes_root, serve_models):
    from serving.app import create_app
    from serving.config import ServeConfig
    from serving.server import BackgroundServer

    config = ServeConfig(index=str(dupes_root), models_dir=str(serve_models), poll_interval_s=0)
    with BackgroundServer(create_app(config)) as running:
        yield running


def _search(server, **params) -> dict:
    answer = httpx.get(server.url + "/api/search", params={"q": QUERY, "k": 20, **params})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_api_collapses_each_group_to_its_best_ranked_member(dupes_server, groups) -> None:
    everything = _search(dupes_server, dedupe="false")["results"]
    assert len(everything) == IMAGES
    assert {r["image_id"] for r in everything if r["near_duplicate_group"]} == set(groups)
    assert all(r["near_duplicate_group"] == groups.get(r["image_id"]) for r in everything)

    collapsed = _search(dupes_server)["results"]
    assert len(collapsed) == _shown(groups)
    # Each group is shown by its best-ranked member, in the order of the full ranking.
    first_of_group: dict[str, str] = {}
    for r in everything:
        first_of_group.setdefault(r["near_duplicate_group"] or r["image_id"], r["image_id"])
    assert [r["image_id"] for r in collapsed] == list(first_of_group.values())
    hidden = {r["image_id"]: r.get("near_duplicates_hidden", 0) for r in collapsed}
    assert sorted(hidden.values()) == _hidden(groups)

    # A group is a filter field: one group's members, or the photos without a near-duplicate.
    some_group = next(iter(groups.values()))
    members = _search(dupes_server, dedupe="false", filter=f'near_duplicate_group = "{some_group}"')
    assert sorted(r["image_id"] for r in members["results"]) == sorted(
        i for i, g in groups.items() if g == some_group
    )
    alone = _search(dupes_server, filter="near_duplicate_group IS NULL")["results"]
    assert {r["image_id"] for r in alone} == {r["image_id"] for r in everything} - set(groups)

    # Pages of the collapsed ranking neither repeat nor skip a group.
    pages = [_search(dupes_server, k=2, offset=o)["results"] for o in range(0, len(collapsed), 2)]
    assert [r["image_id"] for page in pages for r in page] == [r["image_id"] for r in collapsed]


def _result_ids(page) -> list[str]:
    return page.eval_on_selector_all(
        "#grid figure.result", "els => els.map(e => e.dataset.imageId)"
    )


@pytest.mark.slow
@pytest.mark.parametrize("javascript", [True, False])
def test_the_page_shows_one_result_per_group_until_asked_for_all(
    dupes_server, browser, groups, javascript
) -> None:
    context = browser.new_context(java_script_enabled=javascript)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def search() -> list[str]:
        page.press("#q", "Enter")
        if javascript:
            wait_until(
                page,
                "document.querySelector('#grid').dataset.renderedBy === 'js'"
                " && document.querySelectorAll('#grid figure.result').length > 0",
            )
        page.wait_for_selector("#grid figure.result")
        return _result_ids(page)

    page.goto(dupes_server.url + "/")
    page.fill("#q", QUERY)
    collapsed = search()
    assert len(collapsed) == len({groups.get(i, i) for i in collapsed}) == _shown(groups)
    notes = page.locator("#grid .dupes").all_inner_texts()
    assert sorted(notes) == sorted(f"+{n} near-duplicate(s)" for n in _hidden(groups) if n)

    # Each "+N" links to its whole group: the same query, filtered to the group, all shown.
    figure = page.locator("#grid figure.result", has=page.locator(".dupes a")).first
    grouped = figure.get_attribute("data-image-id")
    figure.hover()  # the caption box (and its link) shows on hover or keyboard focus
    figure.locator(".dupes a").click()
    page.wait_for_load_state()
    page.wait_for_selector("#grid figure.result")
    group = groups[grouped]
    assert sorted(_result_ids(page)) == sorted(i for i, g in groups.items() if g == group)
    assert page.input_value("#filter") == f'near_duplicate_group = "{group}"'
    page.goto(dupes_server.url + "/")
    page.fill("#q", QUERY)
    search()

    page.check("#show-dupes")
    if javascript:  # the grid is replaced: wait for the full one
        page.press("#q", "Enter")
        wait_until(page, f"document.querySelectorAll('#grid figure.result').length === {IMAGES}")
        shown = _result_ids(page)
    else:
        shown = search()
    assert len(shown) == len(set(shown)) == IMAGES and set(collapsed) < set(shown)
    assert page.locator("#grid .dupes").count() == 0
    assert errors == []
    context.close()
