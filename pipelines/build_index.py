"""After the Beam job: embedding table -> ScaNN index shard -> manifest (written last).

Layout under an output dir ``OUT`` (local or gs://)::

    OUT/table/embeddings-SSSSS-of-NNNNN.parquet   written by the Beam job
    OUT/index/shard-00000/                         ScaNN assets + ids.parquet (row, image_id, uri)
    OUT/index/joint-shard-00000/                   the same over joint_embedding, if the table
                                                   has it (a dual joint model's image side)
    OUT/manifest.json                              written last: publishes the version

Row ``i`` of a shard's ScaNN index is row ``i`` of its ``ids.parquet``. Rows are sorted by
``image_id``, so the index does not depend on how the runner split the table into files.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipelines.io import parquet_files
from pipelines.joint import split_model_id
from pipelines.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    IndexManifest,
    file_entry,
    relative_path,
    write_manifest,
)
from pipelines.scann_index import build_searcher, choose_scann_params, save_searcher
from pipelines.types import JOINT_EMBEDDING, JOINT_MODEL

logger = logging.getLogger(__name__)

TABLE_DIR = "table"
INDEX_DIR = "index"
IDS_FILE = "ids.parquet"
_TABLE_COLUMNS = ["image_id", "uri", "embedding", "encoder"]
_RAW = CompressionTypes.UNCOMPRESSED
_COPY_CHUNK_BYTES = 4 * 2**20
# Encoders promise unit-norm rows; ScaNN's dot product equals cosine only if they are.
_NORM_TOLERANCE = 1e-3

IDS_SCHEMA = pa.schema(
    [
        pa.field("row", pa.int64(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
    ],
    metadata={b"imgsearch.table": b"index_ids"},
)


def shard_dir_name(shard: int) -> str:
    """``index/shard-00000``: a shard's folder relative to the output dir."""
    return f"{INDEX_DIR}/shard-{shard:05d}"


def joint_shard_dir_name(shard: int) -> str:
    """``index/joint-shard-00000``: a joint-space shard's folder relative to the output dir."""
    return f"{INDEX_DIR}/joint-shard-{shard:05d}"


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
    return parquet_files(FileSystems.join(out_dir, TABLE_DIR))


def _embedding_dim(field_type: pa.DataType, path: str) -> int:
    if not (pa.types.is_fixed_size_list(field_type) and field_type.value_type == pa.float32()):
        raise ValueError(
            f"{path}: 'embedding' must be a fixed-size list of float32 "
            f"(pipelines.types.embedding_table_schema), got {field_type}"
        )
    return field_type.list_size


def read_embedding_table(paths: Sequence[str]) -> EmbeddingTable:
    """Read the index columns of these embedding-table Parquet files (local or gs://).

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
        with FileSystems.open(path, compression_type=_RAW) as handle:
            try:
                parquet = pq.ParquetFile(handle)
                has_joint = JOINT_EMBEDDING in parquet.schema_arrow.names
                columns = _TABLE_COLUMNS + ([JOINT_EMBEDDING, JOINT_MODEL] if has_joint else [])
                part = parquet.read(columns=columns)
            except (pa.ArrowException, KeyError) as err:
                raise ValueError(f"{path} is not a readable embedding-table file: {err}") from err
        dims[path] = _embedding_dim(part.schema.field("embedding").type, path)
        joint_dims[path] = (
            _embedding_dim(part.schema.field(JOINT_EMBEDDING).type, path) if has_joint else None
        )
        # Schema metadata (e.g. the writer's dim) may differ per file and would block concat.
        parts.append(part.replace_schema_metadata(None))
    if len(set(dims.values())) > 1:
        raise ValueError(f"embedding-table files disagree on the dimension: {dims}")
    if len(set(joint_dims.values())) > 1:
        raise ValueError(f"embedding-table files disagree on the joint column: {joint_dims}")
    dim = next(iter(dims.values()))
    joint_dim = next(iter(joint_dims.values()))
    table = pa.concat_tables(parts)
    del parts
    if table.num_rows == 0:
        raise ValueError(f"empty table: the {len(paths)} Parquet file(s) hold no rows")
    for column in table.column_names:
        if table[column].null_count:
            raise ValueError(f"the table has {table[column].null_count} null {column!r} values")

    encoder_id = _single_encoder_id(table)
    _check_unique_ids(table)

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


def write_ids(path: str, image_ids: Sequence[str], uris: Sequence[str]) -> None:
    """Write a shard's ``ids.parquet`` (row, image_id, uri) to the local file ``path``."""
    table = pa.table(
        {
            "row": pa.array(np.arange(len(image_ids), dtype=np.int64)),
            "image_id": pa.array(image_ids, pa.string()),
            "uri": pa.array(uris, pa.string()),
        },
        schema=IDS_SCHEMA,
    )
    pq.write_table(table, path)


