"""ImageSearcher over indexes that build_index made from real Parquet tables."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from encoders.base import EncoderSpec, l2_normalize
from encoders.fake import FakeImageEncoder
from encoders.imaging import ImageRejected, decode_image
from index.build import BuildConfig, build_index
from index.manifest import ManifestVerificationError, read_manifest
from index.scann_index import (
    ScannParams,
    build_searcher,
    exact_top_k,
    load_searcher,
    search_batched,
)
from index.shards import download_shard
from serving.searcher import (
    EncoderMismatchError,
    ImageSearcher,
    SearchHit,
    merge_top_k,
)
from tests.index.test_build_index import ENCODER_SPEC, table_rows, write_embedding_table

DIM = 32
NUM_IMAGES = 200


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], np.ndarray]:
    out = tmp_path_factory.mktemp("index")
    rows, embeddings = table_rows(NUM_IMAGES, DIM, seed=7)
    write_embedding_table(out, rows, DIM)
    build_index(str(out), BuildConfig("v1", ENCODER_SPEC, k=10), {"inputs": NUM_IMAGES})
    return out, rows, embeddings


@pytest.fixture(scope="module")
def searcher(index_dir) -> ImageSearcher:
    return ImageSearcher.load(str(index_dir[0]))


def test_a_stored_vector_finds_itself_first(searcher: ImageSearcher, index_dir) -> None:
    _, rows, embeddings = index_dir
    for i in (0, 17, 199):
        hits = searcher.search_vector(embeddings[i], k=5)
        assert len(hits) == 5
        assert hits[0].image_id == rows[i]["image_id"]
        assert hits[0].uri == rows[i]["uri"]
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_results_equal_the_exact_oracle(searcher: ImageSearcher, index_dir) -> None:
    _, rows, embeddings = index_dir
    queries = np.random.default_rng(8).standard_normal((20, DIM)).astype(np.float32) * 3.0
    hits = searcher.search_vectors(queries, k=10)
    # Raw (non-unit) queries are normalised by the searcher with the one l2_normalize.
    indices, scores = exact_top_k(embeddings, l2_normalize(queries), 10)
    for query_hits, row_indices, row_scores in zip(hits, indices, scores, strict=True):
        assert [h.image_id for h in query_hits] == [rows[i]["image_id"] for i in row_indices]
        np.testing.assert_allclose([h.score for h in query_hits], row_scores, atol=1e-5)


def test_similar_to_image_id_excludes_the_image(searcher: ImageSearcher, index_dir) -> None:
    _, rows, embeddings = index_dir
    image_id = rows[42]["image_id"]
    hits = searcher.similar_to_image_id(image_id, k=7)
    assert len(hits) == 7
    assert image_id not in {h.image_id for h in hits}
    exact, _ = exact_top_k(embeddings, embeddings[42:43], 8)
    assert [h.image_id for h in hits] == [rows[i]["image_id"] for i in exact[0] if i != 42]


def test_k_is_clipped_to_the_index(searcher: ImageSearcher, index_dir) -> None:
    _, rows, embeddings = index_dir
    assert len(searcher) == NUM_IMAGES
    hits = searcher.search_vector(embeddings[0], k=1000)
    assert len(hits) == NUM_IMAGES
    assert len({h.image_id for h in hits}) == NUM_IMAGES
    assert len(searcher.similar_to_image_id(rows[0]["image_id"], k=1000)) == NUM_IMAGES - 1


@pytest.mark.parametrize("k", [0, -3, 1.5, True])
def test_k_must_be_a_positive_integer(searcher: ImageSearcher, index_dir, k) -> None:
    _, rows, embeddings = index_dir
    with pytest.raises(ValueError, match="k must be"):
        searcher.search_vector(embeddings[0], k=k)
    with pytest.raises(ValueError, match="k must be"):
        searcher.similar_to_image_id(rows[0]["image_id"], k=k)


def test_unknown_image_id(searcher: ImageSearcher) -> None:
    with pytest.raises(KeyError, match=r"no-such-id.*not in index version v1"):
        searcher.similar_to_image_id("no-such-id", k=3)


def test_query_shape_is_checked(searcher: ImageSearcher) -> None:
    with pytest.raises(ValueError, match="shape"):
        searcher.search_vector(np.ones(DIM + 1, np.float32), k=3)
    with pytest.raises(ValueError, match="shape"):
        searcher.search_vectors(np.ones(DIM, np.float32), k=3)
    with pytest.raises(ValueError, match="NaN"):
        searcher.search_vector(np.full(DIM, np.nan, np.float32), k=3)
    assert searcher.search_vectors(np.zeros((0, DIM), np.float32), k=3) == []


def test_load_from_the_manifest_path(index_dir, searcher: ImageSearcher) -> None:
    out, _, embeddings = index_dir
    by_path = ImageSearcher.load(str(out / "manifest.json"), verify=False)
    assert by_path.manifest == searcher.manifest
    assert by_path.search_vector(embeddings[3], 4) == searcher.search_vector(embeddings[3], 4)


def test_load_verifies_checksums(index_dir, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(index_dir[0], out)
    table_file = out / "table" / "embeddings-00002-of-00003.parquet"
    data = bytearray(table_file.read_bytes())
    data[100] ^= 0x01
    table_file.write_bytes(bytes(data))
    with pytest.raises(ManifestVerificationError, match="embeddings-00002"):
        ImageSearcher.load(str(out))


def test_load_without_a_manifest(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="manifest"):
        ImageSearcher.load(str(tmp_path))


def test_shard_copy_for_remote_storage_loads(index_dir, tmp_path: Path) -> None:
    """The gs:// path copies the manifest's shard files locally; the copy must load and agree."""
    out, rows, embeddings = index_dir
    manifest = read_manifest(str(out))
    local = download_shard(str(out), manifest.files, "index/shard-00000", str(tmp_path))
    assert sorted(p.name for p in Path(local).iterdir()) == sorted(
        entry["path"].rsplit("/", 1)[1] for entry in manifest.files_under("index/shard-00000")
    )
    params = ScannParams.from_json(manifest.scann_params)
    indices, _ = search_batched(load_searcher(local), embeddings[:5], 3, params)
    # Index rows are sorted by image_id: each stored vector finds its own row first.
    sorted_ids = sorted(row["image_id"] for row in rows)
    assert indices[:, 0].tolist() == [sorted_ids.index(row["image_id"]) for row in rows[:5]]


