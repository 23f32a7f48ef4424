"""ScaNN autotuning against exact neighbours, on seeded clustered unit vectors, with real ScaNN.

One module-scoped sweep serves several targets (``autotune_scann_targets`` builds each tree once),
so the whole file stays well under 30 s on two cores.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from index.ann_cost import bytes_per_vector, memory_per_million
from index.ann_measure import holdout_queries
from index.ann_tuning import autotune_scann, autotune_scann_targets, leaves_to_search_grid
from index.ann_tuning_types import TuningGrid, TuningResult, TuningTarget
from index.scann_index import (
    BRUTE_FORCE_MAX_VECTORS,
    ScannParams,
    build_searcher,
    exact_top_k,
    search_batched,
)
from ranking.recall import recall_per_query

logger = logging.getLogger(__name__)

DIM = 32
NUM_VECTORS = 40_000
LOOSE, STRICT = 0.85, 0.95


def clustered_unit_vectors(
    rng: np.random.Generator, n: int, dim: int, centres: np.ndarray, spread: float = 0.9
) -> np.ndarray:
    """Points around shared centres, like embeddings of a corpus with recurring subjects."""
    points = centres[rng.integers(0, len(centres), n)]
    points = points + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """``(database, fresh_queries)``: fresh queries come from the same distribution, not the DB."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((300, DIM)).astype(np.float32)
    database = clustered_unit_vectors(rng, NUM_VECTORS, DIM, centres)
    fresh = clustered_unit_vectors(rng, 2000, DIM, centres)
    return database, fresh


@pytest.fixture(scope="module")
def tuned(data: tuple[np.ndarray, np.ndarray]) -> dict[str, TuningResult]:
    database, _ = data
    targets = {
        "loose": TuningTarget(recall=LOOSE),
        "strict": TuningTarget(recall=STRICT),
        "no_time": TuningTarget(recall=0.9, max_latency_ms=1e-6),
        # Below what any tree-AH searcher costs (its float32 reorder copy alone is 4 * dim).
        "no_room": TuningTarget(recall=0.9, max_bytes_per_vector=4 * DIM),
    }
    results = autotune_scann_targets(database, list(targets.values()), seed=3)
    return dict(zip(targets, results, strict=True))


def fresh_recall(database: np.ndarray, queries: np.ndarray, params: ScannParams) -> float:
    """Recall@k of the index ``build_index`` would build with ``params``, on unseen queries."""
    searcher = build_searcher(database, params)
    found, _ = search_batched(searcher, queries, params.num_neighbors, params)
    exact, _ = exact_top_k(database, queries, params.num_neighbors)
    return float(recall_per_query(found, exact).mean())


# --- autotune on real ScaNN ---


@pytest.mark.parametrize("name", ["loose", "strict"])
def test_tuned_index_meets_target_on_fresh_queries(
    name: str, tuned: dict[str, TuningResult], data: tuple[np.ndarray, np.ndarray]
) -> None:
    database, fresh = data
    result = tuned[name]
    assert result.met_target, result.reason
    assert result.params.kind == "tree_ah"
    assert result.recall >= result.target.recall
    # A fresh build on the whole table (not the tuning split) and queries never seen in tuning.
    recall = fresh_recall(database, fresh, result.params)
    logger.info("%s: tuned recall %.4f, fresh recall %.4f", name, result.recall, recall)
    assert recall >= result.target.recall
    assert 0 < result.latency_ms_p50 <= result.latency_ms_p99
    assert result.qps_batched > 0


def test_stricter_target_searches_at_least_as_much(tuned: dict[str, TuningResult]) -> None:
    loose, strict = tuned["loose"].params, tuned["strict"].params
    assert tuned["strict"].recall >= tuned["loose"].recall
    # Cost grows with leaves searched (as a share of the leaves) and with the reorder depth; a
    # stricter target cannot be met by searching less on both counts.
    loose_share = loose.num_leaves_to_search / loose.num_leaves
    strict_share = strict.num_leaves_to_search / strict.num_leaves
    assert strict_share >= loose_share or strict.reorder_k >= loose.reorder_k


def test_unreachable_latency_budget_is_reported_and_keeps_recall(
    tuned: dict[str, TuningResult],
) -> None:
    result = tuned["no_time"]
    assert not result.met_target
    assert "budget" in result.reason and "ms" in result.reason
    # Recall first: the fallback still meets the recall target.
    assert result.recall >= result.target.recall


def test_memory_budget_below_tree_cost_falls_back_to_brute_force(
    tuned: dict[str, TuningResult],
) -> None:
    result = tuned["no_room"]
    assert result.params.kind == "brute_force"
    assert result.met_target, result.reason
    assert result.bytes_per_vector == 4 * DIM
    assert result.recall == pytest.approx(1.0)


def test_unreachable_recall_falls_back_to_brute_force(data: tuple[np.ndarray, np.ndarray]) -> None:
    database, _ = data
    # A grid too small to reach 0.99: one leaf searched, no reorder headroom.
    grid = TuningGrid(leaves_factors=(1.0,), max_leaves_fraction=0.005, reorder_multiples=(1,))
    result = autotune_scann(database, TuningTarget(recall=0.99), num_queries=300, grid=grid)
    assert result.params.kind == "brute_force"
    assert result.met_target
    assert "brute force" in result.reason
    assert result.recall == pytest.approx(1.0)
    assert any(c.params.kind == "tree_ah" for c in result.candidates)


