"""ScaNN parameters, build, search and serialization, checked against the exact NumPy oracle."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from index.scann_index import (
    BRUTE_FORCE_MAX_VECTORS,
    ScannParams,
    build_searcher,
    choose_scann_params,
    exact_top_k,
    load_searcher,
    save_searcher,
    search_batched,
)

logger = logging.getLogger(__name__)


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def clustered_unit_vectors(
    rng: np.random.Generator, n: int, dim: int, clusters: int = 200, spread: float = 0.6
) -> np.ndarray:
    """Points around random centres, like embeddings of a corpus with recurring subjects."""
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    points = centres[rng.integers(0, clusters, n)]
    points += spread * rng.standard_normal((n, dim)).astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of the exact top k that the approximate top k found."""
    k = exact.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, exact, strict=True)]))


# --- choose_scann_params (pure) ---


def test_small_table_uses_brute_force() -> None:
    params = choose_scann_params(100, 1280, k=10)
    assert params.kind == "brute_force"
    assert params.num_neighbors == 10
    assert params.num_leaves is None and params.reorder_k is None


def test_50k_vectors_use_tree_ah_with_sqrt_leaves() -> None:
    params = choose_scann_params(50_000, 1280, k=10)
    assert params.kind == "tree_ah"
    assert params.num_leaves == round(math.sqrt(50_000)) == 224
    assert 0.05 * params.num_leaves <= params.num_leaves_to_search <= 0.5 * params.num_leaves
    assert params.dims_per_block == 2
    assert params.training_sample_size == 50_000  # every vector: fewer than the sample bound
    assert params.reorder_k % 10 == 0 and params.reorder_k > 10
    assert params.anisotropic_quantization_threshold == pytest.approx(0.2)


def test_1m_vectors_bound_the_training_sample() -> None:
    params = choose_scann_params(1_000_000, 1280, k=10)
    assert params.kind == "tree_ah"
    assert params.num_leaves == 1000
    assert params.num_leaves_to_search == 100
    assert params.training_sample_size == 100_000
    assert params.reorder_k == 100
    # The bound holds however large the table grows.
    assert choose_scann_params(10**9, 128).training_sample_size <= 500_000


def test_reorder_depth_follows_k() -> None:
    assert choose_scann_params(50_000, 64, k=25).reorder_k == 250


def test_brute_force_threshold_boundary() -> None:
    assert choose_scann_params(BRUTE_FORCE_MAX_VECTORS - 1, 64).kind == "brute_force"
    assert choose_scann_params(BRUTE_FORCE_MAX_VECTORS, 64).kind == "tree_ah"


def test_fewer_vectors_than_k_clips_neighbours() -> None:
    assert choose_scann_params(3, 8, k=10).num_neighbors == 3


@pytest.mark.parametrize(
    ("num_vectors", "dim", "k", "message"),
    [
        (0, 64, 10, "empty table"),
        (-1, 64, 10, "num_vectors"),
        (100, 0, 10, "dim"),
        (100, 64, 0, "k"),
        (100, 64, True, "k"),
    ],
)
def test_choose_params_rejects_bad_input(num_vectors: int, dim: int, k: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        choose_scann_params(num_vectors, dim, k)


def test_params_json_round_trip() -> None:
    for params in (choose_scann_params(100, 32), choose_scann_params(50_000, 32)):
        assert ScannParams.from_json(params.to_json()) == params


def test_params_validate_their_kind() -> None:
    with pytest.raises(ValueError, match="need"):
        ScannParams(kind="tree_ah", num_neighbors=10)
    with pytest.raises(ValueError, match="must not set"):
        ScannParams(kind="brute_force", num_neighbors=10, num_leaves=5)
    with pytest.raises(ValueError, match="kind"):
        ScannParams(kind="hnsw", num_neighbors=10)  # type: ignore[arg-type]
    tree = choose_scann_params(50_000, 32)
    with pytest.raises(ValueError, match="exceeds"):
        dataclasses.replace(tree, num_leaves_to_search=tree.num_leaves + 1)


# --- exact_top_k (the oracle itself) ---


def test_exact_top_k_matches_a_full_sort() -> None:
    rng = np.random.default_rng(1)
    database, queries = unit_vectors(rng, 300, 24), unit_vectors(rng, 7, 24)
    indices, scores = exact_top_k(database, queries, 5)
    full = queries @ database.T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, axis=1), rtol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_exact_top_k_clips_k_and_rejects_empty() -> None:
    rng = np.random.default_rng(2)
    indices, scores = exact_top_k(unit_vectors(rng, 3, 8), unit_vectors(rng, 2, 8), 10)
    assert indices.shape == scores.shape == (2, 3)
    assert sorted(indices[0]) == [0, 1, 2]
    with pytest.raises(ValueError, match="empty table"):
        exact_top_k(np.zeros((0, 8), np.float32), unit_vectors(rng, 2, 8), 10)
    with pytest.raises(ValueError, match="dimension"):
        exact_top_k(unit_vectors(rng, 3, 8), unit_vectors(rng, 2, 9), 1)