def test_tree_ah_index_end_to_end(tmp_path: Path) -> None:
    """Above the brute-force threshold the searcher runs ScaNN's tree + AH + rescoring."""
    rows, embeddings = table_rows(20_500, 8, seed=9)
    write_embedding_table(tmp_path, rows, 8, num_files=2)
    manifest = build_index(str(tmp_path), BuildConfig("tree", ENCODER_SPEC, k=10), {})
    assert manifest.scann_params["kind"] == "tree_ah"
    searcher = ImageSearcher.load(str(tmp_path), verify=False)
    sample = np.random.default_rng(10).choice(len(rows), 50, replace=False)
    found = searcher.search_vectors(embeddings[sample], k=10)
    exact, _ = exact_top_k(embeddings, embeddings[sample], 10)
    recall = np.mean(
        [
            len({h.image_id for h in hits} & {rows[i]["image_id"] for i in row}) / 10
            for hits, row in zip(found, exact, strict=True)
        ]
    )
    assert recall >= 0.9
    assert all(
        hits[0].image_id == rows[i]["image_id"] for hits, i in zip(found, sample, strict=True)
    )


# --- merging shards (sharded indexes end to end: tests/pipelines/test_sharded_index.py) ---


def test_merge_of_tree_ah_shards_keeps_recall() -> None:
    """merge_top_k over real ScaNN tree-AH shards: recall@10 against exact over all rows."""
    rng = np.random.default_rng(8)
    centres = rng.standard_normal((40, 16))
    data = centres[rng.integers(0, 40, 8000)] + 0.4 * rng.standard_normal((8000, 16))
    data = (data / np.linalg.norm(data, axis=1, keepdims=True)).astype(np.float32)
    params = ScannParams(
        kind="tree_ah",
        num_neighbors=10,
        num_leaves=40,
        num_leaves_to_search=8,
        training_sample_size=4000,
        dims_per_block=2,
        anisotropic_quantization_threshold=0.2,
        reorder_k=100,
    )
    halves = [(0, data[:4000]), (4000, data[4000:])]
    queries = data[rng.integers(0, 8000, 200)] + 0.05 * rng.standard_normal((200, 16))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    found = []
    for offset, part in halves:
        indices, scores = search_batched(build_searcher(part, params), queries, 10, params)
        found.append((np.where(indices >= 0, indices + offset, -1), scores))
    merged, merged_scores = merge_top_k([i for i, _ in found], [s for _, s in found], 10)
    exact, _ = exact_top_k(data, queries, 10)
    recall = np.mean([len(set(m) & set(e)) / 10 for m, e in zip(merged, exact, strict=True)])
    assert recall >= 0.9
    assert np.all(np.diff(merged_scores, axis=1) <= 1e-6)  # best first


