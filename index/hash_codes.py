"""Semantic-hashing codes in an index version: the table column, the model beside it, the
manifest entry, and the Hamming index serving searches.

With ``--hash_model``, the index job writes, per table row, ``hash_code`` (the packed bits of
the row's ``embedding``, ``index.hamming.HashEncoder.encode``) and ``hash_model`` (the model's
``name/version``), and copies the model itself into the version::

    OUT/hash_model/config.json    the HashEncoder's config + the model id
    OUT/hash_model/weights.npz    its projection (and an autoencoder's MLP branch)

so a served version codes its queries with exactly the model that coded its rows, with no
models directory at serving time. ``with_hash_model`` lists those files (checksummed like every
other) and a ``hashing`` entry in the manifest; ``HammingIndex.load`` reads them back.

Codes are computed from the vector as readers decode it (``stored_vector``: after the
table's float16/int8 compaction), so a row re-read from an earlier version by an incremental
run codes to the same bits it had.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from index.hamming import CodeColumns, HashEncoder, hamming_top_r
from index.hamming import rerank as rerank_rows
from index.manifest import IndexManifest, file_entry
from index.schema import HASH_CODE, HASH_MODEL, compact_row, expanded_row
from index.stored_vectors import StoredVectors
from index.table import read_table_columns
from storage.files import (
    copy_file,
    delete_tree,
    exists,
    join_uri,
    open_file,
    read_arrays,
    read_json,
    write_arrays,
    write_json,
)

HASH_MODEL_DIR = "hash_model"

_CONFIG = "config.json"
_WEIGHTS = "weights.npz"

# Candidates the Hamming scan hands to exact re-ranking when the server is not told otherwise:
# recall@10 0.994-0.9998 at 128-256 bits on 1M real-embedding-grown vectors, 0.90 at 64 bits
# (benchmarks/results/hashing.md).
DEFAULT_RERANK = 1000


@dataclasses.dataclass(frozen=True, eq=False)
class HashCodes:
    """The hashing model an index job codes its rows with, pinned at launch."""

    encoder: HashEncoder
    model_id: str  # name/version in the models directory

    @property
    def bits(self) -> int:
        return self.encoder.bits

    def coded_row(self, row: dict[str, Any], storage: str) -> dict[str, Any]:
        """``row`` (float32 ``embedding``) with its ``hash_code`` and ``hash_model``."""
        code = self.encoder.encode(stored_vector(row, storage)[np.newaxis])[0]
        return {**row, HASH_CODE: code.tobytes(), HASH_MODEL: self.model_id}


def stored_vector(row: dict[str, Any], storage: str) -> np.ndarray:
    """The unit ``(dim,)`` float32 vector a reader of the table gets for ``row`` once it is
    stored as ``storage`` (``index.table`` renormalises float16 and int8 rows)."""
    vector = np.asarray(expanded_row(compact_row(row, storage))["embedding"], dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def hash_model_dir(out_dir: str) -> str:
    return join_uri(out_dir, HASH_MODEL_DIR)


def write_hash_model(out_dir: str, codes: HashCodes) -> None:
    """Copy the model into ``OUT/hash_model`` (replacing whatever an earlier run left)."""
    folder = hash_model_dir(out_dir)
    delete_tree(folder)
    write_arrays(join_uri(folder, _WEIGHTS), codes.encoder.weights())
    write_json(join_uri(folder, _CONFIG), {**codes.encoder.config(), "model": codes.model_id})


def with_hash_model(out_dir: str, manifest: IndexManifest) -> IndexManifest:
    """``manifest`` listing ``OUT/hash_model``'s files and its ``hashing`` entry; without that
    folder, the manifest with neither (a version indexed without ``--hash_model``)."""
    config_path = join_uri(hash_model_dir(out_dir), _CONFIG)
    if not exists(config_path):
        return dataclasses.replace(manifest.with_files_under(HASH_MODEL_DIR, []), hashing=None)
    config = read_json(config_path)
    name, _, version = str(config["model"]).partition("/")
    entry = {
        "model": name,
        "model_version": version,
        "method": config["method"],
        "bits": int(config["bits"]),
        "dim": int(config["dim"]),
        "encoder_id": config.get("encoder_id", ""),
        "dir": HASH_MODEL_DIR,
    }
    if entry["dim"] != manifest.dim:
        raise ValueError(
            f"the hash model {config['model']} codes {entry['dim']}-d vectors, the index "
            f"version holds {manifest.dim}-d ones"
        )
    files = [file_entry(join_uri(hash_model_dir(out_dir), n), out_dir) for n in (_CONFIG, _WEIGHTS)]
    return dataclasses.replace(manifest.with_files_under(HASH_MODEL_DIR, files), hashing=entry)


def check_coded_rows(manifest: IndexManifest, paths: Sequence[str]) -> None:
    """ValueError unless the table files ``paths`` (rows to add to ``manifest``'s version) were
    coded by its hash model, or carry no codes when it has none."""
    wanted = None
    if manifest.hashing is not None:
        wanted = f"{manifest.hashing['model']}/{manifest.hashing['model_version']}"
    for path in paths:
        with open_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            has_codes = HASH_MODEL in parquet.schema_arrow.names
            found = (
                set(parquet.read(columns=[HASH_MODEL])[HASH_MODEL].to_pylist())
                if has_codes
                else set()
            )
        if wanted is None and has_codes:
            raise ValueError(f"index version {manifest.version} stores no hash codes; {path} does")
        if wanted is not None and (not has_codes or found - {wanted}):
            raise ValueError(
                f"index version {manifest.version} stores hash codes of {wanted}; rows of "
                f"{path} need them (got {sorted(found) or 'none'})"
            )


def carry_hash_model(base_dir: str, out_dir: str, manifest: IndexManifest) -> None:
    """Copy ``base_dir``'s hash model into ``out_dir`` (an update of it) unless one is there."""
    if manifest.hashing is None or exists(join_uri(hash_model_dir(out_dir), _CONFIG)):
        return
    for name in (_CONFIG, _WEIGHTS):
        copy_file(join_uri(hash_model_dir(base_dir), name), join_uri(hash_model_dir(out_dir), name))


def read_hash_model(out_dir: str, manifest: IndexManifest) -> HashEncoder:
    """The ``HashEncoder`` a version's rows were coded with; ValueError when it has none."""
    if manifest.hashing is None:
        raise ValueError(
            f"index version {manifest.version} stores no hash codes: index it with "
            f"--hash_model (a model from `imgsearch train hashing`)"
        )
    folder = join_uri(out_dir, manifest.hashing["dir"])
    config = read_json(join_uri(folder, _CONFIG))
    return HashEncoder.from_arrays(config, read_arrays(join_uri(folder, _WEIGHTS)))


def read_codes(out_dir: str, image_ids: Sequence[str], width: int) -> np.ndarray:
    """The table's ``hash_code`` column as ``(N, width)`` uint8, rows in ``image_ids`` order."""
    values = read_table_columns(out_dir, [HASH_CODE], image_ids)[HASH_CODE]
    codes = np.frombuffer(b"".join(values), dtype=np.uint8)
    if codes.size != len(image_ids) * width:
        raise ValueError(f"hash codes of {out_dir} are not {width} bytes per row")
    return codes.reshape(len(image_ids), width)


@dataclasses.dataclass(frozen=True, eq=False)
class HammingIndex:
    """Hamming top ``rerank`` over a version's codes, then exact scores from its embeddings.

    Rows are the searcher's global rows. ``ranked`` answers like ScaNN's merged search:
    ``(rows int64 (M, depth), scores float32)``, best first, ties by the lower row, -1 / NaN
    past the rows there are; with ``allowed`` (a filter's row mask), only those rows compete
    for the Hamming top ``rerank``, so a filter is exact however selective it is.
    """

    encoder: HashEncoder
    codes: CodeColumns
    rerank: int = DEFAULT_RERANK

    @classmethod
    def load(
        cls,
        out_dir: str,
        manifest: IndexManifest,
        image_ids: Sequence[str],
        rerank: int = DEFAULT_RERANK,
    ) -> HammingIndex:
        encoder = read_hash_model(out_dir, manifest)
        codes = read_codes(out_dir, image_ids, encoder.bytes_per_code)
        return cls(encoder, CodeColumns.from_packed(codes), rerank)

    def __post_init__(self) -> None:
        if self.rerank < 1:
            raise ValueError(f"rerank must be >= 1, got {self.rerank}")

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.encoder.method,
            "bits": self.encoder.bits,
            "rerank": self.rerank,
        }

    def ranked(
        self,
        queries: np.ndarray,
        depth: int,
        embeddings: np.ndarray | StoredVectors,
        allowed: np.ndarray | None = None,
        rerank: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top ``depth`` rows of each unit query by exact dot product among its Hamming
        nearest ``max(rerank, depth)`` (of the ``allowed`` rows; ``rerank`` defaults to the
        index's). A caller that pages passes the same ``rerank`` for every depth, so that the
        top ``k`` is the prefix of the top ``k + n``."""
        keep = max(self.rerank if rerank is None else rerank, depth)
        query_codes = self.encoder.encode(queries)
        candidates, _ = hamming_top_r(self.codes, query_codes, keep, allowed)
        rows = np.full((len(queries), depth), -1, dtype=np.int64)
        scores = np.full((len(queries), depth), np.nan, dtype=np.float32)
        for i, (query, found) in enumerate(zip(queries, candidates, strict=True)):
            top, exact = rerank_rows(embeddings, query, found, depth)
            rows[i, : len(top)], scores[i, : len(top)] = top, exact
        return rows, scores