def test_exact_top_k_breaks_ties_by_index() -> None:
    database = np.array([[1, 0], [0, 1], [1, 0], [1, 0]], np.float32)
    indices, _ = exact_top_k(database, np.array([[1, 0]], np.float32), 3)
    assert indices.tolist() == [[0, 2, 3]]


# --- ScaNN against the oracle ---


def test_brute_force_equals_exact() -> None:
    rng = np.random.default_rng(3)
    database, queries = unit_vectors(rng, 2_000, 32), unit_vectors(rng, 50, 32)
    params = choose_scann_params(len(database), 32, k=10)
    searcher = build_searcher(database, params)
    indices, scores = search_batched(searcher, queries, 10, params)
    exact_indices, exact_scores = exact_top_k(database, queries, 10)
    np.testing.assert_array_equal(indices, exact_indices)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)


def test_brute_force_with_fewer_vectors_than_k() -> None:
    rng = np.random.default_rng(4)
    database, queries = unit_vectors(rng, 4, 16), unit_vectors(rng, 3, 16)
    params = choose_scann_params(4, 16, k=10)
    indices, scores = search_batched(build_searcher(database, params), queries, 10, params)
    exact_indices, _ = exact_top_k(database, queries, 10)
    assert indices.shape == (3, 4)  # no padding rows with NaN scores
    assert not np.isnan(scores).any()
    np.testing.assert_array_equal(indices, exact_indices)


def test_empty_batch_and_empty_table() -> None:
    rng = np.random.default_rng(5)
    params = choose_scann_params(10, 8)
    searcher = build_searcher(unit_vectors(rng, 10, 8), params)
    indices, scores = search_batched(searcher, np.zeros((0, 8), np.float32), 3, params)
    assert indices.shape == scores.shape == (0, 3)
    with pytest.raises(ValueError, match="empty table"):
        build_searcher(np.zeros((0, 8), np.float32), params)
    with pytest.raises(ValueError, match="NaN"):
        build_searcher(np.full((3, 8), np.nan, np.float32), params)


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    """30k x 64 database and 300 held-out queries drawn from the same clusters."""
    rng = np.random.default_rng(6)
    points = clustered_unit_vectors(rng, 30_300, 64)
    return points[:30_000], points[30_000:]


@pytest.fixture(scope="module")
def tree_ah(clustered: tuple[np.ndarray, np.ndarray]):
    database, _ = clustered
    params = choose_scann_params(len(database), database.shape[1], k=10)
    return params, build_searcher(database, params)


def test_tree_ah_recall_at_10(clustered, tree_ah) -> None:
    database, queries = clustered
    params, searcher = tree_ah
    assert params.kind == "tree_ah"
    found, _ = search_batched(searcher, queries, 10, params)
    exact, _ = exact_top_k(database, queries, 10)
    recall = recall_at_k(found, exact)
    logger.info("tree_ah recall@10 over %s: %.4f", params, recall)
    assert recall >= 0.9

    # The oracle can tell a bad index: one leaf and no rescoring headroom loses neighbours.
    crippled = dataclasses.replace(params, num_leaves_to_search=1, reorder_k=10)
    found_crippled, _ = search_batched(searcher, queries, 10, crippled)
    crippled_recall = recall_at_k(found_crippled, exact)
    logger.info("tree_ah recall@10 searching 1 leaf: %.4f", crippled_recall)
    assert crippled_recall < 0.9 <= recall


def test_serialize_then_load_gives_identical_results(clustered, tree_ah, tmp_path: Path) -> None:
    _, queries = clustered
    params, searcher = tree_ah
    files = save_searcher(searcher, str(tmp_path / "shard"))
    assert "scann_assets.pbtxt" in files
    # Relative asset paths: the folder still loads after it moves (as it does to gs:// and back).
    moved = tmp_path / "moved"
    (tmp_path / "shard").rename(moved)
    loaded = load_searcher(str(moved))
    before = search_batched(searcher, queries, 10, params)
    after = search_batched(loaded, queries, 10, params)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])


def test_load_searcher_without_index_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="scann_assets"):
        load_searcher(str(tmp_path))
