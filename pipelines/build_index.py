"""After the Beam job: embedding table -> ScaNN index shard(s) -> manifest (written last).

Layout under an output dir ``OUT`` (local or gs://)::

    OUT/table/embeddings-SSSSS-of-NNNNN.parquet   written by the Beam job
    OUT/index/shard-00000/ .. shard-0000N/         ScaNN assets + ids.parquet (row, image_id, uri)
    OUT/index/joint-shard-00000/ ..                the same over joint_embedding, if the table
                                                   has it (a dual joint model's image side)
    OUT/manifest.json                              written last: publishes the version

Row ``i`` of a shard's ScaNN index is row ``i`` of its ``ids.parquet``. A full build sorts a
shard's rows by ``image_id``, so the index does not depend on how the runner split the table
into files. With more than one shard, a row belongs to shard ``shard_of_ids`` (a hash of its
id) and every shard is built by its own worker of the ``BuildShards`` Beam job: a shard reads
the table's id and embedding columns and keeps its slice, so no embedding crosses a shuffle
and a retried shard rewrites the same files. (Reading the columns once per shard costs I/O,
not memory, and is small next to training a shard's ScaNN tree.)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
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
    delete_tree,
    file_entry,
    join_path,
    relative_path,
    write_manifest,
)
from pipelines.scann_index import (
    QUANTIZE,
    ScannParams,
    build_searcher,
    choose_scann_params,
    save_searcher,
)
from pipelines.types import EMBEDDING_SCALE, JOINT_EMBEDDING, JOINT_MODEL, dequantize_int8

logger = logging.getLogger(__name__)

TABLE_DIR = "table"
INDEX_DIR = "index"
IDS_FILE = "ids.parquet"
_TABLE_COLUMNS = ["image_id", "uri", "embedding", "encoder"]
_RAW = CompressionTypes.UNCOMPRESSED
_COPY_CHUNK_BYTES = 4 * 2**20
_RESULTS_DIR = "_shard_results"  # each shard builder's manifest pieces, removed after the build
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


SHARD_ASSIGNMENT = "sha256(image_id)[:8] mod index_shards"


def shard_of_ids(image_ids: Sequence[str], num_shards: int) -> np.ndarray:
    """The shard of each image id: the first 8 bytes of its SHA-256, modulo ``num_shards``.

    By id, not by table file: the runner splits the table differently every run, while an id's
    shard never changes, so an update finds the shard that holds an id (to upsert or delete it)
    without a lookup, and two runs over the same ids build the same shards. SHA-256 rather
    than ``hash()``, which Python salts per process.
    """
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards must be a positive integer, got {num_shards!r}")
    if num_shards == 1:
        return np.zeros(len(image_ids), dtype=np.int64)
    return np.fromiter(
        (
            int.from_bytes(hashlib.sha256(image_id.encode("utf-8")).digest()[:8], "big")
            % num_shards
            for image_id in image_ids
        ),
        dtype=np.int64,
        count=len(image_ids),
    )


def shard_entry(
    shard_rel: str, count: int, params: dict[str, Any], files: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """A manifest shard: folder, ids file, rows, ScaNN params, and its size and checksum.

    ``sha256`` is over the sorted ``path sha256`` lines of the shard's files, so one value says
    whether a copied shard is complete and unchanged (each file keeps its own entry too).
    """
    prefix = shard_rel.strip("/") + "/"
    mine = sorted((e for e in files if e["path"].startswith(prefix)), key=lambda e: e["path"])
    digest = hashlib.sha256("".join(f"{e['path']} {e['sha256']}\n" for e in mine).encode())
    return {
        "index_dir": shard_rel,
        "ids_file": f"{shard_rel}/{IDS_FILE}",
        "count": int(count),
        "scann_params": dict(params),
        "bytes": sum(int(e["bytes"]) for e in mine),
        "sha256": digest.hexdigest(),
    }


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


def _embedding_dim(field_type: pa.DataType, path: str, column: str = "embedding") -> int:
    if not (pa.types.is_fixed_size_list(field_type) and field_type.value_type == pa.float32()):
        raise ValueError(
            f"{path}: {column!r} must be a fixed-size list of float32 "
            f"(pipelines.types.embedding_table_schema), got {field_type}"
        )
    return field_type.list_size


_COMPACT_TYPES = (pa.float16(), pa.int8())


def _decode_embeddings(part: pa.Table, path: str) -> pa.Table:
    """``part`` with a float16 or int8 (+ ``embedding_scale``) ``embedding`` as unit float32.

    Compact rows are renormalised after decoding: the index scores by dot product, which is the
    cosine only for unit rows, and rounding moves a row's norm by up to ~1e-3 (int8).
    """
    field_type = part.schema.field("embedding").type
    if not (pa.types.is_fixed_size_list(field_type) and field_type.value_type in _COMPACT_TYPES):
        return part  # float32 (checked by _embedding_dim) or a type it will refuse
    dim = field_type.list_size
    column = part["embedding"].combine_chunks()
    values = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    if field_type.value_type == pa.int8():
        if EMBEDDING_SCALE not in part.column_names:
            raise ValueError(f"{path}: an int8 'embedding' needs the {EMBEDDING_SCALE!r} column")
        scales = part[EMBEDDING_SCALE].to_numpy(zero_copy_only=False)
        vectors = dequantize_int8(values, scales)
    else:
        vectors = values.astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = np.divide(vectors, norms, out=vectors, where=norms > 0).astype(np.float32)
    decoded = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
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
        with FileSystems.open(path, compression_type=_RAW) as handle:
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
    if table.num_rows == 0:
        where = "" if shard is None else f" for shard {shard[0]} of {shard[1]}"
        raise ValueError(f"empty table: the {len(paths)} Parquet file(s) hold no rows{where}")
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
    delete_tree(index_path)


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


def publish_shard(
    out_dir: str,
    shard_rel: str,
    searcher: Any,
    image_ids: Sequence[str],
    uris: Sequence[str],
) -> list[dict[str, Any]]:
    """Write a ScaNN searcher + ids.parquet under ``OUT/shard_rel``; -> their manifest entries.

    Row ``i`` of the searcher is ``image_ids[i]``: the ids file is the shard's local-row ->
    global-id map, so shards need no shared row numbering.
    """
    shard_dir = FileSystems.join(out_dir, *shard_rel.split("/"))
    entries = []
    if FileSystems.get_scheme(shard_dir) is None:
        # A local version: serialize in place (no staging copy of a shard that may be GBs).
        delete_tree(shard_dir)  # what an interrupted attempt left there is not this shard
        save_searcher(searcher, shard_dir)
        write_ids(os.path.join(shard_dir, IDS_FILE), image_ids, uris)
        names = sorted(os.listdir(shard_dir))
        return [file_entry(os.path.join(shard_dir, name), out_dir) for name in names]
    # ScaNN serializes to local disk only; stage there, then copy through FileSystems (gs://).
    with tempfile.TemporaryDirectory(prefix="imgsearch-index-") as staging:
        save_searcher(searcher, staging)
        write_ids(os.path.join(staging, IDS_FILE), image_ids, uris)
        for name in sorted(os.listdir(staging)):
            destination = FileSystems.join(shard_dir, name)
            size, sha256 = _upload(os.path.join(staging, name), destination)
            entries.append(
                {"path": relative_path(destination, out_dir), "bytes": size, "sha256": sha256}
            )
    return entries


def download_shard(
    out_dir: str, files: Sequence[dict[str, Any]], index_dir: str, local: str
) -> str:
    """Copy the manifest ``files`` under ``index_dir`` (relative to OUT) into the local ``local``.

    ScaNN loads from local disk only; the manifest says which files make up the shard.
    """
    prefix = index_dir.strip("/") + "/"
    entries = [entry for entry in files if entry["path"].startswith(prefix)]
    if not entries:
        raise ValueError(f"the manifest lists no files under {index_dir}")
    for entry in entries:
        name = entry["path"][len(prefix) :]
        target = os.path.join(local, *name.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        copy_file(join_path(out_dir, entry["path"]), target)
    return local


def copy_file(source: str, destination: str) -> None:
    """Copy one file byte for byte through Beam FileSystems (local or gs:// on either side).

    On GCS the copy is a server-side rewrite: an update's untouched table and index files never
    travel through this process. On local disk the destination is a hard link when the
    filesystem allows: version files are immutable (every writer creates a new file, after
    removing what an interrupted attempt left), so versions can share an inode, which costs
    neither time nor space, and retention's delete only drops one name of it. Across
    filesystems the bytes are streamed.
    """
    scheme = FileSystems.get_scheme(destination)
    if FileSystems.get_scheme(source) == scheme:
        if scheme is None:
            os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
            if os.path.lexists(destination):
                os.remove(destination)  # never write through a name another version shares
            try:
                os.link(source, destination)
                return
            except OSError:  # another device, or no hard links on this filesystem
                pass
        FileSystems.copy([source], [destination])
        return
    with (
        FileSystems.open(source, compression_type=_RAW) as src,
        FileSystems.create(destination, compression_type=_RAW) as dst,
    ):
        while chunk := src.read(_COPY_CHUNK_BYTES):
            dst.write(chunk)


# --- sharded builds ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """What one shard builder needs: small enough to ship to a Beam worker."""

    out_dir: str
    shard: int
    num_shards: int
    table_paths: tuple[str, ...]
    k: int
    quantize: str = "float32"  # ScannParams.quantize of the image index


def _shard_result_path(out_dir: str, shard: int) -> str:
    return FileSystems.join(out_dir, INDEX_DIR, _RESULTS_DIR, f"shard-{shard:05d}.json")


def _build_and_publish(
    out_dir: str, shard: int, table: EmbeddingTable, params: ScannParams, k: int
) -> tuple[dict[str, Any], dict[str, Any] | None, list[dict[str, Any]]]:
    """Build and upload shard ``shard``'s image index (``params``) over ``table`` and, when the
    table holds joint embeddings, its joint index (size rules for ``k``).

    -> (the shard's manifest entry, ``{"model", "dim", "shard"}`` of its joint index or None,
    the file entries of both). The one-shard build and each worker of a sharded build use it.
    """
    shard_rel = shard_dir_name(shard)
    searcher = build_searcher(table.embeddings, params)
    files = publish_shard(out_dir, shard_rel, searcher, table.image_ids, table.uris)
    entry = shard_entry(shard_rel, len(table), params.to_json(), files)
    if table.joint_embeddings is None:
        return entry, None, files
    joint_dim = int(table.joint_embeddings.shape[1])
    joint_params = choose_scann_params(len(table), joint_dim, k)
    logger.info(
        "indexing %d x %d joint vectors of %s with %s",
        len(table),
        joint_dim,
        table.joint_model,
        joint_params,
    )
    joint_rel = joint_shard_dir_name(shard)
    joint_searcher = build_searcher(table.joint_embeddings, joint_params)
    joint_files = publish_shard(out_dir, joint_rel, joint_searcher, table.image_ids, table.uris)
    joint = {
        "model": table.joint_model,
        "dim": joint_dim,
        "shard": shard_entry(joint_rel, len(table), joint_params.to_json(), joint_files),
    }
    return entry, joint, files + joint_files


def build_shard(spec: ShardSpec) -> dict[str, Any]:
    """Build and upload shard ``spec.shard`` (and its joint shard) from its slice of the table.

    Reads only the rows ``shard_of_ids`` assigns to the shard, chooses ScaNN parameters for
    the shard's size, uploads the searcher + ids file, and writes its manifest pieces to a
    small JSON beside the index (the driver collects them, then deletes them). Rerunning it
    (a retried bundle) rewrites the same files, so it is safe to retry.
    """
    table = read_embedding_table(spec.table_paths, shard=(spec.shard, spec.num_shards))
    params = dataclasses.replace(
        choose_scann_params(len(table), table.dim, spec.k), quantize=spec.quantize
    )
    logger.info(
        "shard %d/%d: %d x %d with %s", spec.shard, spec.num_shards, len(table), table.dim, params
    )
    entry, joint, files = _build_and_publish(spec.out_dir, spec.shard, table, params, spec.k)
    result: dict[str, Any] = {
        "shard": entry,
        "encoder_id": table.encoder_id,
        "dim": table.dim,
        "joint": joint,
        "files": files,
    }
    payload = json.dumps(result, sort_keys=True).encode("utf-8")
    with FileSystems.create(
        _shard_result_path(spec.out_dir, spec.shard), compression_type=_RAW
    ) as f:
        f.write(payload)
    return result


class BuildShards(beam.PTransform):
    """PBegin -> one result dict per shard, each shard built by ``build_shard`` on a worker.

    ``Reshuffle`` after ``Create`` lets the runner spread the specs over workers (without it a
    runner may fuse them into one bundle and build the shards one after another).
    """

    def __init__(self, specs: Sequence[ShardSpec]) -> None:
        super().__init__()
        self.specs = list(specs)

    def expand(self, pbegin):
        return (
            pbegin
            | "ShardSpecs" >> beam.Create(self.specs)
            | "Spread" >> beam.Reshuffle()
            | "BuildShard" >> beam.Map(build_shard)
        )


def _run_shard_builds(
    out_dir: str, specs: Sequence[ShardSpec], pipeline_options: Any
) -> list[dict[str, Any]]:
    """Run ``BuildShards`` as its own Beam job; -> each shard's result, in shard order."""
    from apache_beam.options.pipeline_options import PipelineOptions

    options = pipeline_options if pipeline_options is not None else PipelineOptions([])
    with beam.Pipeline(options=options) as pipeline:
        _ = pipeline | "BuildShards" >> BuildShards(specs)
    # Beam returns nothing to the driver: read back what each shard wrote, then tidy up.
    results = []
    for spec in specs:
        path = _shard_result_path(out_dir, spec.shard)
        if not FileSystems.exists(path):
            raise RuntimeError(f"shard {spec.shard} finished without its result file {path}")
        with FileSystems.open(path, compression_type=_RAW) as f:
            results.append(json.loads(f.read().decode("utf-8")))
    delete_tree(FileSystems.join(out_dir, INDEX_DIR, _RESULTS_DIR))
    return results


def _check_shard_results(results: Sequence[dict[str, Any]]) -> None:
    for what in ("encoder_id", "dim"):
        values = {result[what] for result in results}
        if len(values) > 1:
            raise ValueError(f"index shards disagree on the {what}: {sorted(values)}")
    joint = {
        None if r["joint"] is None else (r["joint"]["model"], r["joint"]["dim"]) for r in results
    }
    if len(joint) > 1:
        raise ValueError(f"index shards disagree on the joint model: {joint}")


def _build_sharded(
    out_dir: str,
    paths: Sequence[str],
    num_shards: int,
    k: int,
    pipeline_options: Any,
    quantize: str = "float32",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any] | None, str, int]:
    """Build ``num_shards`` shards in parallel; -> (shards, files, joint_index, encoder, dim)."""
    specs = [
        ShardSpec(out_dir, shard, num_shards, tuple(paths), k, quantize)
        for shard in range(num_shards)
    ]
    results = _run_shard_builds(out_dir, specs, pipeline_options)
    _check_shard_results(results)
    shards = [result["shard"] for result in results]
    files = [entry for result in results for entry in result["files"]]
    joint_index = None
    if results[0]["joint"] is not None:
        model, model_version = split_model_id(results[0]["joint"]["model"])
        joint_shards = [result["joint"]["shard"] for result in results]
        joint_index = {
            "model": model,
            "model_version": model_version,
            "dim": results[0]["joint"]["dim"],
            "scann_params": joint_shards[0]["scann_params"],
            "shards": joint_shards,
        }
    return shards, files, joint_index, results[0]["encoder_id"], results[0]["dim"]


