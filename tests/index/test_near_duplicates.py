"""Near-duplicate grouping against a brute-force oracle: planted clusters, chains, ties, nothing."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index.manifest import FORMAT_VERSION, IndexManifest, file_entry
from index.near_duplicates import (
    DEFAULT_THRESHOLD,
    NEAR_DUPLICATE_GROUP,
    NEAR_DUPLICATES_DIR,
    Pairs,
    carry_over,
    check_threshold,
    default_threshold,
    exact_neighbour_pairs,
    exact_pairs,
    group_image_pairs,
    group_pairs,
    group_threshold,
    near_duplicates_schema,
    neighbour_pairs,
    pair_precision_recall,
    read_group_table,
    read_groups,
    with_near_duplicates,
)

THRESHOLD = 0.9


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted(seed: int = 0, clusters: int = 30, dim: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Clusters of 2-6 tight copies of random centres, then as many lone vectors; shuffled.

    -> (vectors, true label per row). Copies are ~0.98 to their centre, different centres
    ~0 apart in 48 dimensions: the truth is unambiguous at 0.9.
    """
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((clusters * 2, dim)))
    vectors, labels = [], []
    for number, centre in enumerate(centres[:clusters]):
        for _ in range(rng.integers(2, 7)):
            vectors.append(centre + 0.1 * rng.standard_normal(dim) / np.sqrt(dim) * 2)
            labels.append(number)
    for number, centre in enumerate(centres[clusters:], start=clusters):
        vectors.append(centre)
        labels.append(number)
    order = rng.permutation(len(vectors))
    return _unit(np.array(vectors))[order], np.array(labels)[order]


def _pair_set(pairs: Pairs) -> set[tuple[int, int]]:
    return set(zip(pairs.left.tolist(), pairs.right.tolist(), strict=True))


def _groups_as_sets(groups, num_rows: int) -> set[frozenset[int]]:
    labels = groups.labels(num_rows)
    return {frozenset(np.flatnonzero(labels == g).tolist()) for g in set(labels.tolist()) - {-1}}


def test_planted_clusters_are_found_exactly_as_the_oracle_finds_them():
    vectors, truth = planted()
    oracle = exact_pairs(vectors, THRESHOLD)
    # Every neighbour list holds a whole cluster (at most 6 rows): the self-join misses nothing.
    found = exact_neighbour_pairs(vectors, THRESHOLD, k=8)
    assert _pair_set(found) == _pair_set(oracle)
    np.testing.assert_allclose(found.score, oracle.score, atol=1e-6)
    groups = group_pairs(len(vectors), found)
    assert pair_precision_recall(groups.labels(len(vectors)), truth) == (1.0, 1.0)
    # The lone vectors are singletons: written nowhere.
    lone = np.flatnonzero(np.bincount(truth)[truth] == 1)
    assert not np.isin(lone, groups.member).any()
    assert groups.num_groups == len(set(truth[np.bincount(truth)[truth] > 1].tolist()))


def test_members_score_their_representative_at_or_above_the_threshold():
    vectors, _ = planted(seed=3)
    groups = group_pairs(len(vectors), exact_pairs(vectors, THRESHOLD))
    true_scores = np.sum(vectors[groups.member] * vectors[groups.representative], axis=1)
    np.testing.assert_allclose(groups.score, true_scores, atol=1e-5)
    assert (groups.score >= THRESHOLD).all()
    representatives = groups.member == groups.representative
    assert (groups.score[representatives] == 1.0).all()
    # One representative per group, and it is a member of its own group.
    assert set(groups.representative.tolist()) == set(groups.member[representatives].tolist())


def _chain(length: int, step_degrees: float, dim: int = 8) -> np.ndarray:
    """Unit vectors along a great circle, ``step_degrees`` apart: each near its neighbours only."""
    angles = np.radians(step_degrees) * np.arange(length)
    vectors = np.zeros((length, dim), np.float32)
    vectors[:, 0], vectors[:, 1] = np.cos(angles), np.sin(angles)
    return vectors


def test_a_chain_of_small_steps_is_split_into_stars_not_one_group():
    # cos(20 deg) = 0.94 >= 0.9 between neighbours, cos(40 deg) = 0.77 two steps apart.
    vectors = _chain(9, 20.0)
    pairs = exact_pairs(vectors, THRESHOLD)
    assert _pair_set(pairs) == {(i, i + 1) for i in range(8)}
    whole = group_pairs(len(vectors), pairs, split_chains=False)
    assert whole.num_groups == 1 and len(whole) == 9  # the first and the last are 160 deg apart
    assert np.isnan(whole.score).sum() == 9 - 3  # only the representative's two links are pairs

    stars = group_pairs(len(vectors), pairs)
    assert (stars.score >= THRESHOLD).all()
    sets = _groups_as_sets(stars, len(vectors))
    assert all(len(group) <= 3 for group in sets)
    # Any two members of a star are at most two steps apart.
    assert all(max(group) - min(group) <= 2 for group in sets)
    assert stars.num_groups == 3
    # With equal scores the ties go to the lowest row: the middle of the first three, then
    # every third row.
    equal = Pairs(pairs.left, pairs.right, np.full(len(pairs), 0.94, np.float32))
    assert sorted(set(group_pairs(9, equal).representative.tolist())) == [1, 4, 7]


