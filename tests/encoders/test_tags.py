"""Image tags from the real ImageNet head, tag search through GloVe, and the index job's column."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from encoders.base import EncoderSpec
from encoders.tag_match import TagMatcher, label_terms
from encoders.tags import TagHead, check_tag_head, resolve_tag_head
from index.table import parquet_files
from pipelines import index_job

DOG_PHOTO = "1001773457_577c3a7d70.jpg"  # two dogs on a street (Flickr8k)
OTHER_PHOTOS = ("1002674143_1b742ab4b8.jpg", "1007129816_e794419615.jpg")  # parachute, man


@pytest.fixture(scope="session")
def head(assets_dir: Path) -> TagHead:
    return TagHead.load(resolve_tag_head("auto"))


@pytest.fixture(scope="session")
def photo_tags(assets_dir: Path, head: TagHead, mobilenet_weights: Path) -> dict[str, list]:
    from PIL import Image

    from encoders.keras_image import KerasImageEncoder
    from encoders.tags import FeatureEncoder

    folder = assets_dir / "datasets" / "flickr8k" / "images"
    names = [DOG_PHOTO, *OTHER_PHOTOS]
    pixels = np.stack([np.asarray(Image.open(folder / n).convert("RGB")) for n in names])
    encoder = KerasImageEncoder(EncoderSpec(name="mobilenet_v2", weights=str(mobilenet_weights)))
    embeddings, extras = FeatureEncoder(encoder, head, top_k=5).analyze(pixels)
    np.testing.assert_allclose(embeddings, encoder.encode(pixels), atol=1e-6)  # one pass, same
    return {name: extra["tags"] for name, extra in zip(names, extras, strict=True)}


def test_real_head_tags_a_dog_photo_with_a_dog_breed(photo_tags, head):
    dog_breeds = {names[0] for names in head.synonyms[152:270]}
    tags = photo_tags[DOG_PHOTO]
    assert len(tags) == 5
    assert any(tag["label"] in dog_breeds for tag in tags[:3]), tags
    scores = [tag["score"] for tag in tags]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= 1
    for other in OTHER_PHOTOS:
        assert not any(t["label"] in dog_breeds for t in photo_tags[other][:2]), photo_tags[other]


def test_puppy_finds_the_dog_photo_through_word_vectors(photo_tags, head):
    from encoders.glove import load_glove

    matcher = TagMatcher(load_glove(), head.synonyms)
    names = list(photo_tags)
    tag_lists = [[(t["label"], t["score"]) for t in photo_tags[n]] for n in names]
    scores = matcher.score(["puppy", "a dog on the street", "the"], tag_lists)
    assert names[int(scores[0].argmax())] == DOG_PHOTO
    assert names[int(scores[1].argmax())] == DOG_PHOTO
    assert not scores[2].any()  # function words only: nothing to match, zeros not NaN
    why = matcher.explain("puppy", tag_lists[0])
    assert why and why[0]["word"] == "puppy" and why[0]["tag"] == tag_lists[0][0][0]


def test_hand_made_head_and_terms(tmp_path):
    path = tmp_path / "head.npz"
    kernel = np.eye(3, dtype=np.float32) * 10
    np.savez(path, kernel=kernel, bias=np.zeros(3, np.float32),
             labels=np.array(["background", "golden retriever", "tabby, tabby cat"]))  # fmt: skip
    head = TagHead.load(path)
    tags = head.tags(np.array([[0, 1, 0], [9, 0, 1]], np.float32), k=5)
    assert [t["label"] for t in tags[0]] == ["golden retriever", "tabby"]  # background never
    assert tags[1][0]["label"] == "tabby"
    assert label_terms(head.synonyms)["tabby"] == ["tabby", "tabby cat", "cat"]
    np.savez(path, kernel=kernel, bias=np.zeros(2, np.float32), labels=np.array(["a", "b"]))
    with pytest.raises(ValueError, match="do not agree"):
        TagHead.load(path)


def test_fake_encoder_cannot_take_the_imagenet_head(head):
    with pytest.raises(ValueError, match="pooled features"):
        check_tag_head(resolve_tag_head("auto"), EncoderSpec(name="fake", weights="none"))
    with pytest.raises(FileNotFoundError):
        resolve_tag_head("/nonexistent/head.npz")


def test_index_job_writes_a_tags_column(assets_dir, tmp_path, mobilenet_weights):
    corpus = tmp_path / "photos"
    corpus.mkdir()
    for name in (DOG_PHOTO, *OTHER_PHOTOS):
        shutil.copy(assets_dir / "datasets" / "flickr8k" / "images" / name, corpus / name)
    out = tmp_path / "out"
    index_job.run(["--corpus", str(corpus), "--out", str(out), "--weights",
                   str(mobilenet_weights), "--tag_head", "auto", "--tags_top_k", "3",
                   "--run_version", "t1"])  # fmt: skip
    table = pq.ParquetDataset(parquet_files(str(out / "table"))).read()
    rows = {Path(r["uri"]).name: r for r in table.to_pylist()}
    assert set(rows) == {DOG_PHOTO, *OTHER_PHOTOS}
    assert all(len(r["tags"]) == 3 and r["tag_model"] for r in rows.values())
    assert table.schema.field("tags").type.value_type.names == ["label", "score"]
