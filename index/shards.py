"""An index shard's files: where they live, which rows they hold, and how they are published.

A shard is a folder ``OUT/index/shard-NNNNN`` (or ``joint-shard-NNNNN``) holding a ScaNN
searcher and its ``ids.parquet`` (row -> image_id, uri). This module assigns ids to shards
(``shard_of_ids``), writes and reads the ids file, uploads a built searcher (``publish_shard``),
downloads one for ScaNN to load (``download_shard``) and removes a previous index.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from index.manifest import MANIFEST_NAME, IndexManifest, file_entry
from index.scann_index import (
    load_searcher,
    save_searcher,
)
from storage.files import (
    copy_file,
    create_file,
    delete_file,
    delete_tree,
    is_local,
    join_path,
    open_file,
    relative_path,
)

logger = logging.getLogger(__name__)

INDEX_DIR = "index"

IDS_FILE = "ids.parquet"

_CHUNK_BYTES = 4 * 2**20

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
    with open_file(path) as handle:
        table = pq.read_table(handle, columns=["row", "image_id", "uri"])
    rows = table["row"].to_numpy()
    if not np.array_equal(rows, np.arange(len(rows))):
        raise ValueError(f"{path}: the row column is not 0..{len(rows) - 1} in order")
    return table["image_id"].to_pylist(), table["uri"].to_pylist()


def remove_previous_index(out_dir: str) -> None:
    """Delete ``OUT/manifest.json`` then ``OUT/index``, leaving the table alone.

    The manifest goes first so that no reader trusts a half-deleted index.
    """
    manifest_path = join_path(out_dir, MANIFEST_NAME)
    if delete_file(manifest_path):
        logger.info("removed previous manifest %s", manifest_path)
    index_path = join_path(out_dir, INDEX_DIR)
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
        create_file(destination) as target,
    ):
        while chunk := source.read(_CHUNK_BYTES):
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
    shard_dir = join_path(out_dir, shard_rel)
    entries = []
    if is_local(shard_dir):
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
            destination = join_path(shard_dir, name)
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


def load_shard(
    out_dir: str, manifest: IndexManifest, shard: dict
) -> tuple[Any, list[str], list[str]]:
    """One shard of the manifest -> its ScaNN searcher, image ids and uris (row order).

    ValueError when the searcher, the ids file and the manifest's count disagree.
    """
    index_dir = join_path(out_dir, shard["index_dir"])
    if is_local(index_dir):
        searcher = load_searcher(index_dir)
    else:
        # ScaNN reads everything into memory while loading, so the copy can go right after.
        with tempfile.TemporaryDirectory(prefix="imgsearch-shard-") as local:
            download_shard(out_dir, manifest.files, shard["index_dir"], local)
            searcher = load_searcher(local)
    image_ids, uris = read_ids(join_path(out_dir, shard["ids_file"]))
    if not searcher.size() == len(image_ids) == shard["count"]:
        raise ValueError(
            f"shard {shard['index_dir']} holds {searcher.size()} vectors and "
            f"{len(image_ids)} ids, manifest says {shard['count']}"
        )
    return searcher, image_ids, uris