def test_a_hub_wins_the_representative_and_takes_its_neighbours():
    # Row 0 pairs with 1, 2, 3; row 3 also pairs with 4 (a chain 0-3-4): 4 is left alone.
    pairs = Pairs.of(np.array([0, 0, 0, 3]), np.array([1, 2, 3, 4]), np.full(4, 0.95))
    groups = group_pairs(5, pairs)
    assert groups.member.tolist() == [0, 1, 2, 3]
    assert set(groups.representative.tolist()) == {0}


def test_ties_are_settled_by_the_lowest_row_whatever_the_order_of_the_pairs():
    rng = np.random.default_rng(7)
    vector = _unit(rng.standard_normal((1, 16)))
    vectors = np.concatenate([vector, vector, vector, _unit(rng.standard_normal((3, 16)))])
    pairs = exact_pairs(vectors, THRESHOLD)
    assert _pair_set(pairs) == {(0, 1), (0, 2), (1, 2)}
    first = group_pairs(len(vectors), pairs)
    assert first.representative.tolist() == [0, 0, 0]
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(len(pairs))
        swap = np.random.default_rng(seed + 100).random(len(pairs)) < 0.5
        left = np.where(swap, pairs.right[order], pairs.left[order])
        right = np.where(swap, pairs.left[order], pairs.right[order])
        again = group_pairs(len(vectors), Pairs.of(left, right, pairs.score[order]))
        assert again.member.tolist() == first.member.tolist()
        assert again.representative.tolist() == first.representative.tolist()
        np.testing.assert_array_equal(again.score, first.score)


def test_a_shuffled_corpus_gives_the_same_groups_by_id():
    vectors, _ = planted(seed=11)
    ids = [f"img-{i:03d}" for i in range(len(vectors))]
    found = exact_neighbour_pairs(vectors, THRESHOLD, k=8)
    rows = group_image_pairs(
        (ids[a], ids[b], s) for a, b, s in zip(found.left, found.right, found.score, strict=True)
    )
    order = np.random.default_rng(1).permutation(len(vectors))
    shuffled = vectors[order]
    found = exact_neighbour_pairs(shuffled, THRESHOLD, k=8)
    again = group_image_pairs(
        (ids[order[b]], ids[order[a]], s)  # the other direction, too
        for a, b, s in zip(found.left, found.right, found.score, strict=True)
    )
    assert [(r["image_id"], r["near_duplicate_group"]) for r in again] == [
        (r["image_id"], r["near_duplicate_group"]) for r in rows
    ]
    np.testing.assert_allclose([r["score"] for r in again], [r["score"] for r in rows], atol=1e-6)
    # The group id is its representative's image id, and the rows come sorted by group.
    assert all(r["near_duplicate_group"] == r["representative"] for r in rows)
    assert rows == sorted(rows, key=lambda r: (r["near_duplicate_group"], r["image_id"]))


def test_neighbour_lists_drop_themselves_missing_entries_and_low_scores():
    indices = np.array([[0, 1, 2, -1], [1, 0, 3, 2]])
    scores = np.array([[1.0, 0.95, 0.5, np.nan], [1.0, 0.93, 0.91, np.nan]], np.float32)
    pairs = neighbour_pairs(np.array([0, 1]), indices, scores, THRESHOLD)
    # (0, 1) seen from both sides keeps its higher score; (1, 2) has a NaN score, so it is out.
    assert _pair_set(pairs) == {(0, 1), (1, 3)}
    assert pairs.score.tolist() == pytest.approx([0.95, 0.91])


def test_nothing_in_nothing_out():
    empty = Pairs.empty()
    assert len(group_pairs(4, empty)) == 0 and group_pairs(4, empty).num_groups == 0
    assert group_image_pairs([]) == []
    assert len(exact_pairs(np.empty((0, 8), np.float32), THRESHOLD)) == 0
    lonely = _unit(np.eye(4, dtype=np.float32))  # orthogonal: no pair at all
    assert len(exact_pairs(lonely, THRESHOLD)) == 0
    assert len(group_pairs(4, exact_neighbour_pairs(lonely, THRESHOLD, k=4))) == 0


def test_bad_inputs_are_value_errors():
    for bad in (0.0, -0.5, 1.5, True, "0.9"):
        with pytest.raises(ValueError, match="threshold"):
            check_threshold(bad)
    with pytest.raises(ValueError, match="outside"):
        group_pairs(2, Pairs.of(np.array([0]), np.array([5]), np.array([0.99])))
    with pytest.raises(ValueError, match=r"\(M, k\)"):
        neighbour_pairs(np.array([0]), np.zeros((1, 3)), np.zeros((1, 2)), THRESHOLD)


