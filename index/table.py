"""Optional columns of an embedding table (tags, captions), read in the table's row order.

``read_embedding_table`` reads what every table has (ids, vectors); the columns added by
``--tag_head`` and ``--captioner`` are read here, only by those that use them.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from encoders.base import l2_normalize
from index.schema import (
    CAPTION,
    CAPTIONS,
    EMBEDDING_SCALE,
    JOINT_EMBEDDING,
    JOINT_MODEL,
    STORAGE_TYPES,
)
from index.shards import shard_of_ids
from index.stored_vectors import StoredVectors
from storage.files import join_path, list_files, open_file

logger = logging.getLogger(__name__)

TABLE_DIR = "table"

_TABLE_COLUMNS = ["image_id", "uri", "embedding", "encoder"]

# Encoders promise unit-norm rows; ScaNN's dot product equals cosine only if they are.
_NORM_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True, eq=False)
class EmbeddingTable:
    """The rows of an embedding table that the index needs, sorted by ``image_id``.

    Row ``i`` of ``embeddings`` (``(N, dim)`` float32) belongs to ``image_ids[i]``/``uris[i]``.
    """

    image_ids: list[str]
    uris: list[str]
    embeddings: np.ndarray
    encoder_id: str
    paths: tuple[str, ...]  # the Parquet files read, sorted
    joint_embeddings: np.ndarray | None = None  # (N, joint_dim), when the table has the column
    joint_model: str = ""  # the dual joint model's name/version that made them

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return len(self.image_ids)


def table_files(out_dir: str) -> list[str]:
    """Sorted paths of ``OUT/table/*.parquet``."""
    return parquet_files(join_path(out_dir, TABLE_DIR))


def _embedding_dim(field_type: pa.DataType, path: str, column: str = "embedding") -> int:
    if not (pa.types.is_fixed_size_list(field_type) and field_type.value_type == pa.float32()):
        raise ValueError(
            f"{path}: {column!r} must be a fixed-size list of float32 "
            f"(index.schema.embedding_table_schema), got {field_type}"
        )
    return field_type.list_size


_COMPACT_TYPES = (pa.float16(), pa.int8())


def _stored_part(part: pa.Table, path: str, column: str = "embedding") -> StoredVectors:
    """One file's ``column`` as stored: float32, float16, or int8 with ``embedding_scale``."""
    field_type = part.schema.field(column).type
    storage = _storage_of(field_type, path, column)
    if part[column].null_count:
        raise ValueError(f"the table has {part[column].null_count} null {column!r} values")
    dim = field_type.list_size
    # flatten() rather than .values: it honours an array's offset, .values would not.
    values = part[column].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    values = values.reshape(-1, dim)
    scales = None
    if storage == "int8":
        if EMBEDDING_SCALE not in part.column_names:
            raise ValueError(f"{path}: an int8 {column!r} needs the {EMBEDDING_SCALE!r} column")
        scales = part[EMBEDDING_SCALE].to_numpy(zero_copy_only=False)
    if values.dtype != np.int8 and not np.isfinite(values).all():
        raise ValueError(f"the table holds NaN or infinite {column} values")
    return StoredVectors(values, scales)


def _decode_embeddings(part: pa.Table, path: str) -> pa.Table:
    """``part`` with a float16 or int8 (+ ``embedding_scale``) ``embedding`` as unit float32.

    Compact rows are renormalised after decoding (``index.stored_vectors.decode``).
    """
    field_type = part.schema.field("embedding").type
    if not (pa.types.is_fixed_size_list(field_type) and field_type.value_type in _COMPACT_TYPES):
        return part  # float32 (checked by _embedding_dim) or a type it will refuse
    vectors = _stored_part(part, path).decoded()
    decoded = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    part = part.set_column(part.column_names.index("embedding"), "embedding", decoded)
    if EMBEDDING_SCALE in part.column_names:
        part = part.drop_columns([EMBEDDING_SCALE])
    return part


def read_embedding_table(
    paths: Sequence[str], shard: tuple[int, int] | None = None
) -> EmbeddingTable:
    """Read the index columns of these embedding-table Parquet files (local or gs://).

    With ``shard=(index, count)`` only the rows that ``shard_of_ids`` assigns to that shard are
    kept, file by file, so a shard builder holds its slice of the table, never all of it.

    Raises ValueError when there are no rows ("empty table"), when files disagree on the
    dimension, when rows come from more than one encoder, or on null, non-finite or duplicate
    entries: each is a bug upstream that an index must not hide.
    """
    paths = tuple(sorted(paths))
    if not paths:
        raise ValueError("empty table: no embedding-table Parquet files to read")
    parts = []
    dims: dict[str, int] = {}
    joint_dims: dict[str, int | None] = {}
    for path in paths:
        with open_file(path) as handle:
            try:
                parquet = pq.ParquetFile(handle)
                names = parquet.schema_arrow.names
                has_joint = JOINT_EMBEDDING in names
                columns = _TABLE_COLUMNS + ([JOINT_EMBEDDING, JOINT_MODEL] if has_joint else [])
                if EMBEDDING_SCALE in names:
                    columns.append(EMBEDDING_SCALE)
                part = _decode_embeddings(parquet.read(columns=columns), path)
            except (pa.ArrowException, KeyError) as err:
                raise ValueError(f"{path} is not a readable embedding-table file: {err}") from err
        if shard is not None:
            index, count = shard
            mine = shard_of_ids(part["image_id"].to_pylist(), count) == index
            part = part.filter(pa.array(mine))
        dims[path] = _embedding_dim(part.schema.field("embedding").type, path)
        joint_dims[path] = (
            _embedding_dim(part.schema.field(JOINT_EMBEDDING).type, path, JOINT_EMBEDDING)
            if has_joint
            else None
        )
        # One embedding type for every file (compact files decode to a list type of their own
        # naming), and no schema metadata (e.g. the writer's dim): either would block concat.
        canonical = pa.list_(pa.float32(), dims[path])
        part = part.set_column(
            part.column_names.index("embedding"),
            pa.field("embedding", canonical, nullable=False),
            part["embedding"].cast(canonical),
        )
        parts.append(part.replace_schema_metadata(None))
    if len(set(dims.values())) > 1:
        raise ValueError(f"embedding-table files disagree on the dimension: {dims}")
    if len(set(joint_dims.values())) > 1:
        raise ValueError(f"embedding-table files disagree on the joint column: {joint_dims}")
    dim = next(iter(dims.values()))
    joint_dim = next(iter(joint_dims.values()))
    table = pa.concat_tables(parts)
    del parts
    where = "" if shard is None else f" for shard {shard[0]} of {shard[1]}"
    encoder_id = _checked_rows(table, f"the {len(paths)} Parquet file(s) hold no rows{where}")

    # Sort in Arrow (C++) and extract the embedding column as one matrix: no per-row Python.
    table = table.take(pc.sort_indices(table["image_id"]))
    embedding_column = table["embedding"].combine_chunks()
    # flatten() rather than .values: it honours an array's offset, .values would not.
    embeddings = embedding_column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    if not np.isfinite(embeddings).all():
        raise ValueError("the table holds NaN or infinite embedding values")
    joint_embeddings, joint_model = None, ""
    if joint_dim is not None:
        joint_model = _single_value(table, JOINT_MODEL, "joint model")
        joint_column = table[JOINT_EMBEDDING].combine_chunks()
        joint_embeddings = np.ascontiguousarray(
            joint_column.flatten().to_numpy(zero_copy_only=False).reshape(-1, joint_dim),
            dtype=np.float32,
        )
        if not np.isfinite(joint_embeddings).all():
            raise ValueError("the table holds NaN or infinite joint_embedding values")
    off_norm = int((np.abs(np.linalg.norm(embeddings, axis=1) - 1.0) > _NORM_TOLERANCE).sum())
    if off_norm:
        logger.warning(
            "%d of %d embeddings are not unit-norm: dot-product scores are not cosines for them",
            off_norm,
            table.num_rows,
        )
    return EmbeddingTable(
        image_ids=table["image_id"].to_pylist(),
        uris=table["uri"].to_pylist(),
        embeddings=np.ascontiguousarray(embeddings, dtype=np.float32),
        encoder_id=encoder_id,
        paths=paths,
        joint_embeddings=joint_embeddings,
        joint_model=joint_model,
    )


@dataclasses.dataclass(frozen=True, eq=False)
class StoredTable:
    """The table's ids and vectors as serving holds them: sorted by ``image_id`` like
    ``EmbeddingTable``, the vectors kept stored (``StoredVectors``), never decoded whole."""

    image_ids: list[str]
    uris: list[str]
    vectors: StoredVectors
    encoder_id: str

    def __len__(self) -> int:
        return len(self.image_ids)


def read_stored_table(
    paths: Sequence[str], precision: str | None = None, row_order: Sequence[str] | None = None
) -> StoredTable:
    """``read_embedding_table``'s rows (same checks) with the vectors kept as stored, for
    serving: decoding happens per row read.

    Rows are sorted by ``image_id``, or in ``row_order`` when given (an index's global row
    order: every id of it must be in the table and every table row in it, else ValueError).
    ``precision`` (one of ``EMBEDDING_STORAGES``) converts the vectors, e.g. a float32 table
    held as int8; the default keeps the table's own storage (float32 when its files differ).
    The vectors are read ``_BATCH_ROWS`` at a time straight into their place in one matrix:
    no decoded or reordered copy of the whole column is ever made.
    """
    paths = tuple(sorted(paths))
    if not paths:
        raise ValueError("empty table: no embedding-table Parquet files to read")
    parts, types = [], []
    for path in paths:
        with open_file(path) as handle:
            try:
                parquet = pq.ParquetFile(handle)
                types.append(parquet.schema_arrow.field("embedding").type)
                part = parquet.read(columns=["image_id", "uri", "encoder"])
            except (pa.ArrowException, KeyError) as err:
                raise ValueError(f"{path} is not a readable embedding-table file: {err}") from err
        parts.append(part.replace_schema_metadata(None))
    table = pa.concat_tables(parts)
    encoder_id = _checked_rows(table, f"the {len(paths)} Parquet file(s) hold no rows")
    if row_order is None:
        order = pc.sort_indices(table["image_id"]).to_numpy()
        positions = np.empty(len(order), np.int64)
        positions[order] = np.arange(len(order))
        table = table.take(order)
        image_ids, uris = table["image_id"].to_pylist(), table["uri"].to_pylist()
    else:
        positions = _positions_in(table["image_id"], row_order)
        image_ids, uris = list(row_order), [""] * len(row_order)
        for position, uri in zip(positions, table["uri"].to_pylist(), strict=True):
            uris[position] = uri
    vectors = _read_vectors(paths, types, "embedding", _per_file(positions, parts), precision)
    return StoredTable(image_ids=image_ids, uris=uris, vectors=vectors, encoder_id=encoder_id)


def read_stored_column(
    out_dir: str, column: str, image_ids: Sequence[str], precision: str | None = None
) -> StoredVectors:
    """A vector column other than ``embedding`` (e.g. ``joint_embedding``) of ``OUT/table``,
    rows scaled to unit length (as the index over it was built from), held at ``precision``
    (default: as stored), in ``image_ids`` order (the table's ids, in any order).

    Columnar, unlike ``read_table_columns``: no Python object per value. KeyError when a file
    lacks the column; ValueError when an id is missing.
    """
    paths, parts, types = table_files(out_dir), [], []
    for path in paths:
        with open_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            if column not in parquet.schema_arrow.names:
                raise KeyError(f"{path} has no {column!r} column: index with the flag that adds it")
            types.append(parquet.schema_arrow.field(column).type)
            parts.append(parquet.read(columns=["image_id"]))
    positions = _positions_in(pa.concat_tables(parts)["image_id"], image_ids)
    per_file = _per_file(positions, parts)
    return _read_vectors(paths, types, column, per_file, precision, unit=True)


# Rows read, decoded or converted at a time: 16k x 1280 float32 is 80 MiB of scratch.
_BATCH_ROWS = 16_384


def _positions_in(ids: pa.ChunkedArray, row_order: Sequence[str]) -> np.ndarray:
    """Where each of ``ids`` sits in ``row_order``; ValueError unless both hold the same ids."""
    found = pc.index_in(ids, value_set=pa.array(list(row_order), pa.string()))
    missing = found.null_count
    if missing or len(ids) != len(row_order):
        raise ValueError(
            f"the table's {len(ids)} rows and the {len(row_order)} ids asked for differ: "
            f"{missing} table rows are not among them"
        )
    return found.to_numpy()


def _per_file(positions: np.ndarray, parts: Sequence[pa.Table]) -> list[np.ndarray]:
    bounds = np.cumsum([0] + [part.num_rows for part in parts])
    return [positions[a:b] for a, b in itertools.pairwise(bounds)]


def _read_vectors(
    paths: Sequence[str],
    types: Sequence[pa.DataType],
    column: str,
    positions: Sequence[np.ndarray],
    precision: str | None,
    unit: bool = False,
) -> StoredVectors:
    """File ``i``'s ``column`` (of Arrow type ``types[i]``) rows placed at ``positions[i]`` of
    one matrix, at ``precision`` (default: the files' shared storage, float32 when they
    differ); ``unit`` rescales rows to unit length."""
    kinds = {
        path: (_storage_of(field_type, path, column), field_type.list_size)
        for path, field_type in zip(paths, types, strict=True)
    }
    dims = {path: dim for path, (_, dim) in kinds.items()}
    if len(set(dims.values())) > 1:
        raise ValueError(f"embedding-table files disagree on the dimension: {dims}")
    if precision is None:
        storages = {storage for storage, _ in kinds.values()}
        precision = storages.pop() if len(storages) == 1 else "float32"

    def pieces():
        for path, where in zip(paths, positions, strict=True):
            scale = [EMBEDDING_SCALE] if kinds[path][0] == "int8" else []
            with open_file(path) as handle:
                start = 0
                batches = pq.ParquetFile(handle).iter_batches(_BATCH_ROWS, columns=[column, *scale])
                for batch in batches:
                    part = _stored_part(pa.Table.from_batches([batch]), path, column)
                    if unit:
                        part = StoredVectors.encode(l2_normalize(part.decoded()), precision)
                    yield where[start : start + len(part)], part
                    start += len(part)

    total = sum(len(where) for where in positions)
    vectors = StoredVectors.assemble(total, next(iter(dims.values())), precision, pieces())
    # Arrow's allocator keeps freed batches for reuse; a server has no use for them.
    pa.default_memory_pool().release_unused()
    return vectors


def _storage_of(field_type: pa.DataType, path: str, column: str) -> str:
    if pa.types.is_fixed_size_list(field_type):
        for storage, value_type in STORAGE_TYPES.items():
            if field_type.value_type == value_type:
                return storage
    raise ValueError(
        f"{path}: {column!r} must be a fixed-size list of float32, float16 or int8 "
        f"(index.schema.embedding_table_schema), got {field_type}"
    )


def _checked_rows(table: pa.Table, empty: str) -> str:
    """The table's one encoder id, after refusing no rows (``empty`` says why), nulls, rows of
    several encoders and repeated ids: each a bug upstream that an index must not hide."""
    if table.num_rows == 0:
        raise ValueError(f"empty table: {empty}")
    for column in table.column_names:
        if table[column].null_count:
            raise ValueError(f"the table has {table[column].null_count} null {column!r} values")
    encoder_id = _single_encoder_id(table)
    _check_unique_ids(table)
    return encoder_id


def _single_encoder_id(table: pa.Table) -> str:
    return _single_value(table, "encoder", "encoder")


def _single_value(table: pa.Table, column: str, what: str) -> str:
    counts = pc.value_counts(table[column])
    by_value = dict(
        zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    )
    if len(by_value) != 1:
        raise ValueError(
            f"the table mixes {what} ids {by_value} (rows per {what}); vectors of "
            f"different {what}s are not comparable, so one index must hold one {what}"
        )
    value = next(iter(by_value))
    if not value:
        raise ValueError(f"the table's rows have an empty {what} id")
    return value


def _check_unique_ids(table: pa.Table) -> None:
    counts = pc.value_counts(table["image_id"])
    repeated = pc.filter(counts, pc.greater(counts.field("counts"), 1))
    if len(repeated):
        examples = repeated.field("values").to_pylist()[:5]
        raise ValueError(
            f"{len(repeated)} image_id(s) occur in more than one table row, e.g. {examples}"
        )


def table_has_columns(out_dir: str, columns: Sequence[str]) -> bool:
    """Whether every Parquet file of ``OUT/table`` has all ``columns``."""
    files = table_files(out_dir)
    return bool(files) and all(set(columns) <= set(_column_names(path)) for path in files)


def _column_names(path: str) -> list[str]:
    with open_file(path) as handle:
        return pq.ParquetFile(handle).schema_arrow.names


def read_table_columns(
    out_dir: str, columns: Sequence[str], image_ids: Sequence[str]
) -> dict[str, list[Any]]:
    """``{column: values}`` with values in ``image_ids`` order (the ``EmbeddingTable``'s rows).

    KeyError naming the column when a file lacks it; ValueError when an id is missing.
    """
    by_id: dict[str, dict[str, Any]] = {}
    for path in table_files(out_dir):
        missing = [c for c in columns if c not in _column_names(path)]
        if missing:
            raise KeyError(f"{path} has no {missing} column(s): index with the flag that adds it")
        with open_file(path) as handle:
            part = pq.read_table(handle, columns=["image_id", *columns])
        for row in part.to_pylist():
            by_id[row["image_id"]] = row
    lost = [i for i in image_ids if i not in by_id]
    if lost:
        raise ValueError(f"{len(lost)} table rows missing from the columns read, e.g. {lost[:3]}")
    return {column: [by_id[i][column] for i in image_ids] for column in columns}


def read_caption_texts(out_dir: str, image_ids: Sequence[str]) -> list[list[str]]:
    """Each image's generated captions, best first, in ``image_ids`` order: its ``captions``,
    or for a table written before that column, its one ``caption``. KeyError without either."""
    if table_has_columns(out_dir, [CAPTIONS]):
        cells = read_table_columns(out_dir, [CAPTIONS], image_ids)[CAPTIONS]
        return [[caption["text"] for caption in cell] for cell in cells]
    return [[text] for text in read_table_columns(out_dir, [CAPTION], image_ids)[CAPTION]]


def parquet_files(folder: str) -> list[str]:
    """Sorted paths of the Parquet files directly in ``folder`` (local or gs://)."""
    return list_files(folder, "*.parquet")


def parquet_rows(path: str) -> int:
    """Rows in one Parquet file, read from its footer only."""
    with open_file(path) as handle:
        return pq.ParquetFile(handle).metadata.num_rows
