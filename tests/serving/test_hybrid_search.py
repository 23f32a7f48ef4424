"""Hybrid search: BM25 over row text fused with the joint cosine; a fake bundle and a real one."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from encoders.base import l2_normalize
from encoders.joint import KIND_W2VV
from index.stored_vectors import StoredVectors
from ranking.bm25 import BM25Index
from serving.hybrid_search import (
    DEFAULT_HYBRID_WEIGHT,
    HybridIndex,
    candidate_scores,
    hybrid_search,
    metadata_strings,
    rank_candidates,
    row_text,
    tokenize,
)
from serving.query_error import QueryError
from serving.searcher import SearchHit

CAPTIONS = [
    "a cat sleeps on a sofa",
    "a dog runs on the grass near a lake",
    "a dog and a cat",
    "a red bike against a wall",
    "",
]
# 2-d "image" vectors: the first axis is what the fake encoder calls "dog", the second "cat".
EMBEDDINGS = l2_normalize(
    np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.8, 0.2], [0.5, 0.5]], np.float32)
)
# Every other word is unknown to the encoder; "puppy" is in no caption.
WORDS = {"dog": [1.0, 0.0], "puppy": [1.0, 0.0], "cat": [0.0, 1.0]}


class _Encoder:
    encoder_id = "fake-words/v1"

    def encode(self, texts):
        rows = [np.sum([WORDS.get(w, [0.0, 0.0]) for w in t.split()] or [[0.0, 0.0]], axis=0)
                for t in texts]  # fmt: skip
        return np.asarray(rows, np.float32)


class _Joint:
    kind = KIND_W2VV  # text maps into the image space: image vectors are used as they are

    def embed_text_features(self, features):
        return np.asarray(features, np.float32)


class _Images:
    vectors = StoredVectors(EMBEDDINGS)

    def __len__(self) -> int:
        return len(EMBEDDINGS)

    def row_of(self, image_id: str) -> int | None:
        return int(image_id[3:]) if image_id.startswith("img") else None

    def hit_for_row(self, row: int, score: float) -> SearchHit:
        return SearchHit(f"img{row}", f"/photos/{row}.jpg", float(score))


class _Text:
    """Stand-in for TextSearcher: exact search over the fake image vectors."""

    images, joint, text_encoder = _Images(), _Joint(), _Encoder()

    def search_embedded(self, vectors, k, allowed=None):
        scores = l2_normalize(vectors)[0] @ EMBEDDINGS.T
        rows = [r for r in np.argsort(-scores, kind="stable") if allowed is None or allowed[r]]
        return [[self.images.hit_for_row(int(r), scores[r]) for r in rows[:k]]]


class _Bundle:
    images = _Images()
    text = _Text()

    def __init__(self, keywords=None, text="default"):
        # What IndexBundle.keywords is: the version's index, built when first asked for.
        self.keywords = None if keywords is None else SimpleNamespace(get=lambda: keywords)
        if text is None:
            self.text = None


@pytest.fixture(scope="module")
def keywords() -> HybridIndex:
    return HybridIndex.from_texts(CAPTIONS)


def _ids(found) -> list[str]:
    return [hit.image_id for hit in found.hits]


def test_weight_zero_is_the_vector_order_and_one_the_bm25_order(keywords):
    bundle = _Bundle(keywords)
    vector_order = [f"img{r}" for r in np.argsort(-(EMBEDDINGS @ [1.0, 0.0]), kind="stable")]
    assert _ids(hybrid_search(bundle, "a dog", 5, weight=0.0)) == vector_order
    bm25 = BM25Index.build(tokenize(CAPTIONS)).scores(["dog"])
    bm25_order = [f"img{r}" for r in np.lexsort((np.arange(5), -bm25))]
    assert _ids(hybrid_search(bundle, "a dog", 5, weight=1.0)) == bm25_order
    assert bm25_order[:2] == ["img2", "img1"]  # the shorter caption first; the rest tie at 0
    assert _ids(hybrid_search(bundle, "a dog", 2, weight=1.0)) == bm25_order[:2]


def test_why_gives_both_parts_and_they_make_the_score(keywords):
    found = hybrid_search(_Bundle(keywords), "dog on grass", 5, weight=0.4)
    assert found.query == {"text": "dog on grass", "mode": "hybrid", "hybrid_weight": 0.4,
                           "terms": ["dog", "grass"], "candidates": 5}  # fmt: skip
    scores = [hit.score for hit in found.hits]
    assert scores == sorted(scores, reverse=True)
    for hit, why in zip(found.hits, found.whys, strict=True):
        assert why["match"] == "hybrid" and why["weight"] == 0.4
        assert 0 <= why["vector"] <= 1 and 0 <= why["keyword"] <= 1
        assert hit.score == pytest.approx(0.6 * why["vector"] + 0.4 * why["keyword"], abs=1e-3)
        assert why["cosine"] == pytest.approx(
            float(EMBEDDINGS[int(hit.image_id[3:])] @ [1.0, 0.0]), abs=1e-4
        )
    row1 = found.whys[_ids(found).index("img1")]
    assert [t["term"] for t in row1["matched_terms"]] == ["dog", "grass"]
    assert row1["keyword"] == 1.0  # the only row with both words: the best BM25
    assert sum(t["score"] for t in row1["matched_terms"]) == pytest.approx(row1["bm25"], abs=1e-3)
    assert found.whys[_ids(found).index("img0")]["matched_terms"] == []


def test_default_weight_and_weight_checks(keywords):
    bundle = _Bundle(keywords)
    assert hybrid_search(bundle, "dog", 1).whys[0]["weight"] == DEFAULT_HYBRID_WEIGHT
    for bad in (-0.1, 1.5, float("nan"), "x"):
        with pytest.raises(QueryError, match="weight") as refused:
            hybrid_search(bundle, "dog", 3, weight=bad)
        assert refused.value.status == 400
    with pytest.raises(QueryError, match="empty"):
        hybrid_search(bundle, "   ", 3)
    with pytest.raises(QueryError, match="not enabled"):
        hybrid_search(_Bundle(None), "dog", 3)


def test_candidates_are_the_union_of_both_top_lists(keywords):
    found = candidate_scores(_Bundle(keywords), keywords, "dog", candidates=1)
    assert found.rows.tolist() == [0, 2]  # the vector's best, then BM25's best
    assert found.bm25[0] == 0 and found.bm25[1] > 0
    np.testing.assert_allclose(found.cosine, EMBEDDINGS[[0, 2]] @ [1.0, 0.0], atol=1e-6)
    assert len(hybrid_search(_Bundle(keywords), "dog", 1, candidates=1).hits) == 1
    orders = rank_candidates(found, [0.0, 1.0])
    assert orders[0.0].tolist() == [0, 2] and orders[1.0].tolist() == [2, 0]


def test_words_unknown_to_the_encoder_rank_by_keywords_alone(keywords):
    found = hybrid_search(_Bundle(keywords), "red bike", 5, weight=0.0)
    assert _ids(found) == ["img3"]  # only BM25 candidates: no vector part to take the rest
    assert found.whys[0]["vector"] is None and "no word" in found.whys[0]["vector_off"]
    no_joint = hybrid_search(_Bundle(keywords, text=None), "dog", 5)
    assert _ids(no_joint) == ["img2", "img1"] and "no joint model" in no_joint.whys[0]["vector_off"]
    with pytest.raises(QueryError, match="no row's text") as refused:
        hybrid_search(_Bundle(keywords), "zebra", 5)
    assert refused.value.status == 400


def test_words_in_no_row_rank_by_the_vector(keywords):
    vector_order = [f"img{r}" for r in np.argsort(-(EMBEDDINGS @ [1.0, 0.0]), kind="stable")]
    found = hybrid_search(_Bundle(keywords), "a puppy", 5, weight=0.9)
    assert _ids(found) == vector_order
    assert all(w["keyword"] == 0 and w["matched_terms"] == [] for w in found.whys)


def test_allowed_rows_filter_both_parts(keywords):
    allowed = np.array([False, True, False, True, True])
    found = hybrid_search(_Bundle(keywords), "dog", 5, weight=0.5, allowed=allowed)
    assert set(_ids(found)) == {"img1", "img3", "img4"}


def test_row_text_takes_caption_tags_and_metadata_strings():
    metadata = json.dumps({"title": "Eiffel tower", "alt": ["at night", 3], "size": 2,
                           "nested": {"credit": "Jane"}})  # fmt: skip
    text = row_text("a tall tower", [{"label": "steel arch bridge", "score": 0.5}], metadata)
    assert tokenize([text])[0] == ["tall", "tower", "steel", "arch", "bridge", "eiffel", "tower",
                                   "night", "jane"]  # fmt: skip
    assert metadata_strings({"title": "x", "n": 1, "k": None}) == ["x"]
    assert row_text(None, None, "not json {") == "not json {"
    assert row_text(None, [], None) == ""


def test_real_bundle_from_its_table(built_versions, serve_models):
    """The served index of the suite: real COCO photos, titles and sites as source metadata."""
    from serving.state import QueryModels, load_bundle

    bundle = load_bundle(str(built_versions["v2"]), QueryModels.load(str(serve_models)))
    keywords = HybridIndex.from_details(bundle.details, bundle.searcher_rows)
    assert len(keywords) == len(bundle.images) == 8
    titles = {bundle.details.describe(i)["source_metadata"]["title"]: i
              for i in bundle.details.image_ids()}  # fmt: skip
    wanted = titles["photo 000000000802"]
    # A title's number is unknown to the bag-of-words encoder: keywords alone find its photo.
    found = hybrid_search(bundle, "000000000802", 10, keywords=keywords)
    assert [hit.image_id for hit in found.hits] == [wanted]
    assert found.whys[0]["vector"] is None and found.whys[0]["keyword"] == 1.0
    assert found.whys[0]["matched_terms"][0]["term"] == "000000000802"
    # With a word the joint model knows, both parts count; weight 1 puts the titled photo first.
    found = hybrid_search(bundle, "dog 000000000802", 8, weight=1.0, keywords=keywords)
    assert found.hits[0].image_id == wanted and len(found.hits) == 8
    assert all(w["vector"] is not None for w in found.whys)
    # "coco" is the site of 4 of the 8 photos: idf ln(4.5 / 4.5) = 0 (rank_bm25's formula).
    coco = hybrid_search(bundle, "dog coco", 8, weight=1.0, keywords=keywords)
    assert {w["bm25"] for w in coco.whys} == {0.0}
    only_titles = HybridIndex.from_details(bundle.details, bundle.searcher_rows, ["caption"])
    assert not only_titles.keywords.weights.nnz  # no captioner: no caption text


@pytest.fixture(scope="module")
def client(v2_client):
    return v2_client


def test_the_api_ranks_by_keywords_and_vectors_with_mode_hybrid(client):
    plain = client.get("/api/search", params={"q": "dog 000000000802", "k": 8}).json()
    # The suite's index titles each photo "photo <file stem>" (tests/conftest.py).
    wanted = next(r["image_id"] for r in plain["results"] if r["uri"].endswith("000000000802.jpg"))
    params = {"q": "dog 000000000802", "k": 3, "mode": "hybrid", "hybrid_weight": 1.0}
    body = client.get("/api/search", params=params).json()
    assert body["query"]["mode"] == "hybrid" and body["query"]["hybrid_weight"] == 1.0
    assert body["results"][0]["image_id"] == wanted
    why = body["results"][0]["why"]
    assert why["match"] == "hybrid" and why["keyword"] == 1.0 and why["vector"] is not None
    assert [t["term"] for t in why["matched_terms"]] == ["000000000802"]
    # Pages, filters and the default weight, as every search route.
    second = client.get("/api/search", params={**params, "offset": 3}).json()["results"]
    assert not {r["image_id"] for r in second} & {r["image_id"] for r in body["results"]}
    only_flickr = client.get(
        "/api/search", params={**params, "k": 8, "filter": 'site = "flickr"'}
    ).json()["results"]
    assert {r["metadata"]["site"] for r in only_flickr} == {"flickr"} and len(only_flickr) == 4
    default = client.get("/api/search", params={"q": "dog", "mode": "hybrid"}).json()
    assert default["query"]["hybrid_weight"] == DEFAULT_HYBRID_WEIGHT
    # Bad weights and a weight without the mode are 4xx with the reason.
    assert client.get("/api/search", params={**params, "hybrid_weight": 2}).status_code == 422
    stray = client.get("/api/search", params={"q": "dog", "hybrid_weight": 0.5})
    assert stray.status_code == 400 and "mode=hybrid" in stray.json()["detail"]
    # The page (server-rendered) takes the mode too, and keeps it in its next-page link.
    page = client.get("/", params={"q": "000000000802", "mode": "hybrid"})
    assert (
        page.status_code == 200
        and 'id="hybrid" type="checkbox" name="mode" value="hybrid" checked' in page.text
    )


def test_the_cli_searches_in_hybrid_mode_without_a_joint_model(built_versions, capsys):
    from imgsearch import cli

    code = cli.main(["search", "--index", str(built_versions["v2"]), "--text", "000000000802",
                     "--hybrid", "--json"])  # fmt: skip
    assert code == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 1 and results[0]["uri"].endswith("000000000802.jpg")
    assert results[0]["why"]["vector"] is None  # keywords alone: no --models
    code = cli.main(["search", "--index", str(built_versions["v2"]), "--text", "000000000802",
                     "--hybrid"])  # fmt: skip
    assert code == 0 and "vector off, keyword 1.000" in capsys.readouterr().out