def build_index(
    out_dir: str,
    encoder_spec: dict[str, Any],
    counts: dict[str, int],
    version: str,
    k: int = 10,
    target_recall: float | None = None,
    num_shards: int = 1,
    pipeline_options: Any = None,
    quantize: str = "float32",
) -> IndexManifest:
    """Build the ScaNN index of ``OUT/table`` into ``OUT/index`` and publish ``OUT/manifest.json``.

    With ``num_shards > 1`` the rows are split by ``shard_of_ids`` and each shard (and joint
    shard) is built by its own worker of a Beam job run with ``pipeline_options`` (default: the
    DirectRunner); each shard chooses ScaNN parameters for its own size. Autotuning
    (``target_recall``) is for single-shard indexes only. ``quantize`` (``scann_index.QUANTIZE``)
    is how the image index stores the vectors it scores exactly: float32, bfloat16 or int8 (the
    joint index, a few hundred dimensions, stays float32).

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
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
        raise ValueError(f"num_shards must be a positive integer, got {num_shards!r}")
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
    if quantize != "float32" and target_recall is not None:
        raise ValueError(
            "target_recall autotunes with float32 rescoring; a quantized index would not keep "
            "the recall it measured (autotuning quantized indexes is not supported yet)"
        )
    if num_shards > 1 and target_recall is not None:
        raise ValueError(
            "target_recall autotunes one index; with index shards > 1 each shard takes the "
            "size rules (autotuning sharded indexes is not supported yet)"
        )
    paths = table_files(out_dir)
    if not paths:
        raise ValueError(f"empty table: no Parquet files match {out_dir}/{TABLE_DIR}/*.parquet")
    if num_shards > 1:
        return _build_index_sharded(
            out_dir, paths, encoder_spec, counts, version, k, num_shards, pipeline_options, quantize
        )
    table = read_embedding_table(paths)
    num_rows = len(table)
    if "indexed" in counts and counts["indexed"] != num_rows:
        # The driver counts table rows too: a difference means the table changed under us.
        raise ValueError(f"counts['indexed'] is {counts['indexed']} but the table holds {num_rows}")
    counts = {**counts, "indexed": num_rows}

    tuning = None
    if target_recall is None:
        params = dataclasses.replace(choose_scann_params(num_rows, table.dim, k), quantize=quantize)
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
    entry, joint, index_entries = _build_and_publish(out_dir, 0, table, params, k)
    joint_index = None
    if joint is not None:
        model, model_version = split_model_id(joint["model"])
        joint_index = {
            "model": model,
            "model_version": model_version,
            "dim": joint["dim"],
            "scann_params": joint["shard"]["scann_params"],
            "shard": joint["shard"],
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
        shards=[entry],
        files=sorted(table_entries + index_entries, key=lambda e: e["path"]),
        joint_index=joint_index,
        tuning=tuning,
        lineage=full_build_lineage(version, num_rows),
    )
    write_manifest(out_dir, manifest)
    return manifest


def full_build_lineage(version: str, num_rows: int) -> dict[str, Any]:
    """The manifest's ``lineage`` of a full build: the base later updates count changes from."""
    return {"built_from": version, "built_count": int(num_rows), "updates": []}