def read_ids(path: str) -> tuple[list[str], list[str]]:
    """``(image_ids, uris)`` of a shard's ``ids.parquet`` (local or gs://), in row order."""
    with FileSystems.open(path, compression_type=_RAW) as handle:
        table = pq.read_table(handle, columns=["row", "image_id", "uri"])
    rows = table["row"].to_numpy()
    if not np.array_equal(rows, np.arange(len(rows))):
        raise ValueError(f"{path}: the row column is not 0..{len(rows) - 1} in order")
    return table["image_id"].to_pylist(), table["uri"].to_pylist()


def _delete_tree(path: str) -> None:
    """Delete a folder (local disk) or every object under a prefix (gs://), if any."""
    if FileSystems.exists(path):  # a real directory on local disk
        FileSystems.delete([path])
        return
    stale = FileSystems.match([FileSystems.join(path, "**")])[0].metadata_list
    if stale:
        FileSystems.delete([m.path for m in stale])


def remove_previous_index(out_dir: str) -> None:
    """Delete ``OUT/manifest.json`` then ``OUT/index``, leaving the table alone.

    The manifest goes first so that no reader trusts a half-deleted index.
    """
    manifest_path = FileSystems.join(out_dir, MANIFEST_NAME)
    if FileSystems.exists(manifest_path):
        logger.info("removing previous manifest %s", manifest_path)
        FileSystems.delete([manifest_path])
    index_path = FileSystems.join(out_dir, INDEX_DIR)
    logger.info("removing any previous index under %s", index_path)
    _delete_tree(index_path)


