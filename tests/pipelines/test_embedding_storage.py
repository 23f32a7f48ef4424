"""Compact embedding storage (float16, int8 + per-row scale) on real MobileNetV2 embeddings."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest

from index.build import BuildConfig, build_index
from index.scann_index import exact_top_k
from index.schema import (
    EMBEDDING_SCALE,
    compact_row,
    dequantize_int8,
    embedding_table_schema,
    quantize_int8,
)
from index.table import parquet_files, read_embedding_table, table_files
from pipelines.io import WriteEmbeddingTable
from serving.searcher import ImageSearcher
from tests.index.test_build_index import ENCODER_SPEC, table_rows
from tests.index_args import fake_index_args

NUM_PHOTOS = 160


@pytest.fixture(scope="module")
def real_rows(assets_dir: Path, mobilenet_weights: Path) -> tuple[list[dict], np.ndarray]:
    """Table rows of 160 Flickr8k dev photos encoded by the real MobileNetV2 (1280-d)."""
    from encoders.base import EncoderSpec
    from encoders.imaging import decode_image
    from encoders.registry import create_image_encoder

    flickr = assets_dir / "datasets" / "flickr8k"
    names = (flickr / "splits" / "dev.txt").read_text().split()[:NUM_PHOTOS]
    encoder = create_image_encoder(EncoderSpec(name="mobilenet_v2", weights=str(mobilenet_weights)))
    pixels = np.stack([decode_image((flickr / "images" / name).read_bytes())[0] for name in names])
    vectors = np.concatenate([encoder.encode(pixels[i : i + 32]) for i in range(0, len(names), 32)])
    rows, _ = table_rows(len(names), vectors.shape[1], encoder_id=encoder.encoder_id)
    for row, vector in zip(rows, vectors, strict=True):
        row["embedding"] = vector.tolist()
    return rows, vectors.astype(np.float32)


def write_with_beam(out: Path, rows: list[dict], dim: int, storage: str) -> list[str]:
    """The index job's own writer (Beam WriteToParquet) on the DirectRunner."""
    with beam.Pipeline() as pipeline:
        _ = (
            pipeline
            | beam.Create(rows)
            | WriteEmbeddingTable(str(out / "table"), dim, num_shards=2, storage=storage)
        )
    return parquet_files(str(out / "table"))


def test_compact_tables_keep_real_embeddings_and_recall(real_rows, tmp_path: Path) -> None:
    rows, vectors = real_rows
    dim = vectors.shape[1]
    sizes, decoded = {}, {}
    for storage in ("float32", "float16", "int8"):
        paths = write_with_beam(tmp_path / storage, rows, dim, storage)
        schema = pq.read_schema(paths[0])
        assert (
            str(schema.field("embedding").type.value_type)
            == {
                "float32": "float",
                "float16": "halffloat",
                "int8": "int8",
            }[storage]
        )
        assert (EMBEDDING_SCALE in schema.names) == (storage == "int8")
        sizes[storage] = sum(Path(p).stat().st_size for p in paths)
        table = read_embedding_table(paths)
        assert table.embeddings.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(table.embeddings, axis=1), 1.0, atol=1e-5)
        row_of = {row["image_id"]: i for i, row in enumerate(rows)}
        decoded[storage] = table.embeddings[np.argsort([row_of[i] for i in table.image_ids])]

    np.testing.assert_array_equal(decoded["float32"], vectors)
    # float16: 11 significant bits; int8: half a step of max|x|/127 per component.
    assert np.abs(decoded["float16"] - vectors).max() < 1e-3
    cosines = np.sum(decoded["int8"] * vectors, axis=1)
    assert cosines.min() > 0.999
    # Retrieval barely moves: top-10 of every photo against the compact copy vs float32.
    truth, _ = exact_top_k(vectors, vectors, 10)
    for storage, min_recall in (("float16", 0.99), ("int8", 0.95)):
        found, _ = exact_top_k(decoded[storage], vectors, 10)
        recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
        assert recall >= min_recall, (storage, recall)
    # The bytes on disk: embeddings dominate a 1280-d row.
    assert sizes["float16"] < 0.6 * sizes["float32"]
    assert sizes["int8"] < 0.35 * sizes["float32"]