def _check_shard_sizes(paths: Sequence[str], num_shards: int) -> None:
    """Refuse, before anything is deleted, a shard count that would leave a shard empty.

    Reads only the ``image_id`` column: cheap next to the builds, and a clear error here beats
    a worker failing halfway through the Beam job.
    """
    counts = np.zeros(num_shards, dtype=np.int64)
    for path in paths:
        with FileSystems.open(path, compression_type=_RAW) as handle:
            ids = pq.read_table(handle, columns=["image_id"])["image_id"].to_pylist()
        counts += np.bincount(shard_of_ids(ids, num_shards), minlength=num_shards)
    empty = np.flatnonzero(counts == 0).tolist()
    if empty:
        raise ValueError(
            f"empty table: {num_shards} index shards over {int(counts.sum())} rows leave "
            f"shard(s) {empty[:10]} with no rows; use fewer index shards"
        )
    logger.info("rows per index shard: %s", counts.tolist())


def _build_index_sharded(
    out_dir: str,
    paths: Sequence[str],
    encoder_spec: dict[str, Any],
    counts: dict[str, int],
    version: str,
    k: int,
    num_shards: int,
    pipeline_options: Any,
    quantize: str = "float32",
) -> IndexManifest:
    _check_shard_sizes(paths, num_shards)
    remove_previous_index(out_dir)
    shards, index_entries, joint_index, encoder_id, dim = _build_sharded(
        out_dir, paths, num_shards, k, pipeline_options, quantize
    )
    num_rows = sum(shard["count"] for shard in shards)
    if "indexed" in counts and counts["indexed"] != num_rows:
        raise ValueError(f"counts['indexed'] is {counts['indexed']} but the shards hold {num_rows}")
    table_entries = [file_entry(path, out_dir) for path in sorted(paths)]
    manifest = IndexManifest(
        format_version=FORMAT_VERSION,
        version=version,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        encoder_id=encoder_id,
        encoder_spec=dict(encoder_spec),
        dim=dim,
        counts={**counts, "indexed": num_rows},
        # Each shard records its own parameters; this is shard 0's, for readers of one value.
        scann_params=shards[0]["scann_params"],
        shards=shards,
        files=sorted(table_entries + index_entries, key=lambda e: e["path"]),
        joint_index=joint_index,
        sharding={"assignment": SHARD_ASSIGNMENT, "num_shards": num_shards},
        lineage=full_build_lineage(version, num_rows),
    )
    write_manifest(out_dir, manifest)
    return manifest