def _upload(local_path: str, destination: str) -> tuple[int, str]:
    """Copy a local file to ``destination`` (local or gs://); returns its size and SHA-256.

    Hashing while copying reads each index file once, however large it is.
    """
    digest = hashlib.sha256()
    size = 0
    with (
        open(local_path, "rb") as source,
        FileSystems.create(destination, compression_type=_RAW) as target,
    ):
        while chunk := source.read(_COPY_CHUNK_BYTES):
            digest.update(chunk)
            target.write(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _publish_shard(
    out_dir: str, shard_rel: str, searcher: Any, table: EmbeddingTable
) -> list[dict[str, Any]]:
    """Write a ScaNN searcher + ids.parquet under ``OUT/shard_rel``; -> their manifest entries."""
    shard_dir = FileSystems.join(out_dir, *shard_rel.split("/"))
    entries = []
    # ScaNN serializes to local disk only; stage there, then copy through FileSystems (gs://).
    with tempfile.TemporaryDirectory(prefix="imgsearch-index-") as staging:
        save_searcher(searcher, staging)
        write_ids(os.path.join(staging, IDS_FILE), table.image_ids, table.uris)
        for name in sorted(os.listdir(staging)):
            destination = FileSystems.join(shard_dir, name)
            size, sha256 = _upload(os.path.join(staging, name), destination)
            entries.append(
                {"path": relative_path(destination, out_dir), "bytes": size, "sha256": sha256}
            )
    return entries


def build_index(
    out_dir: str,
    encoder_spec: dict[str, Any],
    counts: dict[str, int],
    version: str,
    k: int = 10,
    target_recall: float | None = None,
) -> IndexManifest:
    """Build the ScaNN index of ``OUT/table`` into ``OUT/index`` and publish ``OUT/manifest.json``.

    ``counts`` are the job's tallies (inputs, duplicates, dead_letters, ...); ``indexed`` is
    taken from the table and, if given, must agree with it. ``k`` is the default number of
    neighbours the index is tuned for. With ``target_recall``, the main index's parameters come
    from ``pipelines.ann_tuning.autotune_scann`` (held-out queries against exact neighbours)
    instead of the size rules, and the measurements are recorded in the manifest's ``tuning``.
    Returns the manifest it wrote.
    """
    # Validate what the caller passed before reading a large table or deleting anything.
    if not version:
        raise ValueError("version (the run id) must be a non-empty string")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not isinstance(encoder_spec, dict):
        raise ValueError(
            f"encoder_spec must be a dict (EncoderSpec.to_json()), got {encoder_spec!r}"
        )
    paths = table_files(out_dir)
    if not paths:
        raise ValueError(f"empty table: no Parquet files match {out_dir}/{TABLE_DIR}/*.parquet")
    table = read_embedding_table(paths)
    num_rows = len(table)
    if "indexed" in counts and counts["indexed"] != num_rows:
        # The driver counts table rows too: a difference means the table changed under us.
        raise ValueError(f"counts['indexed'] is {counts['indexed']} but the table holds {num_rows}")
    counts = {**counts, "indexed": num_rows}

    tuning = None
    if target_recall is None:
        params = choose_scann_params(num_rows, table.dim, k)
    else:
        from pipelines.ann_tuning import TuningTarget, autotune_scann

        result = autotune_scann(table.embeddings, TuningTarget(recall=target_recall, k=k))
        if not result.met_target:
            logger.warning("autotuning missed its target: %s", result.reason)
        params, tuning = result.params, result.to_json()
    remove_previous_index(out_dir)
    logger.info(
        "indexing %d x %d vectors of %s with %s", num_rows, table.dim, table.encoder_id, params
    )
    searcher = build_searcher(table.embeddings, params)

    shard_rel = shard_dir_name(0)
    index_entries = _publish_shard(out_dir, shard_rel, searcher, table)
    joint_index = None
    if table.joint_embeddings is not None:
        joint_dim = int(table.joint_embeddings.shape[1])
        joint_params = choose_scann_params(num_rows, joint_dim, k)
        logger.info(
            "indexing %d x %d joint vectors of %s with %s",
            num_rows,
            joint_dim,
            table.joint_model,
            joint_params,
        )
        joint_rel = joint_shard_dir_name(0)
        joint_searcher = build_searcher(table.joint_embeddings, joint_params)
        index_entries += _publish_shard(out_dir, joint_rel, joint_searcher, table)
        model, model_version = split_model_id(table.joint_model)
        joint_index = {
            "model": model,
            "model_version": model_version,
            "dim": joint_dim,
            "scann_params": joint_params.to_json(),
            "shard": {
                "index_dir": joint_rel,
                "ids_file": f"{joint_rel}/{IDS_FILE}",
                "count": num_rows,
            },
        }
    table_entries = [file_entry(path, out_dir) for path in table.paths]

    manifest = IndexManifest(
        format_version=FORMAT_VERSION,
        version=version,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        encoder_id=table.encoder_id,
        encoder_spec=dict(encoder_spec),
        dim=table.dim,
        counts=counts,
        scann_params=params.to_json(),
        shards=[{"index_dir": shard_rel, "ids_file": f"{shard_rel}/{IDS_FILE}", "count": num_rows}],
        files=sorted(table_entries + index_entries, key=lambda entry: entry["path"]),
        joint_index=joint_index,
        tuning=tuning,
    )
    write_manifest(out_dir, manifest)
    return manifest
