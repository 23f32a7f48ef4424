"""StoredVectors and the stored-form table reader against read_embedding_table's float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index import stored_vectors
from index.schema import JOINT_EMBEDDING, JOINT_MODEL, compact_row, embedding_table_schema
from index.stored_vectors import StoredVectors
from index.table import (
    read_embedding_table,
    read_stored_column,
    read_stored_table,
    table_files,
)
from tests.index.test_build_index import table_rows


def write_table(out: Path, rows: list[dict], storages: list[str], joint: bool = False) -> None:
    """``rows`` split over one Parquet file per storage, as the index job's writer stores them."""
    (out / "table").mkdir(parents=True)
    dim = len(rows[0]["embedding"])
    for i, (storage, part) in enumerate(
        zip(storages, np.array_split(np.arange(len(rows)), len(storages)), strict=True)
    ):
        schema = embedding_table_schema(dim, storage=storage)
        compact = [compact_row(rows[j], storage) for j in part]
        if joint:
            schema = schema.append(pa.field(JOINT_EMBEDDING, pa.list_(pa.float32(), 8)))
            schema = schema.append(pa.field(JOINT_MODEL, pa.string()))
            for j, row in zip(part, compact, strict=True):
                row[JOINT_EMBEDDING] = (np.arange(8, dtype=np.float32) + j).tolist()
                row[JOINT_MODEL] = "dual/v1"
        name = f"embeddings-{i:05d}-of-{len(storages):05d}.parquet"
        pq.write_table(pa.Table.from_pylist(compact, schema=schema), out / "table" / name)


@pytest.mark.parametrize(
    "storages", [["float32"], ["float16", "float16"], ["int8", "int8", "int8"], ["int8", "float16"]]
)
def test_stored_table_decodes_as_the_float32_reader_does(tmp_path: Path, storages) -> None:
    rows, _ = table_rows(90, 24, seed=1)
    write_table(tmp_path, rows, storages)
    paths = table_files(str(tmp_path))
    table = read_embedding_table(paths)
    stored = read_stored_table(paths)
    assert stored.image_ids == table.image_ids and stored.uris == table.uris
    assert stored.encoder_id == table.encoder_id
    # The files' storage is what is held (float32 when they differ); every row decodes bit for
    # bit as the index build's reader decodes it.
    assert stored.vectors.precision == (storages[0] if len(set(storages)) == 1 else "float32")
    np.testing.assert_array_equal(stored.vectors.decoded(), table.embeddings)
    np.testing.assert_array_equal(stored.vectors[[5, 2, 5]], table.embeddings[[5, 2, 5]])
    np.testing.assert_array_equal(stored.vectors[7], table.embeddings[7])
    # In an index's own row order, read straight into place: the same rows, moved.
    order = table.image_ids[::-1]
    moved = read_stored_table(paths, row_order=order)
    assert moved.image_ids == order and moved.uris == table.uris[::-1]
    np.testing.assert_array_equal(moved.vectors.decoded(), table.embeddings[::-1])
    with pytest.raises(ValueError, match="differ"):
        read_stored_table(paths, row_order=order[1:])
    with pytest.raises(ValueError, match="1 table rows are not among them"):
        read_stored_table(paths, row_order=[order[0], *order[:-1]])
    per_dim = {"float32": 4, "float16": 2, "int8": 1}[stored.vectors.precision]
    scales = 4 if stored.vectors.precision == "int8" else 0
    assert stored.vectors.nbytes == 90 * (24 * per_dim + scales)


