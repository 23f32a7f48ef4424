"""Caption-matching baselines on hand cases: Jaccard, BM25 (rank-bm25), vector cosine, and an
image of several captions scored as its best one."""

from __future__ import annotations

import numpy as np

from encoders.text_match import BM25Scorer, JaccardScorer, VectorScorer, make_caption_scorer

CAPTIONS = [
    "a dog runs on the grass",
    "a man rides a bike on the street",
    "two dogs play in the snow",
    "",
]


def test_jaccard_counts_shared_content_words():
    scores = JaccardScorer(CAPTIONS).score(["dog grass", "man on a bike", "the", "zebra dog"])
    # "dog grass" vs {dog, runs, grass}: 2 / 3; vs the others: 0.
    np.testing.assert_allclose(scores[0], [2 / 3, 0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(
        scores[1], [0, 2 / 4, 0, 0], rtol=1e-6
    )  # {man, bike} | {man, rides, bike, street}
    assert not scores[2].any()  # function words only
    np.testing.assert_allclose(scores[3][0], 1 / 4)  # an unknown word still widens the union


def test_bm25_prefers_rarer_and_repeated_terms():
    scorer = BM25Scorer(CAPTIONS)
    scores = scorer.score(["dog", "snow dogs", "bike street", "nothing here"])
    assert scores[0].argmax() == 0 and scores[0][1] == 0
    assert scores[1].argmax() == 2
    assert scores[2].argmax() == 1
    assert not scores[3].any()
    assert not BM25Scorer(["", ""]).score(["dog"]).any()  # empty corpus: zeros, no crash


def test_vector_scorer_is_cosine_of_encoder_vectors():
    class Letters:
        def encode(self, texts):
            return np.array([[t.count("a"), t.count("o"), 0.0] for t in texts], np.float32)

    scores = VectorScorer(Letters(), ["aaa", "ooo", ""]).score(["a", "ao"])
    np.testing.assert_allclose(scores[0], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(scores[1, :2], [2**-0.5, 2**-0.5], atol=1e-6)


def test_an_image_with_several_captions_scores_as_its_best_matching_one():
    beams = [["a dog runs on the grass", "a brown dog in a field"], ["a man rides a bike"], []]
    queries = ["dog field", "bike man", "snow"]
    for method in ("caption-jaccard", "caption-bm25", "caption-tfidf"):
        scores = make_caption_scorer(method, beams)(queries)
        flat = make_caption_scorer(method, [c for group in beams for c in group] + [""])
        each = flat(queries)  # one column per caption: dog x2, bike, the empty image's ""
        np.testing.assert_allclose(scores[:, 0], each[:, :2].max(axis=1), rtol=1e-6)
        np.testing.assert_allclose(scores[:, 1:], each[:, 2:], rtol=1e-6)
        assert scores.shape == (3, 3) and scores[0].argmax() == 0 and scores[1].argmax() == 1
    # One caption per image, as a string or a one-item list: the plain scorer's scores.
    np.testing.assert_array_equal(
        make_caption_scorer("caption-jaccard", ["a dog", "a bike"])(queries),
        make_caption_scorer("caption-jaccard", [["a dog"], ["a bike"]])(queries),
    )
