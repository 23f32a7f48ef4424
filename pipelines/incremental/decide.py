"""Which way a run over ``--previous`` goes, decided once at the edge, and the plan it runs by.

The decision itself is ``index.update_policy.decide`` (pure, in the index layer, where
``index.update.update_index`` asks it again after the job with the change counts). This module
gathers its facts about the previous version before the job: the manifest (shard count,
quantization, shard assignment, lineage) and, only when those allow an in-place update, the
previous table's footers (its schema must be the one this run writes: storage, joint, tags,
captions) and its small model-version columns (every row made by this run's encoder, joint
model, tag head and captioner versions). No embedding is read.

``build_plan`` returns the complete ``ReusePlan``: what stored rows must match, the previous
table's files, the join's bucket count and that decision.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from index.manifest import MANIFEST_NAME, IndexManifest, read_manifest
from index.publish import resolve_index
from index.schema import HASH_MODEL, JOINT_MODEL
from index.sources import source_files
from index.table import TABLE_DIR
from index.update_policy import IndexFacts, RunRequest, decide
from pipelines.incremental.plan import ReusePlan, join_buckets_for
from storage.files import exists, join_path, join_uri, open_file

logger = logging.getLogger(__name__)


def resolve_previous(previous: str) -> tuple[str, str]:
    """``(index_dir, version)`` of ``--previous``: a publish root (its current version) or an
    index output folder. FileNotFoundError when it is neither or its manifest is missing.
    """
    index_dir, version = resolve_index(previous)
    if not exists(join_uri(index_dir, MANIFEST_NAME)):
        raise FileNotFoundError(
            f"--previous {previous} resolves to {index_dir}, which has no {MANIFEST_NAME}: "
            f"only a complete version can be reused"
        )
    return index_dir, version or os.path.basename(index_dir.rstrip("/"))


def same_location(a: str, b: str) -> bool:
    """Whether two local paths or URIs name the same folder (``--previous`` vs ``--out``)."""
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def previous_table_files(index_dir: str, manifest: IndexManifest) -> list[str]:
    """The table files a version's manifest lists, as paths under ``index_dir``."""
    return [join_path(index_dir, entry["path"]) for entry in manifest.files_under(TABLE_DIR)]


def _same_columns(found: pa.Schema, wanted: pa.Schema) -> bool:
    """Same column names, order and types (nullability and metadata aside)."""
    return [(f.name, f.type) for f in found] == [(f.name, f.type) for f in wanted]


def table_mismatch(files: Sequence[str], wanted: pa.Schema, expected: dict[str, str]) -> str | None:
    """Why the rows in ``files`` are not rows this run writes, or None when they are.

    ``wanted`` is this run's table schema, ``expected`` the value every row must carry per
    model-version column. Reads footers and those small columns only, never embeddings.
    """
    if not files:
        return "the previous version lists no table files"
    for path in files:
        with open_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            if not _same_columns(parquet.schema_arrow, wanted):
                return f"{path} has other columns (storage, joint, tags, captions) than this run"
            table = parquet.read(columns=list(expected))
        for column, value in expected.items():
            if table.num_rows and not pc.all(pc.equal(table[column], value)).as_py():
                return f"rows of {path} were not all made by {column} {value}"
    return None


def build_plan(
    previous: str,
    out: str,
    *,
    encoder_id: str,
    joint_model_id: str | None,
    required: tuple[tuple[str, str], ...],
    wanted_schema: pa.Schema,
    request: RunRequest,
    hash_model_id: str | None = None,
) -> ReusePlan:
    """Resolve ``--previous`` to a complete version and plan the run over it, way included.

    ValueError when it resolves to ``out`` (the job clears ``out`` before it runs: it would
    delete the rows it means to reuse).
    """
    index_dir, version = resolve_previous(previous)
    if same_location(index_dir, out):
        raise ValueError(f"--previous resolves to --out ({out}); reuse another version")
    manifest = read_manifest(index_dir)
    files = tuple(previous_table_files(index_dir, manifest))
    decision = decide(IndexFacts.of(manifest), request)
    if decision.in_place:
        # The manifest allows it: the rows themselves must be the ones this run would make.
        expected = {"encoder": encoder_id, **dict(required)}
        if joint_model_id is not None:
            expected[JOINT_MODEL] = joint_model_id
        if hash_model_id is not None:
            expected[HASH_MODEL] = hash_model_id
        mismatch = table_mismatch(files, wanted_schema, expected)
        decision = decide(IndexFacts.of(manifest, mismatch), request)
    if decision.in_place:
        logger.info("updating %s in place: only new, changed and deleted rows", version)
    else:
        logger.info(
            "rewriting the table and rebuilding the index over %s: %s", version, decision.reason
        )
    return ReusePlan(
        index_dir=index_dir,
        previous_version=version,
        encoder_id=encoder_id,
        decision=decision,
        joint_model_id=joint_model_id,
        required=required,
        table_files=files,
        join_buckets=join_buckets_for(manifest.counts.get("indexed", 0)),
        source_files=tuple(source_files(index_dir, manifest)),
    )
