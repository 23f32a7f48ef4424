"""The attention captioner: a tiny model learns, beam search is well formed, save/load agrees."""

from __future__ import annotations

import numpy as np
import pytest

from encoders.captioner import SPECIALS, Captioner, CaptionerConfig, Vocabulary
from training.captioner import CaptionerTraining, caption_metrics, train_captioner

CAPTIONS = ["a dog runs on grass", "a red car on the road", "a man rides a bike"]


@pytest.fixture(scope="module")
def trained():
    vocabulary = Vocabulary.fit(CAPTIONS * 2, min_count=1)
    config = CaptionerConfig(
        vocab_size=len(vocabulary), feature_dim=8, locations=4, embed_dim=16, units=32,
        attention_dim=16, max_len=8, dropout=0.0,
    )  # fmt: skip
    captioner = Captioner(config, vocabulary, seed=1)
    rng = np.random.default_rng(0)
    spatial = rng.normal(size=(3, 4, 8)).astype(np.float16)  # one distinct "image" per caption
    history = train_captioner(
        captioner, spatial, np.arange(3), CAPTIONS,
        CaptionerTraining(epochs=60, batch_size=3, learning_rate=1e-2),
    )  # fmt: skip
    return captioner, spatial, history


def test_vocabulary_round_trip():
    vocabulary = Vocabulary.fit(["A dog, a dog!", "zebra"], min_count=2)
    assert vocabulary.words == [*SPECIALS, "a", "dog"]
    rows = vocabulary.encode(["a zebra dog"], max_len=4)
    assert rows.tolist() == [[1, 4, 3, 5, 2, 0]]  # <start> a <unk> dog <end> <pad>
    assert vocabulary.decode(rows[0][1:]) == "a dog"  # <unk> is dropped, stops at <end>


def test_tiny_model_loss_drops_and_it_learns_its_captions(trained):
    captioner, spatial, history = trained
    assert history[-1]["loss"] < 0.3 * history[0]["loss"], history
    captions = captioner.caption(spatial, beam=3)
    assert [text for text, _ in captions] == CAPTIONS
    assert all(score <= 0 for _, score in captions)


def test_beam_search_is_well_formed_on_unseen_inputs(trained):
    captioner, _, _ = trained
    noise = np.random.default_rng(5).normal(size=(4, 2, 2, 8))  # (N, h, w, C) also accepted
    for ids, score in captioner.beam_search(noise, beam=3, max_len=5):
        assert len(ids) <= 5 and np.isfinite(score)
        assert all(4 <= i < captioner.config.vocab_size for i in ids)  # no specials
    assert captioner.beam_search(np.zeros((0, 4, 8))) == []
    with pytest.raises(ValueError, match="spatial maps"):
        captioner.beam_search(np.zeros((1, 5, 8)))


def test_captions_lists_the_distinct_beams_best_first(trained):
    captioner, spatial, _ = trained
    best = captioner.caption(spatial, beam=4)
    for first, listed in zip(best, captioner.captions(spatial, beam=4, count=3), strict=True):
        assert listed[0] == first and 1 <= len(listed) <= 3
        assert len({text for text, _ in listed}) == len(listed)
        scores = [score for _, score in listed]
        assert scores == sorted(scores, reverse=True)
    assert [len(c) for c in captioner.captions(spatial, beam=4, count=1)] == [1, 1, 1]


def test_save_load_gives_identical_captions(trained, tmp_path):
    import json

    captioner, spatial, _ = trained
    captioner.save_files(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(captioner.config.to_json()))
    loaded = Captioner.load(tmp_path)
    assert loaded.caption(spatial) == captioner.caption(spatial)


def test_caption_metrics_with_pycocoevalcap():
    refs = [["a dog runs on the grass", "a brown dog running"], ["a man rides a bike"]]
    perfect = caption_metrics(["a dog runs on the grass", "a man rides a bike"], refs)
    poor = caption_metrics(["a cat sleeps", "the ocean at night"], refs)
    assert perfect["BLEU-1"] == pytest.approx(1.0, abs=1e-6)
    assert perfect["CIDEr"] > poor["CIDEr"] and perfect["BLEU-4"] > poor["BLEU-4"]
    with pytest.raises(ValueError):
        caption_metrics(["a"], [])


def test_meteor_with_pycocoevalcaps_java_program_and_without_java(monkeypatch):
    from training.captioner import MeteorUnavailable, meteor_score

    refs = [["a dog runs on the grass", "a brown dog running"], ["a man rides a bike"]]
    perfect = meteor_score(["a dog runs on the grass", "a man rides a bike"], refs)
    poor = meteor_score(["a cat sleeps", "the ocean at night"], refs)
    assert 0.95 < perfect <= 1.0 and poor < 0.2, (perfect, poor)
    with pytest.raises(ValueError):
        meteor_score(["a"], [])
    monkeypatch.setenv("PATH", "/nonexistent")  # a machine without a Java runtime
    with pytest.raises(MeteorUnavailable, match="make java"):
        meteor_score(["a man rides a bike"], refs[1:])