def test_small_table_uses_brute_force() -> None:
    rng = np.random.default_rng(0)
    database = clustered_unit_vectors(rng, 3000, 16, rng.standard_normal((20, 16)))
    result = autotune_scann(database, TuningTarget(recall=0.95, k=5), num_queries=100)
    assert 3000 < BRUTE_FORCE_MAX_VECTORS
    assert result.params == ScannParams(kind="brute_force", num_neighbors=5)
    assert result.met_target
    assert result.recall == pytest.approx(1.0)
    assert result.num_queries == 100


def test_result_json_round_trips_params(tuned: dict[str, TuningResult]) -> None:
    result = tuned["strict"]
    data = json.loads(json.dumps(result.to_json()))
    assert ScannParams.from_json(data["params"]) == result.params
    assert data["target"]["recall"] == STRICT
    # Only timed candidates go to the manifest; the chosen one is among them.
    assert data["candidates"] and all(c["latency_ms_p50"] is not None for c in data["candidates"])
    assert result.params.to_json() in [c["params"] for c in data["candidates"]]
    assert len(result.to_json(all_candidates=True)["candidates"]) == len(result.candidates)


# --- pure helpers ---


def test_holdout_removes_query_rows_and_is_deterministic(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    database, _ = data
    tuning_db, queries = holdout_queries(database, 50, seed=11)
    again_db, again_queries = holdout_queries(database, 50, seed=11)
    other_db, _ = holdout_queries(database, 50, seed=12)
    assert tuning_db.shape == (NUM_VECTORS - 50, DIM) and queries.shape == (50, DIM)
    assert np.array_equal(queries, again_queries) and np.array_equal(tuning_db, again_db)
    assert not np.array_equal(tuning_db, other_db)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, rtol=1e-5)
    # The held-out rows are gone: no query's best match is (almost) itself.
    best = (queries @ tuning_db.T).max(axis=1)
    assert (best < 0.999).all()


def test_memory_per_million_arithmetic() -> None:
    table = memory_per_million(1280)
    assert table["float32"] == 1280 * 4 * 1e6
    assert table["float16"] == table["bfloat16"] == 1280 * 2 * 1e6
    assert table["int8"] == 1280 * 1e6
    assert table["scann_ah_codes"] == 640 * 0.5 * 1e6  # 640 blocks of 2 dims, 4 bits each
    assert table["scann_tree_ah_float32_reorder"] == (320 + 4 + 5120) * 1e6
    assert table["scann_tree_ah_int8_reorder"] == (320 + 4 + 1280) * 1e6
    assert table["scann_tree_ah_no_reorder"] == 324 * 1e6
    # An odd dimension leaves a partial block, which still takes a 4-bit code.
    assert memory_per_million(51)["scann_ah_codes"] == 26 * 0.5 * 1e6
    assert memory_per_million(64, dims_per_block=1)["scann_ah_codes"] == 32 * 1e6


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_memory_per_million_rejects_bad_dims(bad: object) -> None:
    with pytest.raises(ValueError, match="dim"):
        memory_per_million(bad)  # type: ignore[arg-type]


def test_bytes_per_vector_matches_the_memory_model() -> None:
    brute = ScannParams(kind="brute_force", num_neighbors=10)
    assert bytes_per_vector(brute, 64, 100_000) == 256
    tree = ScannParams(
        kind="tree_ah",
        num_neighbors=10,
        num_leaves=1000,
        num_leaves_to_search=50,
        training_sample_size=100_000,
        dims_per_block=2,
        anisotropic_quantization_threshold=0.2,
        reorder_k=100,
    )
    per_vector = memory_per_million(64)["scann_tree_ah_float32_reorder"] / 1e6
    centres = 1000 * 64 * 4 / 1_000_000
    assert bytes_per_vector(tree, 64, 1_000_000) == pytest.approx(per_vector + centres)


def test_leaves_to_search_grid_is_geometric_and_capped() -> None:
    assert leaves_to_search_grid(1000, 0.1) == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 100]
    assert leaves_to_search_grid(5, 0.01) == [1]
    assert leaves_to_search_grid(4, 1.0) == [1, 2, 3, 4]


def test_recall_per_query_counts_shared_ids() -> None:
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 2, 9], [-1, -1, -1]])
    np.testing.assert_allclose(recall_per_query(found, exact), [2 / 3, 0.0])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"recall": 0.0},
        {"recall": 1.5},
        {"k": 0},
        {"k": True},
        {"max_latency_ms": 0},
        {"max_bytes_per_vector": -1.0},
    ],
)
def test_tuning_target_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        TuningTarget(**kwargs)


def test_rejects_mixed_k_and_non_finite_database(data: tuple[np.ndarray, np.ndarray]) -> None:
    database, _ = data
    with pytest.raises(ValueError, match="share k"):
        autotune_scann_targets(database, [TuningTarget(k=10), TuningTarget(k=5)])
    with pytest.raises(ValueError, match="NaN"):
        autotune_scann(np.full((10, 4), math.nan, dtype=np.float32))
