"""Fused search wiring: parts, fusion rule, and the "why it matched" fields of each hit."""

from __future__ import annotations

import numpy as np
import pytest

from serving.fused_search import FusedSearcher
from serving.searcher import SearchHit


class _Images:
    """Stand-in for ImageSearcher: only what FusedSearcher touches (three indexed images)."""

    ids = ["dog", "bike", "beach"]

    def __len__(self) -> int:
        return 3

    def hit_for_row(self, row: int, score: float) -> SearchHit:
        return SearchHit(self.ids[row], f"/photos/{self.ids[row]}.jpg", score)


class _Joint:
    """Stand-in for TextSearcher: the joint model likes "bike" for every query."""

    images = _Images()

    def score_all(self, queries):
        return np.tile(np.array([0.1, 0.9, 0.5], np.float32), (len(queries), 1))


CAPTIONS = ["a brown dog runs on the grass", "a man rides a bike", "people on a sandy beach"]
TAGS = [
    [{"label": "golden retriever", "score": 0.8}, {"label": "lawn mower", "score": 0.1}],
    [{"label": "mountain bike", "score": 0.9}],
    [{"label": "seashore", "score": 0.7}, {"label": "sandbar", "score": 0.2}],
]


@pytest.fixture(scope="module")
def synonyms(assets_dir):
    """The real ImageNet head's class names (its dog breeds also match "dog")."""
    from encoders.tags import TagHead, resolve_tag_head

    return TagHead.load(resolve_tag_head("auto")).synonyms


def test_rrf_fusion_lets_captions_and_tags_outvote_the_joint_model(synonyms):
    searcher = FusedSearcher({"dual-x": _Joint()}, CAPTIONS, TAGS, tag_synonyms=synonyms)
    assert searcher.methods == ["caption-bm25", "dual-x", "tags-glove"]
    hits = searcher.search("a dog on the grass", k=3)
    assert hits[0].image_id == "dog"  # caption and tags agree, the joint model does not
    top = hits[0]
    assert top.caption == CAPTIONS[0] and top.tags == TAGS[0]
    assert set(top.parts) == {"caption-bm25", "dual-x", "tags-glove"}
    assert top.parts["caption-bm25"] > 0 and top.parts["dual-x"] == pytest.approx(0.1)
    assert top.matched_tags[0] == {"word": "dog", "tag": "golden retriever", "score": 0.8}
    with pytest.raises(ValueError, match="empty"):
        searcher.search("  ")


def test_fitted_weights_decide_and_must_be_available(synonyms):
    joint_only = FusedSearcher({"dual-x": _Joint()}, CAPTIONS, TAGS,
                               weights={"dual-x": 1.0, "caption-jaccard": 0.0})  # fmt: skip
    assert joint_only.search("a dog", k=1)[0].image_id == "bike"
    with pytest.raises(ValueError, match="cannot give"):
        FusedSearcher({"dual-x": _Joint()}, None, None, weights={"dual-x": 1, "tags-glove": 1})


def test_two_joint_models_fused_with_fitted_weights():
    class _Other(_Joint):
        def score_all(self, queries):
            return np.tile(np.array([0.9, 0.1, 0.5], np.float32), (len(queries), 1))

    searcher = FusedSearcher({"dual-x": _Joint(), "w2vv-y": _Other()}, CAPTIONS, None,
                             weights={"dual-x": 1.0, "w2vv-y": 2.0})  # fmt: skip
    hit = searcher.search("anything", k=1)[0]
    assert hit.image_id == "dog" and hit.parts == {"dual-x": 0.1, "w2vv-y": 0.9}
    assert hit.caption == CAPTIONS[0] and hit.tags is None