def test_each_encoder_gets_the_threshold_measured_for_it(caplog):
    assert default_threshold("mobilenet_v2") == DEFAULT_THRESHOLD
    # Mirror-averaged vectors are closer to each other overall: the same precision needs more.
    assert default_threshold("mobilenet_v2_flip") > DEFAULT_THRESHOLD
    with caplog.at_level(logging.WARNING, logger="index.near_duplicates"):
        assert default_threshold("resnet50") == DEFAULT_THRESHOLD
    assert "no near-duplicate threshold was measured for encoder resnet50" in caplog.text


def test_pairwise_precision_and_recall():
    truth = np.array([0, 0, 0, 1, 1, 2])
    assert pair_precision_recall(np.array([5, 5, 5, 7, 7, -1]), truth) == (1.0, 1.0)
    # One group merging two true groups: 10 predicted pairs, 4 of them true, of 4 true pairs.
    assert pair_precision_recall(np.array([5, 5, 5, 5, 5, -1]), truth) == (0.4, 1.0)
    precision, recall = pair_precision_recall(np.array([5, 5, -1, -1, -1, -1]), truth)
    assert (precision, recall) == (1.0, 0.25)
    assert pair_precision_recall(np.full(6, -1), truth) == (1.0, 0.0)
    assert pair_precision_recall(np.full(3, -1), np.arange(3)) == (1.0, 1.0)


def _manifest(files: list[dict]) -> IndexManifest:
    return IndexManifest(
        format_version=FORMAT_VERSION, version="v1", created_at="2026-12-01T00:00:00+00:00",
        encoder_id="fake/v1", encoder_spec={}, dim=8, counts={"indexed": 5},
        scann_params={"kind": "brute_force", "num_neighbors": 5}, shards=[], files=files,
    )  # fmt: skip


def test_groups_are_read_by_image_id_through_the_manifest(tmp_path):
    rows = group_image_pairs([("b", "a", 0.97), ("c", "a", 0.95), ("d", "e", 0.92)])
    folder = tmp_path / NEAR_DUPLICATES_DIR
    folder.mkdir()
    path = folder / "near_duplicates-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows, near_duplicates_schema(0.9)), path)
    out = str(tmp_path)
    assert read_groups(out, _manifest([])) is None  # not computed: no files listed
    manifest = _manifest([file_entry(str(path), out)])
    assert read_groups(out, manifest) == {"a": "a", "b": "a", "c": "a", "d": "d", "e": "d"}
    assert group_threshold(out, manifest) == 0.9
    table = read_group_table(out, manifest)
    assert table["score"].to_pylist() == pytest.approx([1.0, 0.97, 0.95, 1.0, 0.92])


def test_the_step_adds_its_files_and_counts_before_the_manifest_is_written(tmp_path):
    base = _manifest([{"path": "table/t.parquet", "bytes": 1, "sha256": "x"}])
    entry = {"path": f"{NEAR_DUPLICATES_DIR}/n.parquet", "bytes": 2, "sha256": "y"}
    seen = []

    def step(out_dir, manifest):
        seen.append((out_dir, manifest.version))
        return [entry], {"near_duplicate_groups": 1}

    updated = with_near_duplicates(str(tmp_path), base, step)
    assert seen == [(str(tmp_path), "v1")]
    assert [e["path"] for e in updated.files] == [entry["path"], "table/t.parquet"]
    assert updated.counts == {"indexed": 5, "near_duplicate_groups": 1}
    assert with_near_duplicates(str(tmp_path), base, None) is base
    with pytest.raises(ValueError, match="outside"):
        with_near_duplicates(str(tmp_path), base, lambda o, m: ([{"path": "index/x"}], {}))


def test_carry_over_keeps_untouched_groups_and_requeries_the_touched_ones():
    def row(image_id, group, score=0.95):
        return {"image_id": image_id, NEAR_DUPLICATE_GROUP: group, "representative": group,
                "score": 1.0 if image_id == group else score}  # fmt: skip

    previous = [row("a", "a"), row("a2", "a", 0.91), row("b", "b"), row("b2", "b", 0.93),
                row("b3", "b"), row("c", "c"), row("c2", "c")]  # fmt: skip
    carried = carry_over(previous, upserted=["b2", "new"], deleted=["c"])
    # Group a is untouched: its link stays as it was. b has an upserted member, c lost its
    # representative: their survivors are joined again, with the upserted rows.
    assert carried.pairs == [("a2", "a", 0.91)]
    assert carried.requery == {"b", "b2", "b3", "c2", "new"}
    nothing = carry_over(previous, upserted=[], deleted=[])
    assert nothing.requery == frozenset() and len(nothing.pairs) == 4