def test_a_float32_table_held_compact(tmp_path: Path) -> None:
    rows, _ = table_rows(200, 64, seed=2)
    write_table(tmp_path, rows, ["float32", "float32"])
    paths = table_files(str(tmp_path))
    full = read_stored_table(paths)
    for precision, min_cosine in (("float16", 0.99999), ("int8", 0.9998)):
        held = read_stored_table(paths, precision)
        assert held.vectors.precision == precision and held.image_ids == full.image_ids
        cosines = np.sum(held.vectors.decoded() * full.vectors.decoded(), axis=1)
        assert cosines.min() > min_cosine, (precision, cosines.min())
        np.testing.assert_allclose(np.linalg.norm(held.vectors.decoded(), axis=1), 1, atol=1e-6)
    assert read_stored_table(paths, "int8").vectors.nbytes == 200 * (64 + 4)


def test_whole_table_passes_decode_chunk_by_chunk(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    held = StoredVectors.encode(vectors, "int8")
    decoded = held.decoded()
    monkeypatch.setattr(stored_vectors, "CHUNK_ROWS", 7)  # 50 rows: 8 chunks, a short last one
    seen = []
    queries = rng.standard_normal((3, 16)).astype(np.float32)
    np.testing.assert_allclose(held.dot(queries), queries @ decoded.T, rtol=1e-6, atol=1e-6)
    projected = held.map_chunks(lambda block: seen.append(len(block)) or block[:, :4] * 2)
    np.testing.assert_array_equal(projected, decoded[:, :4] * 2)
    assert seen == [7] * 7 + [1]
    np.testing.assert_array_equal(held.take(np.array([4, 0]))[[0, 1]], decoded[[4, 0]])
    # A float32 row read is a copy: a caller writing into it does not change the index.
    exact = StoredVectors(vectors)
    row = exact[0]
    row[:] = 0
    assert np.any(exact[0])


def test_stored_vectors_refuse_what_they_cannot_hold() -> None:
    with pytest.raises(ValueError, match="per-row scales"):
        StoredVectors(np.zeros((2, 3), np.int8))
    with pytest.raises(ValueError, match="per-row scales"):
        StoredVectors(np.zeros((2, 3), np.float32), np.ones(2))
    with pytest.raises(ValueError, match="as many scales"):
        StoredVectors(np.zeros((2, 3), np.int8), np.ones(3))
    with pytest.raises(ValueError, match="must be"):
        StoredVectors(np.zeros((2, 3), np.float64))
    with pytest.raises(ValueError, match="matrix"):
        StoredVectors(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="precision"):
        StoredVectors.encode(np.zeros((2, 3)), "int4")
    part = StoredVectors.encode(np.eye(3, dtype=np.float32), "int8")
    with pytest.raises(ValueError, match="never placed"):
        StoredVectors.assemble(4, 3, "float16", [(np.array([0, 2, 3]), part)])
    with pytest.raises(ValueError, match="for 2 rows"):
        StoredVectors.assemble(3, 3, "float16", [(np.array([0, 2]), part)])
    placed = StoredVectors.assemble(3, 3, "float16", [(np.array([2, 0, 1]), part)])
    np.testing.assert_array_equal(placed[[2, 0, 1]], np.eye(3))


def test_joint_column_reads_unit_rows_in_the_order_asked(tmp_path: Path) -> None:
    rows, _ = table_rows(30, 12, seed=4)
    write_table(tmp_path, rows, ["float32", "int8"], joint=True)
    ids = read_stored_table(table_files(str(tmp_path))).image_ids[::-1]
    column = read_stored_column(str(tmp_path), JOINT_EMBEDDING, ids)
    raw = {row["image_id"]: np.arange(8, dtype=np.float32) + j for j, row in enumerate(rows)}
    want = np.stack([raw[i] / np.linalg.norm(raw[i]) for i in ids])
    np.testing.assert_allclose(column.decoded(), want, rtol=1e-6)
    assert read_stored_column(str(tmp_path), JOINT_EMBEDDING, ids, "int8").precision == "int8"
    with pytest.raises(ValueError, match="differ"):
        read_stored_column(str(tmp_path), JOINT_EMBEDDING, [*ids, "nope"])
    with pytest.raises(KeyError, match="tags"):
        read_stored_column(str(tmp_path), "tags", ids)
