"""Query-bank hubness correction: the bias formula, chunking, and the bank saved with a model."""

from __future__ import annotations

import numpy as np
import pytest

from encoders.base import l2_normalize
from encoders.joint import KIND_DUAL, DenseLayer, JointModel
from encoders.query_bank import QueryBank, gallery_bias, sample_rows
from index.stored_vectors import StoredVectors


def _unit(rng, rows: int, dim: int) -> np.ndarray:
    return l2_normalize(rng.standard_normal((rows, dim)).astype(np.float32))


def test_the_bias_is_the_banks_soft_maximum_of_each_items_similarity():
    rng = np.random.default_rng(0)
    gallery, bank = _unit(rng, 50, 8), _unit(rng, 30, 8)
    similarity = gallery.astype(np.float64) @ bank.T.astype(np.float64)
    expected = 0.5 * 0.05 * np.log(np.mean(np.exp(similarity / 0.05), axis=1))
    np.testing.assert_allclose(gallery_bias(gallery, bank, 0.05, 0.5), expected, atol=1e-5)
    # Chunked, and through stored vectors' chunks: the same numbers.
    np.testing.assert_allclose(gallery_bias(gallery, bank, 0.05, 0.5, chunk=7), expected, atol=1e-5)
    stored = StoredVectors.encode(gallery, "float32")
    np.testing.assert_allclose(gallery_bias(stored, bank, 0.05, 0.5), expected, atol=1e-5)
    assert not gallery_bias(gallery, bank, 0.05, 0.0).any()
    # Most typical queries point one way: the item there (a hub) pays more than one aside.
    centre = np.eye(8, dtype=np.float32)[:1]
    crowd = l2_normalize(centre + 0.3 * rng.standard_normal((30, 8)).astype(np.float32))
    hub, aside = gallery_bias(np.concatenate([centre, np.eye(8, dtype=np.float32)[1:2]]),
                              crowd, 0.05, 0.5)  # fmt: skip
    assert hub > aside + 0.1


def test_the_bank_corrects_each_direction_with_the_other_sides_rows():
    rng = np.random.default_rng(1)
    bank = QueryBank(_unit(rng, 20, 6), _unit(rng, 10, 6), temperature=0.1, strength=1.0)
    items = _unit(rng, 5, 6)
    np.testing.assert_allclose(bank.image_bias(items), gallery_bias(items, bank.texts, 0.1, 1.0))
    np.testing.assert_allclose(bank.text_bias(items), gallery_bias(items, bank.images, 0.1, 1.0))
    assert bank.config() == {"texts": 20, "images": 10, "temperature": 0.1, "strength": 1.0}


@pytest.mark.parametrize(
    "change",
    [{"texts": np.zeros((0, 6))}, {"images": np.ones((3, 5))}, {"temperature": 0.0},
     {"strength": -1.0}, {"texts": np.full((2, 6), np.nan)}],
)  # fmt: skip
def test_bad_banks_are_refused(change):
    rng = np.random.default_rng(2)
    settings = {"texts": _unit(rng, 4, 6), "images": _unit(rng, 4, 6), **change}
    with pytest.raises(ValueError, match="bank"):
        QueryBank(**settings)


def test_sample_rows_are_a_fixed_sorted_sample():
    rows = sample_rows(1000, 64, seed=3)
    assert len(set(rows.tolist())) == 64 and (np.diff(rows) > 0).all()
    np.testing.assert_array_equal(rows, sample_rows(1000, 64, seed=3))
    np.testing.assert_array_equal(sample_rows(10, 64), np.arange(10))


def _dual(rng, bank: QueryBank | None = None) -> JointModel:
    layer = lambda i, o: DenseLayer(rng.standard_normal((i, o)).astype(np.float32),  # noqa: E731
                                    np.zeros(o, np.float32))  # fmt: skip
    return JointModel(KIND_DUAL, "t/v1", "i/v1", 10, 12, text_layers=(layer(10, 6),),
                      image_layers=(layer(12, 6),), query_bank=bank)  # fmt: skip


def test_a_models_bank_round_trips_through_its_config_and_weights():
    rng = np.random.default_rng(4)
    bank = QueryBank(_unit(rng, 9, 6), _unit(rng, 7, 6), temperature=0.03, strength=0.7)
    model = _dual(rng, bank)
    loaded = JointModel.from_arrays(model.config(), model.weights())
    np.testing.assert_array_equal(loaded.query_bank.texts, bank.texts)
    np.testing.assert_array_equal(loaded.query_bank.images, bank.images)
    assert (loaded.query_bank.temperature, loaded.query_bank.strength) == (0.03, 0.7)
    # A model saved before banks existed (no config entry) loads without one.
    plain = model.with_query_bank(None)
    assert "query_bank" not in plain.config()
    assert JointModel.from_arrays(plain.config(), plain.weights()).query_bank is None
    weights = model.weights()
    del weights["query_bank.images"]
    with pytest.raises(ValueError, match=r"query_bank\.images"):
        JointModel.from_arrays(model.config(), weights)
    with pytest.raises(ValueError, match="bank is 5-d"):
        _dual(rng, QueryBank(_unit(rng, 3, 5), _unit(rng, 3, 5)))
