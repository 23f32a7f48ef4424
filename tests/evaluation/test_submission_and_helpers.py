"""Submission scoring and the ANN / gallery helpers against hand-computed cases (no pipeline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evaluation.eval_job import _overlap, _recall_of
from evaluation.report import gallery_queries
from evaluation.submission import read_submission, score_rankings, write_submission
from training.captions import CaptionedDataset, DatasetError


def _dataset() -> CaptionedDataset:
    images = [(name, f"/nowhere/{name}") for name in ("a.jpg", "b.jpg", "c.jpg")]
    captions = [("a.jpg", "a cat"), ("b.jpg", "a dog"), ("c.jpg", "a cow"), ("a.jpg", "cat, sat")]
    return CaptionedDataset("/nowhere", "folder", None, images, captions)


def test_score_by_hand():
    dataset = _dataset()
    rankings = {
        0: ["a.jpg", "b.jpg"],  # rank 1
        1: ["a.jpg", "c.jpg", "b.jpg"],  # rank 3
        2: ["a.jpg"],  # c.jpg not listed: a miss
        3: ["b.jpg", "a.jpg"],  # rank 2
    }
    score = score_rankings(dataset, rankings, ks=(1, 2, 3))
    assert score == {
        "R@1": 0.25,
        "R@2": 0.5,
        "R@3": 0.75,
        "MRR@3": pytest.approx((1 + 1 / 3 + 0 + 1 / 2) / 4),
        "queries": 4,
        "list_length": 3,
    }


def test_write_then_read_round_trips_quotes_and_commas(tmp_path: Path):
    dataset = _dataset()
    rankings = [["a.jpg"], ["b.jpg", "a.jpg"], ["c.jpg"], ["a.jpg", "c.jpg"]]
    path = write_submission(tmp_path / "s.csv", dataset, rankings)
    assert read_submission(path, dataset) == dict(enumerate(rankings))


def test_read_names_every_wrong_line(tmp_path: Path):
    dataset = _dataset()
    path = tmp_path / "bad.csv"
    path.write_text(
        "query_id,query,image_ids\n"
        "q000000,a cat,a.jpg zzz.jpg\n"  # line 2: unknown image
        "q000001,a horse,b.jpg\n"  # line 3: not the dataset's caption
        "q000002,a cow,\n"  # line 4: empty ranking
        "q000002,a cow,c.jpg\n"  # line 5: fine (first valid line for q2)
        "q000009,x,a.jpg\n"  # line 6: unknown id
        'q000003,"cat, sat",a.jpg a.jpg\n'  # line 7: listed twice
    )
    with pytest.raises(DatasetError) as caught:
        read_submission(path, dataset)
    problems = caught.value.problems
    assert problems["unknown image id"] == ["line 2: q000000: ['zzz.jpg']"]
    assert "line 3" in problems["query text differs from the dataset's caption"][0]
    assert problems["empty ranking"] == ["line 4: q000002"]
    assert problems["unknown query id"] == ["line 6: 'q000009'"]
    assert problems["image listed twice"] == ["line 7: q000003"]
    path.write_text("query,image_ids\n")
    with pytest.raises(DatasetError, match="bad header"):
        read_submission(path, dataset)
    path.write_text("query_id,query,image_ids\nq000000,a cat,a.jpg\n")
    with pytest.raises(DatasetError, match="3 x query without a line"):
        read_submission(path, dataset)


def test_recall_and_overlap_by_hand():
    rows = np.array([[4, 2, 7], [1, 0, -1], [5, 6, 8]])
    own = np.array([2, 1, 9])
    assert _recall_of(rows, own, (1, 2, 3, 10)) == {"R@1": 1 / 3, "R@2": 2 / 3, "R@3": 2 / 3}
    exact = np.array([[4, 2, 7], [1, 0, 3], [8, 6, 5]])
    # 3/3, 2/3 (the -1 padding is not a hit), 3/3 (order does not matter)
    assert _overlap(rows, exact) == pytest.approx((1 + 2 / 3 + 1) / 3)


def test_gallery_picks_spread_examples_and_worst_with_ties_by_row():
    ranks = np.array([1, 9, 3, 9, 2, 1])
    spread, worst = gallery_queries(ranks, examples=3, failures=3)
    assert spread == [0, 2, 5]
    assert worst == [1, 3, 2]  # rank 9 twice (lower row first), then rank 3


def test_method_families_plug_in_by_name():
    from evaluation import methods

    def identity(context) -> list:
        vectors = np.eye(3, dtype=np.float32)
        return [
            methods.Method(
                name="identity",
                family="test-identity",
                description={},
                caption_vectors=vectors,
                image_vectors=vectors,
                embed_query=lambda text: vectors[0],
            )
        ]

    methods.register_family("test-identity")(identity)
    try:
        assert "test-identity" in methods.family_names()
        found = methods.prepare_methods(None, ["test-identity"])
        assert [m.name for m in found] == ["identity"]
        with pytest.raises(ValueError, match="already registered"):
            methods.register_family("test-identity")(identity)
        with pytest.raises(ValueError, match="unknown method families"):
            methods.prepare_methods(None, ["no-such-family"])
    finally:
        methods._FAMILIES.pop("test-identity")


def test_ann_figures_measure_a_real_lossy_scann_tree():
    """A tree-AH index that searches 1 leaf of 40 must lose neighbours, and the figures say so."""
    from encoders.base import l2_normalize
    from evaluation import methods
    from evaluation.eval_job import ann_figures
    from index.scann_index import ScannParams, build_searcher, exact_top_k, search_batched

    rng = np.random.default_rng(3)
    images = l2_normalize(rng.standard_normal((1600, 32)).astype(np.float32))
    own = np.repeat(np.arange(400), 2)  # two captions for each of the first 400 images
    captions = l2_normalize(images[own] + 0.6 * rng.standard_normal((800, 32)).astype(np.float32))
    params = ScannParams(
        kind="tree_ah", num_neighbors=10, num_leaves=40, num_leaves_to_search=1,
        training_sample_size=1600, dims_per_block=2, anisotropic_quantization_threshold=0.2,
        reorder_k=20,
    )  # fmt: skip
    searcher = build_searcher(images, params)
    method = methods.Method(
        name="lossy",
        family="test",
        description={},
        caption_vectors=captions,
        image_vectors=images,
        embed_query=lambda text: captions[0],
        ann_name="scann tree",
        index_vectors=images,
        ann_search=lambda queries, k: search_batched(searcher, queries, k, params)[0],
    )
    figures = ann_figures(method, own, (1, 5, 10))
    approx = search_batched(searcher, captions, 10, params)[0]
    exact = exact_top_k(images, captions, 10)[0]
    pairs = zip(approx, exact, strict=True)
    expected = np.mean([len(set(a[a >= 0]) & set(e)) / 10 for a, e in pairs])
    assert figures["recall@10"] == pytest.approx(expected)
    assert figures["recall@10"] < 0.9  # one leaf of 40: neighbours are lost
    exact_r10 = np.mean([o in e for o, e in zip(own, exact, strict=True)])
    assert figures["exact"]["R@10"] == pytest.approx(exact_r10)
    assert figures["delta"]["R@10"] == pytest.approx(
        figures["approximate"]["R@10"] - figures["exact"]["R@10"]
    )
    assert figures["approximate"]["R@10"] <= figures["exact"]["R@10"]


def test_a_corrected_method_ranks_by_score_minus_bias_in_both_directions():
    """Two captions, two images. Image 1 is the nearer image of both captions (a hub) and
    caption 0 the nearer caption of both images: their biases give each query its own."""
    from evaluation.eval_job import _evaluate_method
    from evaluation.methods import Method

    captions = np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    images = np.array([[0.8, -0.6], [0.9, 0.44]], dtype=np.float32)
    # Scores (caption, image): [[0.8, 0.9], [0.0, 0.892]].
    plain = dict(name="m", family="joint", description={}, caption_vectors=captions,
                 image_vectors=images, embed_query=lambda text: captions[int(text)])  # fmt: skip
    image_bias, caption_bias = np.array([0.0, 0.3], np.float32), np.array([0.2, 0.0], np.float32)
    corrected = Method(**plain, image_bias=image_bias, caption_bias=caption_bias)
    np.testing.assert_allclose(corrected.scores(), captions @ images.T - image_bias[None])
    np.testing.assert_allclose(corrected.query_scores(["0"]), corrected.scores()[:1])
    np.testing.assert_allclose(
        corrected.image_to_text_scores(), images @ captions.T - caption_bias[None]
    )
    own = np.array([0, 1])
    before, after = _evaluate_method(Method(**plain), own, 2), _evaluate_method(corrected, own, 2)
    assert before.t2i_ranks.tolist() == [2, 1] and after.t2i_ranks.tolist() == [1, 1]
    assert before.i2t_ranks.tolist() == [1, 2] and after.i2t_ranks.tolist() == [1, 1]
    assert after.top_rows.tolist() == [[0, 1], [1, 0]]
