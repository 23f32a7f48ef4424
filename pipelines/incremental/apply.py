"""The in-place applier: the job's delta -> the new version, via ``index.update.update_index``.

In place, the job writes only what changed: ``OUT/delta/table`` holds the rows to upsert (new,
changed, refreshed) and ``OUT/delta/deleted*.txt`` the ids to delete. After the job
``apply_in_place`` hands both to ``update_index``, which copies the untouched table files byte
for byte, mutates the ScaNN shards with upsert/delete (or rebuilds them when
``index.update_policy.decide``, given the change counts, says so) and writes the manifest
last; then the delta folder is removed.

The other applier, for a rewrite, is no code of its own: the job wrote the whole new table to
``OUT/table`` and the index job builds the index over it as for a run without ``--previous``.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
import pyarrow.parquet as pq

from index.table import TABLE_DIR, parquet_files, parquet_rows
from index.update import UpdateRequest, UpdateResult, update_index
from pipelines.incremental.plan import ReusePlan
from storage.files import delete_tree, join_uri, list_files, open_file, read_bytes

DELTA_DIR = "delta"
DELETED_PREFIX = "deleted"


def delta_dir(out: str) -> str:
    return join_uri(out, DELTA_DIR)


def delta_table_dir(out: str) -> str:
    return join_uri(delta_dir(out), TABLE_DIR)


class WriteDeletedIds(beam.PTransform):
    """PCollection[image_id] -> ``OUT/delta/deleted-*.txt``, one id a line."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def expand(self, ids):
        return ids | beam.io.WriteToText(
            join_uri(self.folder, DELETED_PREFIX), file_name_suffix=".txt"
        )


def read_deleted_ids(folder: str) -> list[str]:
    ids: list[str] = []
    for path in list_files(folder, f"{DELETED_PREFIX}*.txt"):
        ids.extend(line for line in read_bytes(path).decode("utf-8").splitlines() if line)
    return ids


def apply_in_place(
    plan: ReusePlan,
    out: str,
    version: str,
    counts: dict[str, int],
    *,
    k: int,
    max_changed_fraction: float,
) -> UpdateResult:
    """Write the new version at ``out`` from the previous one and the job's delta.

    ``counts`` are the job's tallies; ``indexed`` must match what the update leaves indexed
    (``update_index`` checks it before writing anything). The delta folder is removed after.
    """
    if not plan.in_place:
        raise ValueError(f"{plan.previous_version} is rewritten, not updated in place")
    folder = delta_dir(out)
    new_files = [p for p in parquet_files(delta_table_dir(out)) if parquet_rows(p)]
    upserted: set[str] = set()
    for path in new_files:
        with open_file(path) as handle:
            upserted.update(pq.read_table(handle, columns=["image_id"])["image_id"].to_pylist())
    # A changed file keeps its uri and id: its row is replaced (upserted), not deleted.
    deletes = sorted(set(read_deleted_ids(folder)) - upserted)
    result = update_index(
        UpdateRequest(
            plan.index_dir,
            out,
            new_files,
            deletes,
            version,
            max_changed_fraction=max_changed_fraction,
            k=k,
            counts=counts,
        )
    )
    delete_tree(folder)
    return dataclasses.replace(
        result, upserted_ids=frozenset(upserted), deleted_ids=frozenset(deletes)
    )
