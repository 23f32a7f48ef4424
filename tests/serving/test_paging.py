"""Cutting pages from one ranking: offsets, the threshold, near-duplicates collapsed."""

from __future__ import annotations

import pytest

from serving.paging import PageRequest, cut_page
from serving.searcher import SearchHit

RANKING = [SearchHit(f"img{i}", f"/p/{i}.jpg", 1.0 - i / 100) for i in range(50)]


def search_of(ranking, calls=None):
    def search(n: int):
        if calls is not None:
            calls.append(n)
        return ranking[:n]

    return search


def ids(cut):
    return [hit.image_id for hit in cut.hits]


@pytest.mark.parametrize("k", [1, 3, 7, 50])
def test_pages_tile_the_ranking_without_repeats_or_gaps(k):
    seen, offset = [], 0
    while True:
        cut = cut_page(search_of(RANKING), PageRequest(k, offset), None, len(RANKING))
        seen += ids(cut)
        if not cut.more:
            break
        offset += k
    assert seen == [hit.image_id for hit in RANKING]


def test_min_score_stops_at_the_threshold_and_says_no_more():
    cut = cut_page(search_of(RANKING), PageRequest(10, 0, min_score=0.955), None, 50)
    assert ids(cut) == [f"img{i}" for i in range(5)] and not cut.more
    empty = cut_page(search_of(RANKING), PageRequest(10, 10, min_score=0.955), None, 50)
    assert empty.hits == [] and not empty.more


def test_near_duplicates_collapse_to_the_best_ranked_and_count_the_rest():
    # img1, img2 and img5 are one group; img3 and img4 another.
    groups = {"img1": "g", "img2": "g", "img5": "g", "img3": "h", "img4": "h"}
    calls: list[int] = []
    cut = cut_page(search_of(RANKING, calls), PageRequest(4), groups, 50)
    assert ids(cut) == ["img0", "img1", "img3", "img6"]
    assert cut.hidden == {"img1": 2, "img3": 1} and cut.more
    assert cut.positions == [0, 1, 3, 6]
    assert calls == [5, 10]  # one deeper search, since collapsing left the page short
    shown = cut_page(search_of(RANKING), PageRequest(4, dedupe=False), groups, 50)
    assert ids(shown) == ["img0", "img1", "img2", "img3"] and shown.hidden == {}


def test_collapsed_pages_still_tile_the_collapsed_ranking():
    groups = {f"img{i}": f"g{i // 3}" for i in range(0, 30)}  # triples 0-2, 3-5, ...
    seen, offset = [], 0
    while True:
        cut = cut_page(search_of(RANKING), PageRequest(4, offset), groups, 50)
        seen += ids(cut)
        if not cut.more:
            break
        offset += 4
    assert seen == [f"img{i}" for i in range(0, 30, 3)] + [f"img{i}" for i in range(30, 50)]


def test_a_short_ranking_ends_the_search_and_exclude_hides_hits():
    short = RANKING[:3]
    cut = cut_page(search_of(short), PageRequest(5), None, 50)
    assert ids(cut) == ["img0", "img1", "img2"] and not cut.more
    hidden = cut_page(search_of(RANKING), PageRequest(2), None, 50, lambda h: h.image_id == "img0")
    assert ids(hidden) == ["img1", "img2"] and hidden.more
