"""Packed binary codes: round trips, Hamming top-R against a brute-force oracle, re-ranking."""

from __future__ import annotations

import numpy as np
import pytest

from index import hamming
from index.hamming import (
    CodeColumns,
    HashEncoder,
    hamming_distances,
    hamming_search,
    hamming_top_r,
    pack_bits,
    rerank,
    unpack_bits,
)
from index.scann_index import exact_top_k


def _oracle_top_r(database_bits: np.ndarray, query_bits: np.ndarray, r: int):
    """Brute force on unpacked bits: count differing bits, sort by (distance, row)."""
    rows, distances = [], []
    for query in query_bits:
        dist = (database_bits != query).sum(axis=1)
        order = np.lexsort((np.arange(len(dist)), dist))[:r]
        rows.append(order)
        distances.append(dist[order])
    return np.array(rows), np.array(distances)


def test_pack_unpack_round_trip_is_most_significant_bit_first():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, (37, 128)).astype(np.uint8)
    packed = pack_bits(bits)
    assert packed.shape == (37, 16) and packed.dtype == np.uint8
    np.testing.assert_array_equal(unpack_bits(packed, 128), bits)
    assert pack_bits(np.array([[1, 0, 0, 0, 0, 0, 0, 1]]))[0, 0] == 0b1000_0001
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_bits(np.ones((2, 12)))
    with pytest.raises(ValueError, match="hold 128 bits, not 64"):
        unpack_bits(packed, 64)


@pytest.mark.parametrize("bits", [16, 64, 256])  # 16: byte path; 64, 256: uint64 words
@pytest.mark.parametrize("lookup_table", [False, True])
def test_hamming_top_r_equals_the_oracle_including_ties(bits, lookup_table, monkeypatch):
    if lookup_table:
        monkeypatch.setattr(hamming, "_HAS_BITWISE_COUNT", False)
    rng = np.random.default_rng(bits)
    # Few distinct codes (rows repeat) so that many distances tie at the cut.
    distinct = rng.integers(0, 2, (40, bits)).astype(np.uint8)
    database_bits = distinct[rng.integers(0, 40, 500)]
    query_bits = np.vstack([distinct[:3], rng.integers(0, 2, (5, bits)).astype(np.uint8)])
    database, queries = pack_bits(database_bits), pack_bits(query_bits)
    columns = CodeColumns.from_packed(database)
    for r in (1, 7, 50, 499, 500, 800):
        expected_rows, expected_distances = _oracle_top_r(database_bits, query_bits, r)
        for codes in (database, columns):
            rows, distances = hamming_top_r(codes, queries, r)
            np.testing.assert_array_equal(rows, expected_rows)
            np.testing.assert_array_equal(distances, expected_distances)
    np.testing.assert_array_equal(
        hamming_distances(database, queries[0]), (database_bits != query_bits[0]).sum(axis=1)
    )


def test_rerank_orders_candidates_by_exact_score_ties_by_lower_row():
    embeddings = np.array([[1, 0], [0, 1], [1, 0], [0.6, 0.8]], np.float32)
    rows, scores = rerank(embeddings, np.array([1, 0], np.float32), np.array([3, 2, 1, 0]), 3)
    np.testing.assert_array_equal(rows, [0, 2, 3])
    np.testing.assert_allclose(scores, [1, 1, 0.6])


def test_hamming_search_with_every_row_as_candidates_is_exact_search():
    rng = np.random.default_rng(1)
    embeddings = rng.standard_normal((300, 32)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    queries = embeddings[:20] + 0.1 * rng.standard_normal((20, 32)).astype(np.float32)
    encoder = HashEncoder("itq", rng.standard_normal((32, 16)).astype(np.float32), np.zeros(16))
    codes, query_codes = encoder.encode(embeddings), encoder.encode(queries)
    rows, scores = hamming_search(codes, embeddings, queries, query_codes, 10, 300)
    expected_rows, expected_scores = exact_top_k(embeddings, queries, 10)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)
    # Fewer candidates: the answer is the re-ranked Hamming top R, no more.
    candidates, _ = hamming_top_r(codes, query_codes, 30)
    rows, _ = hamming_search(codes, embeddings, queries, query_codes, 10, 30)
    assert all(set(row) <= set(c) for row, c in zip(rows, candidates, strict=True))


def test_hash_encoder_arrays_round_trip_and_shapes_are_checked():
    rng = np.random.default_rng(2)
    mlp = (
        (rng.standard_normal((24, 8)).astype(np.float32), np.zeros(8, np.float32)),
        (rng.standard_normal((8, 16)).astype(np.float32), np.ones(16, np.float32)),
    )
    encoder = HashEncoder(
        "autoencoder", rng.standard_normal((24, 16)).astype(np.float32),
        rng.standard_normal(16).astype(np.float32), mlp, "fake/v1",
    )  # fmt: skip
    copy = HashEncoder.from_arrays(encoder.config(), encoder.weights())
    x = rng.standard_normal((50, 24)).astype(np.float32)
    np.testing.assert_array_equal(copy.encode(x), encoder.encode(x))
    assert copy.encode(x).shape == (50, 2) and copy.encoder_id == "fake/v1"
    with pytest.raises(ValueError, match="ends at width 8"):
        HashEncoder("autoencoder", encoder.kernel, encoder.bias, mlp[:1])
    with pytest.raises(ValueError, match=r"must be \(N, 24\)"):
        encoder.encode(x[:, :10])


def test_hamming_top_r_when_the_sampled_cut_is_too_low():
    # Every sampled (even) row matches the query, the odd ones are 5 bits off: the cut guessed
    # from the sample holds too few rows and must be raised.
    query_bits = np.zeros((1, 16), np.uint8)
    database_bits = np.zeros((8192, 16), np.uint8)
    database_bits[1::2, :5] = 1
    for r in (10, 5000):
        rows, distances = hamming_top_r(pack_bits(database_bits), pack_bits(query_bits), r)
        expected_rows, expected_distances = _oracle_top_r(database_bits, query_bits, r)
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_array_equal(distances, expected_distances)
