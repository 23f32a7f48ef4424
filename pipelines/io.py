"""Writing the index job's outputs: Parquet embedding table, duplicates and dead letters.

Every output is a folder of Parquet files with an explicit pyarrow schema, written through
Beam's file sinks (temp files, then rename), so a reader never sees a half-written shard.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence

import apache_beam as beam
import pyarrow.parquet as pq

from index.hash_codes import HashCodes
from index.manifest import MANIFEST_NAME
from index.metadata_columns import ATTRIBUTES, MetadataColumn, typed_values
from index.schema import compact_row, embedding_table_schema
from index.table import parquet_files, parquet_rows
from pipelines.types import DEAD_LETTER_SCHEMA, DUPLICATE_SCHEMA
from storage.files import delete_file, delete_tree, join_uri, open_file

logger = logging.getLogger(__name__)

TABLE_PREFIX = "embeddings"
OUTPUT_FOLDERS = (
    "table", "duplicates", "dead_letters", "index", "delta", "hash_model", "sources"
)  # fmt: skip


class WriteParquet(beam.PTransform):
    """PCollection[dict] -> Parquet files ``folder/prefix-SSSSS-of-NNNNN.parquet``."""

    def __init__(self, folder: str, prefix: str, schema, num_shards: int = 0) -> None:
        super().__init__()
        self.folder, self.prefix, self.schema, self.num_shards = folder, prefix, schema, num_shards

    def expand(self, rows):
        return rows | beam.io.WriteToParquet(
            file_path_prefix=join_uri(self.folder, self.prefix),
            schema=self.schema,
            file_name_suffix=".parquet",
            num_shards=self.num_shards,
            # Embedding rows are ~5 KB: keep row groups to a few thousand rows so readers can
            # stream the table and a worker's write buffer stays small.
            row_group_buffer_size=16 * 2**20,
            record_batch_size=512,
        )


class WriteEmbeddingTable(WriteParquet):
    """PCollection[table row dict] -> ``OUT/table/embeddings-*.parquet``.

    ``storage`` (float32, float16, int8) is how the ``embedding`` column is stored
    (``index.schema.compact_row``); rows arrive as float32 either way.
    """

    def __init__(
        self,
        table_dir: str,
        dim: int,
        num_shards: int = 0,
        joint_dim: int | None = None,
        storage: str = "float32",
        tags: bool = False,
        captions: bool = False,
        attributes: Sequence[MetadataColumn] = (),
        hash_codes: HashCodes | None = None,
    ) -> None:
        schema = embedding_table_schema(
            dim,
            joint_dim,
            storage,
            tags=tags,
            captions=captions,
            attributes=attributes,
            hash_bits=hash_codes.bits if hash_codes is not None else None,
        )
        super().__init__(table_dir, TABLE_PREFIX, schema, num_shards)
        self.storage = storage
        self.attributes = tuple(attributes)
        self.hash_codes = hash_codes

    def expand(self, rows):
        if self.attributes:
            columns = self.attributes
            rows = rows | "Attributes" >> beam.Map(lambda row: with_attributes(row, columns))
        if self.hash_codes is not None:
            # Every row written, reused ones too: codes come from the stored embedding (a
            # matrix-vector product), so a changed --hash_model never re-encodes an image.
            codes, storage = self.hash_codes, self.storage
            rows = rows | "HashCodes" >> beam.Map(lambda row: codes.coded_row(row, storage))
        if self.storage != "float32":
            storage = self.storage
            rows = rows | "Compact" >> beam.Map(lambda row: compact_row(row, storage))
        return super().expand(rows)


def with_attributes(row: dict, columns: Sequence[MetadataColumn]) -> dict:
    """A table row with its typed ``attributes`` struct, from its metadata JSON.

    The JSON was checked against ``columns`` when the manifest row was read
    (``pipelines.corpus.ref_from_manifest_row``), so typing it again cannot fail here.
    """
    metadata = json.loads(row["metadata"]) if row.get("metadata") else {}
    return {**row, ATTRIBUTES: typed_values(columns, metadata)}


class WriteDeadLetters(beam.PTransform):
    """PCollection[DeadLetter] -> ``OUT/dead_letters/dead_letters-*.parquet``."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def expand(self, dead_letters):
        return (
            dead_letters
            | "ToRows" >> beam.Map(lambda d: d.to_row())
            | WriteParquet(self.folder, "dead_letters", DEAD_LETTER_SCHEMA, num_shards=1)
        )


class WriteDuplicates(beam.PTransform):
    """PCollection[DuplicateRecord] -> ``OUT/duplicates/duplicates-*.parquet``."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def expand(self, duplicates):
        return (
            duplicates
            | "ToRows" >> beam.Map(lambda d: d.to_row())
            | WriteParquet(self.folder, "duplicates", DUPLICATE_SCHEMA, num_shards=1)
        )


def count_rows(folder: str) -> int:
    """Rows in a folder of Parquet files, read from the footers only."""
    return sum(parquet_rows(path) for path in parquet_files(folder))


def dead_letter_reasons(folder: str, top: int = 10) -> list[tuple[str, int]]:
    """The most common (stage: reason) of the dead letters, for the end-of-run summary."""
    counts: Counter[str] = Counter()
    for path in parquet_files(folder):
        with open_file(path) as handle:
            table = pq.read_table(handle, columns=["stage", "reason"])
        for stage, reason in zip(
            table.column("stage").to_pylist(), table.column("reason").to_pylist(), strict=True
        ):
            counts[f"{stage}: {reason}"] += 1
    return counts.most_common(top)


def clear_previous_output(out: str) -> None:
    """Remove what an earlier run wrote to ``out``: the manifest first, so no reader trusts it.

    Only the job's own folders and manifest are touched, never anything else in ``out``.
    """
    delete_file(join_uri(out, MANIFEST_NAME))
    for folder in OUTPUT_FOLDERS:
        # A folder on local disk; on an object store, every object under the prefix.
        delete_tree(join_uri(out, folder))