def test_int8_round_trip_error_is_bounded() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((200, 64)).astype(np.float32)
    vectors[3] = 0.0
    codes, scales = quantize_int8(vectors)
    assert codes.dtype == np.int8 and scales.dtype == np.float32
    error = np.abs(dequantize_int8(codes, scales) - vectors)
    assert np.all(error <= scales[:, None] / 2 + 1e-7)
    assert np.all(codes[3] == 0) and scales[3] == 1.0
    assert np.abs(codes).max() == 127
    with pytest.raises(ValueError, match="embedding storage"):
        compact_row({"embedding": [0.1]}, "int4")
    with pytest.raises(ValueError, match="embedding storage"):
        embedding_table_schema(4, storage="bfloat16")


def test_an_int8_table_indexes_and_serves(tmp_path: Path) -> None:
    """build_index + ImageSearcher over an int8 table: float32 to callers, self-match holds."""
    import pyarrow as pa

    rows, vectors = table_rows(120, 32, seed=3)
    (tmp_path / "table").mkdir()
    compact = [compact_row(row, "int8") for row in rows]
    pq.write_table(
        pa.Table.from_pylist(compact[:60], schema=embedding_table_schema(32, storage="int8")),
        tmp_path / "table" / "embeddings-00000-of-00002.parquet",
    )
    # A table may mix storages (an update's rows, say): every file decodes to float32.
    pq.write_table(
        pa.Table.from_pylist(rows[60:], schema=embedding_table_schema(32)),
        tmp_path / "table" / "embeddings-00001-of-00002.parquet",
    )
    build_index(str(tmp_path), BuildConfig("int8", ENCODER_SPEC, k=5), {})
    searcher = ImageSearcher.load(str(tmp_path))
    # Held as stored: float32 when the files' storages differ (it holds both exactly).
    assert searcher.vectors.precision == "float32"
    assert searcher.vectors[0].dtype == np.float32
    hits = searcher.search_vectors(vectors, 1)
    assert [h[0].image_id for h in hits] == [row["image_id"] for row in rows]
    assert len(read_embedding_table(table_files(str(tmp_path)))) == 120


def test_index_job_embedding_storage_flag(small_photo_dir: Path, tmp_path: Path) -> None:
    from pipelines import index_job

    out = tmp_path / "out"
    index_job.run(fake_index_args(small_photo_dir, out, "i8", "--embedding_storage", "int8"))
    schema = pq.read_schema(table_files(str(out))[0])
    assert str(schema.field("embedding").type.value_type) == "int8"
    searcher = ImageSearcher.load(str(out))
    for row in range(len(searcher)):
        top = searcher.search_vector(searcher.vectors[row], 1)[0]
        assert top.image_id == searcher.hit_for_row(row, 0).image_id


def test_similar_to_id_over_compact_memory_equals_float32_within_its_precision(
    real_rows, tmp_path: Path
) -> None:
    """A float32 table served with its vectors held as float16 / int8 answers similar-to-id as
    the float32 copy does: scores within the precision's error, the same images but for swaps
    across near-ties, and 2x / ~4x fewer bytes held."""
    rows, vectors = real_rows
    write_with_beam(tmp_path, rows, vectors.shape[1], "float32")
    build_index(str(tmp_path), BuildConfig("v1", ENCODER_SPEC, k=10), {})
    exact = ImageSearcher.load(str(tmp_path))
    assert exact.vectors.precision == "float32"
    ids = [exact.hit_for_row(r, 0).image_id for r in range(len(exact))]
    for precision, tolerance in (("float16", 5e-4), ("int8", 2e-3)):
        compact = ImageSearcher.load(str(tmp_path), precision=precision)
        assert compact.vectors.precision == precision
        assert (
            compact.vectors.nbytes <= exact.vectors.nbytes / {"float16": 2, "int8": 3.9}[precision]
        )
        np.testing.assert_allclose(
            compact.vectors.decoded(), exact.vectors.decoded(), atol=tolerance
        )
        overlap = []
        for image_id in ids:
            want = exact.similar_to_image_id(image_id, 10)
            got = compact.similar_to_image_id(image_id, 10)
            np.testing.assert_allclose(
                [h.score for h in got], [h.score for h in want], atol=tolerance
            )
            # An image only the compact answer has scores (in float32) within the precision's
            # error of the float32 answer's last: a swap across a near-tie, never a worse hit.
            true = exact.vectors[exact.row_of(image_id)]
            for hit in got:
                assert (
                    true @ exact.vectors[exact.row_of(hit.image_id)]
                    >= want[-1].score - 2 * tolerance
                )
            overlap.append(len({h.image_id for h in got} & {h.image_id for h in want}) / 10)
        assert np.mean(overlap) >= {"float16": 0.99, "int8": 0.95}[precision], np.mean(overlap)
