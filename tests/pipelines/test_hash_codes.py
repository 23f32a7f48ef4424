"""``--hash_model``: the index job stores semantic-hashing codes and serving searches them.

Real photos, the real index job on the DirectRunner (fake encoder: fast, no TensorFlow), a
real ITQ model trained on the job's own table; the Hamming search is checked against a
brute-force NumPy oracle, filters and the served route included.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from index.hamming import HashEncoder
from index.hash_codes import HASH_MODEL_DIR, read_codes
from index.manifest import read_manifest, verify_files
from index.schema import HASH_CODE, HASH_MODEL
from index.table import read_embedding_table, table_files
from models.artifacts import save_hashing_model
from pipelines import index_job
from serving.searcher import ImageSearcher
from tests.index_args import fake_index_args
from training.hashing import train_itq

PHOTOS = 90
BITS = 64
HASH_NAME = "hashing-64"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, assets_dir: Path) -> Path:
    photos = sorted((assets_dir / "datasets" / "flickr8k" / "images").glob("*.jpg"))[:PHOTOS]
    if len(photos) < PHOTOS:
        pytest.skip("Flickr8k photos missing from the assets folder")
    folder = tmp_path_factory.mktemp("hash-corpus")
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus: Path) -> dict[str, Path]:
    """``plain``: indexed without codes; ``models``: ITQ trained on its table; ``coded``: the
    same corpus indexed with ``--hash_model``."""
    base = tmp_path_factory.mktemp("hash-built")
    plain = base / "plain"
    index_job.run(fake_index_args(corpus, plain, "plain"))
    table = read_embedding_table(table_files(str(plain)))
    encoder, _ = train_itq(table.embeddings, BITS, iterations=20)
    encoder = HashEncoder("itq", encoder.kernel, encoder.bias, encoder_id=table.encoder_id)
    models = base / "models"
    save_hashing_model(models, HASH_NAME, encoder, {"test": True})
    coded = base / "coded"
    result = index_job.run(
        fake_index_args(corpus, coded, "coded", "--models", str(models), "--hash_model", HASH_NAME)
    )
    return {"plain": plain, "models": models, "coded": coded, "summary": result.summary()}


def _oracle(codes: np.ndarray, embeddings: np.ndarray, query: np.ndarray, encoder, r, k, allowed):
    """Brute force: Hamming distance by unpacked bits, top r by (distance, row), then exact."""
    bits = np.unpackbits(codes, axis=1).astype(np.int32)
    query_bits = np.unpackbits(encoder.encode(query[np.newaxis]), axis=1)[0].astype(np.int32)
    distance = np.abs(bits - query_bits).sum(axis=1)
    rows = np.arange(len(codes)) if allowed is None else np.flatnonzero(allowed)
    candidates = rows[np.lexsort((rows, distance[rows]))][:r]
    scores = embeddings[candidates] @ query
    order = np.lexsort((candidates, -scores))[:k]
    return candidates[order].tolist(), scores[order]


def test_codes_round_trip_through_the_table_and_manifest(built):
    coded = built["coded"]
    manifest = read_manifest(str(coded))
    verify_files(str(coded), manifest)  # the copied model is checksummed like every file
    assert manifest.hashing["model"] == HASH_NAME and manifest.hashing["bits"] == BITS
    assert {e["path"] for e in manifest.files_under(HASH_MODEL_DIR)} == {
        f"{HASH_MODEL_DIR}/config.json", f"{HASH_MODEL_DIR}/weights.npz"
    }  # fmt: skip
    assert read_manifest(str(built["plain"])).hashing is None
    paths = table_files(str(coded))
    schema = pq.read_schema(paths[0])
    assert schema.field(HASH_CODE).type.byte_width == BITS // 8
    table = read_embedding_table(paths)
    codes = read_codes(str(coded), table.image_ids, BITS // 8)
    searcher = ImageSearcher.load(str(coded), image_search="hamming")
    np.testing.assert_array_equal(codes, searcher.hamming.encoder.encode(table.embeddings))
    models = {
        m for p in paths for m in pq.read_table(p, columns=[HASH_MODEL])[HASH_MODEL].to_pylist()
    }
    assert models == {f"{HASH_NAME}/{manifest.hashing['model_version']}"}
    assert f"hash codes    64 bits (itq) by {HASH_NAME}/" in built["summary"]


def test_hamming_search_agrees_with_a_brute_force_oracle(built):
    searcher = ImageSearcher.load(str(built["coded"]), image_search="hamming", hamming_rerank=12)
    n = len(searcher)
    embeddings = searcher.vectors.decoded()
    codes = read_codes(str(built["coded"]), [searcher.hit_for_row(i, 0).image_id for i in range(n)],
                       BITS // 8)  # fmt: skip
    rng = np.random.default_rng(3)
    allowed = rng.random(n) < 0.3
    for row in range(0, n, 9):
        query = embeddings[row]
        for mask in (None, allowed):
            want_rows, want_scores = _oracle(codes, embeddings, query, searcher.hamming.encoder,
                                             12, 5, mask)  # fmt: skip
            hits = searcher.search_vectors(query[np.newaxis], 5, mask)[0]
            assert [searcher.row_of(h.image_id) for h in hits] == want_rows
            np.testing.assert_allclose([h.score for h in hits], want_scores, rtol=1e-5)
    # Re-ranking every row is exact search, which ScaNN's brute-force-sized index also is.
    exact = ImageSearcher.load(str(built["coded"]), image_search="hamming", hamming_rerank=n)
    scann = ImageSearcher.load(str(built["coded"]))
    for row in range(0, n, 15):
        got = [h.image_id for h in exact.similar_to_image_id(exact.hit_for_row(row, 0).image_id, 8)]
        want = [
            h.image_id for h in scann.similar_to_image_id(scann.hit_for_row(row, 0).image_id, 8)
        ]
        assert got == want
    # Pages come from one ranking: page 2 continues page 1.
    first = [h.image_id for h in searcher.search_vectors(embeddings[:1], 6)[0]]
    assert [h.image_id for h in searcher.search_vectors(embeddings[:1], 3)[0]] == first[:3]


def test_hamming_needs_codes_and_a_model_of_this_encoder(built, corpus, tmp_path: Path):
    with pytest.raises(ValueError, match="stores no hash codes: index it with --hash_model"):
        ImageSearcher.load(str(built["plain"]), image_search="hamming")
    with pytest.raises(ValueError, match="image_search must be one of"):
        ImageSearcher.load(str(built["plain"]), image_search="faiss")
    with pytest.raises(ValueError, match="--hash_model needs --models"):
        index_job.run(fake_index_args(corpus, tmp_path / "x", "x", "--hash_model", HASH_NAME))
    models = tmp_path / "models"
    narrow, _ = train_itq(np.random.default_rng(0).standard_normal((200, 80)), BITS, 5)
    save_hashing_model(models, "other", HashEncoder("itq", narrow.kernel, narrow.bias), {})
    with pytest.raises(ValueError, match="trained on unknown embeddings \\(80-d\\)"):
        index_job.run(fake_index_args(corpus, tmp_path / "x", "x", "--models", str(models),
                                      "--hash_model", "other"))  # fmt: skip
    with pytest.raises(FileNotFoundError):
        index_job.run(fake_index_args(corpus, tmp_path / "x", "x", "--models", str(models),
                                      "--hash_model", "missing"))  # fmt: skip


def test_incremental_runs_code_new_rows_and_rewrite_an_uncoded_base(built, corpus, tmp_path):
    grown = tmp_path / "grown"
    shutil.copytree(corpus, grown)
    extra = sorted(grown.iterdir())[:2]
    for n, photo in enumerate(extra):  # two new contents: the photos flipped
        from PIL import Image

        with Image.open(photo) as image:
            image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(grown / f"flipped-{n}.jpg")
    hash_flags = ("--models", str(built["models"]), "--hash_model", HASH_NAME)
    # In place over the coded version: only the new rows are coded, the model travels along.
    in_place = index_job.run(fake_index_args(grown, tmp_path / "v2", "v2", "--previous",
                                             str(built["coded"]), *hash_flags))  # fmt: skip
    assert in_place.update is not None and in_place.counts["encoded"] == 2
    # Over the plain version: its rows carry no codes, so the table is rewritten (not
    # re-encoded) with codes on every row.
    rewrite = index_job.run(fake_index_args(grown, tmp_path / "v3", "v3", "--previous",
                                            str(built["plain"]), *hash_flags))  # fmt: skip
    assert rewrite.update is None and rewrite.counts["encoded"] == 2
    assert rewrite.counts["reused"] == PHOTOS
    for out in (tmp_path / "v2", tmp_path / "v3"):
        manifest = read_manifest(str(out))
        verify_files(str(out), manifest)
        assert manifest.hashing["model"] == HASH_NAME
        searcher = ImageSearcher.load(str(out), image_search="hamming")
        table = read_embedding_table(table_files(str(out)))
        ids = table.image_ids
        np.testing.assert_array_equal(
            read_codes(str(out), ids, BITS // 8), searcher.hamming.encoder.encode(table.embeddings)
        )
        assert len(searcher) == PHOTOS + 2
    # Dropping --hash_model drops the codes; a coded base is then rewritten, not updated.
    dropped = index_job.run(fake_index_args(grown, tmp_path / "v4", "v4", "--previous",
                                            str(tmp_path / "v2")))  # fmt: skip
    assert dropped.update is None and read_manifest(str(tmp_path / "v4")).hashing is None
    assert HASH_CODE not in pq.read_schema(table_files(str(tmp_path / "v4"))[0]).names
    assert not (tmp_path / "v4" / HASH_MODEL_DIR).exists()


def test_int8_tables_code_the_vectors_readers_decode(built, corpus, tmp_path: Path):
    out = tmp_path / "int8"
    index_job.run(fake_index_args(corpus, out, "int8", "--embedding_storage", "int8", "--models",
                                  str(built["models"]), "--hash_model", HASH_NAME))  # fmt: skip
    table = read_embedding_table(table_files(str(out)))
    searcher = ImageSearcher.load(str(out), image_search="hamming")
    np.testing.assert_array_equal(
        read_codes(str(out), table.image_ids, BITS // 8),
        searcher.hamming.encoder.encode(table.embeddings),
    )
    config = json.loads((out / HASH_MODEL_DIR / "config.json").read_text())
    assert config["model"].startswith(f"{HASH_NAME}/") and config["bits"] == BITS


def test_the_server_answers_image_queries_from_the_codes(built, corpus):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.config import ServeConfig

    coded = str(built["coded"])
    # A page depth below the corpus, so that R = 30 re-ranks fewer rows than there are.
    config = ServeConfig(index=coded, poll_interval_s=0, image_search="hamming",
                         hamming_rerank=30, default_k=5, max_k=8, max_offset=16)  # fmt: skip
    assert config.page_depth == 25
    direct = ImageSearcher.load(coded, image_search="hamming", hamming_rerank=30,
                                candidates=config.page_depth)  # fmt: skip
    # Pages re-rank the same rows however deep they ask: page 2 continues page 1.
    assert ImageSearcher.load(coded, image_search="hamming", hamming_rerank=12,
                              candidates=config.page_depth).hamming_rerank == 25  # fmt: skip
    with TestClient(create_app(config)) as client:
        assert client.get("/health").json()["serving"]["image_search"] == {
            "kind": "hamming", "method": "itq", "bits": BITS, "rerank": 30
        }  # fmt: skip
        for row in (0, 31, 77):
            image_id = direct.hit_for_row(row, 0).image_id
            answer = client.get(f"/api/similar/{image_id}", params={"k": 5})
            assert answer.status_code == 200
            want = [h.image_id for h in direct.similar_to_image_id(image_id, 5)]
            assert [r["image_id"] for r in answer.json()["results"]] == want
            second = client.get(f"/api/similar/{image_id}", params={"k": 5, "offset": 5})
            ten = [h.image_id for h in direct.similar_to_image_id(image_id, 10)]
            assert [r["image_id"] for r in second.json()["results"]] == ten[5:]
            assert ten[:5] == want
        photo = sorted(corpus.iterdir())[5]
        upload = client.post(
            "/api/search/image", content=photo.read_bytes(), headers={"content-type": "image/jpeg"}
        )
        assert upload.status_code == 200
        assert upload.json()["results"][0]["uri"].endswith(photo.name)
        page = client.get("/", params={"similar": direct.hit_for_row(0, 0).image_id})
        assert (
            "Image queries scan 64-bit hash codes, the nearest 30 re-ranked exactly." in page.text
        )
    with pytest.raises(ValueError, match="hamming_rerank must be >= 1"):
        ServeConfig(index=coded, image_search="hamming", hamming_rerank=0)


def test_cli_and_library_search_the_codes(built, capsys):
    from imgsearch import cli
    from imgsearch.api import open_index

    coded = str(built["coded"])
    direct = ImageSearcher.load(coded, image_search="hamming", hamming_rerank=12)
    image_id = direct.hit_for_row(40, 0).image_id
    want = [h.image_id for h in direct.similar_to_image_id(image_id, 4)]
    index = open_index(coded, image_search="hamming", hamming_rerank=12)
    assert [h.image_id for h in index.similar(image_id, k=4)] == want
    argv = ["search", "--index", coded, "--image-id", image_id, "-k", "4", "--json",
            "--image-search", "hamming", "--hamming-rerank", "12"]  # fmt: skip
    assert cli.main(argv) == 0
    assert [r["image_id"] for r in json.loads(capsys.readouterr().out)] == want