def test_shards_searched_on_threads_answer_as_one_after_the_other(monkeypatch) -> None:
    """search_shards above PARALLEL_SHARD_WORK runs the shards on the shard threads, with the
    same answers, in shard order, as the sequential path below it."""
    import threading

    from serving import searcher as searcher_module

    rng = np.random.default_rng(3)
    params = ScannParams(kind="brute_force", num_neighbors=10)
    shards = []
    for offset in (0, 300, 600):
        part = rng.standard_normal((300, 8)).astype(np.float32)
        part /= np.linalg.norm(part, axis=1, keepdims=True)
        shards.append(searcher_module._Shard(build_searcher(part, params), params, offset))
    queries = rng.standard_normal((5, 8)).astype(np.float32)
    threads: list[str] = []
    real = searcher_module.search_batched

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(searcher_module, "search_batched", spy)
    sequential = searcher_module.search_shards(shards, queries, 4, 0)
    assert all(not name.startswith("shard-search") for name in threads)
    threads.clear()
    monkeypatch.setattr(searcher_module, "PARALLEL_SHARD_WORK", 1)
    parallel = searcher_module.search_shards(shards, queries, 4, 0)
    assert len(threads) == 3 and all(name.startswith("shard-search") for name in threads)
    for (i, s), (pi, ps) in zip(sequential, parallel, strict=True):
        np.testing.assert_array_equal(i, pi)
        np.testing.assert_array_equal(s, ps)


def test_merge_top_k_handles_missing_candidates() -> None:
    indices = [np.array([[0, -1]]), np.array([[5, 6]])]
    scores = [np.array([[0.9, np.nan]], np.float32), np.array([[0.95, 0.1]], np.float32)]
    merged, merged_scores = merge_top_k(indices, scores, 4)
    assert merged.tolist() == [[5, 0, 6, -1]]
    assert np.isnan(merged_scores[0, 3])
    np.testing.assert_allclose(merged_scores[0, :3], [0.95, 0.9, 0.1])


# --- image queries: encoders.imaging + the fake encoder, as the index job uses them ---

FAKE_SPEC = EncoderSpec(name="fake", weights="none", image_size=32)


def synthetic_photos(count: int) -> list[bytes]:
    """Distinct seeded images (colour fields with shapes), JPEG and PNG encoded."""
    rng = np.random.default_rng(11)
    photos = []
    for i in range(count):
        image = Image.new("RGB", (96 + 8 * i, 72), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y = (int(v) for v in rng.integers(0, 60, 2))
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            draw.ellipse((x, y, x + 30, y + 30), fill=fill)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG" if i % 2 else "JPEG", quality=95)
        photos.append(buffer.getvalue())
    return photos


@pytest.fixture(scope="module")
def photo_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bytes], list[dict]]:
    """An index of synthetic photos encoded as the index job does: decode_image, then encode."""
    out = tmp_path_factory.mktemp("photos")
    encoder = FakeImageEncoder(FAKE_SPEC)
    photos = synthetic_photos(12)
    pixels = np.stack([decode_image(data, size=encoder.input_size)[0] for data in photos])
    vectors = encoder.encode(pixels)
    rows, _ = table_rows(len(photos), encoder.dim, encoder_id=encoder.encoder_id)
    for row, vector in zip(rows, vectors, strict=True):
        row["embedding"] = vector.tolist()
    write_embedding_table(out, rows, encoder.dim, num_files=1)
    build_index(str(out), BuildConfig("photos", FAKE_SPEC.to_json()), {})
    return out, photos, rows


def test_search_image_bytes_finds_the_same_photo(photo_index) -> None:
    out, photos, rows = photo_index
    searcher = ImageSearcher.load(str(out))  # the encoder is built from the manifest's spec
    for i in (0, 5, 11):
        hits = searcher.search_image_bytes(photos[i], k=3)
        assert hits[0] == SearchHit(rows[i]["image_id"], rows[i]["uri"], hits[0].score)
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert searcher.image_encoder().encoder_id == "fake/v1"


def test_search_image_path(photo_index, tmp_path: Path) -> None:
    out, photos, rows = photo_index
    path = tmp_path / "query.png"
    path.write_bytes(photos[3])
    searcher = ImageSearcher.load(str(out), encoder=FakeImageEncoder(FAKE_SPEC))
    assert searcher.search_image_path(str(path), k=1)[0].image_id == rows[3]["image_id"]


def test_not_an_image_is_rejected(photo_index) -> None:
    searcher = ImageSearcher.load(str(photo_index[0]), verify=False)
    with pytest.raises(ImageRejected):
        searcher.search_image_bytes(b"definitely not a JPEG", k=3)


def test_an_encoder_of_another_id_is_refused(photo_index, index_dir) -> None:
    # Passed in: refused at load, before any query runs.
    with pytest.raises(EncoderMismatchError, match="fake/1"):
        ImageSearcher.load(str(index_dir[0]), encoder=FakeImageEncoder(FAKE_SPEC))
    # Built lazily from the manifest: the table says "fake/1", the fake encoder is "fake/v1".
    searcher = ImageSearcher.load(str(index_dir[0]), verify=False)
    with pytest.raises(EncoderMismatchError, match="fake/v1"):
        searcher.search_image_bytes(photo_index[1][0], k=3)
