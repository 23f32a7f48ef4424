"""Optional columns of an embedding table (tags, captions), read in the table's row order.

``read_embedding_table`` reads what every table has (ids, vectors); the columns added by
``--tag_head`` and ``--captioner`` are read here, only by those that use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow.parquet as pq

from pipelines.build_index import table_files


def table_has_columns(out_dir: str, columns: Sequence[str]) -> bool:
    """Whether every Parquet file of ``OUT/table`` has all ``columns``."""
    files = table_files(out_dir)
    return bool(files) and all(
        set(columns) <= set(pq.ParquetFile(path).schema_arrow.names) for path in files
    )


def read_table_columns(
    out_dir: str, columns: Sequence[str], image_ids: Sequence[str]
) -> dict[str, list[Any]]:
    """``{column: values}`` with values in ``image_ids`` order (the ``EmbeddingTable``'s rows).

    KeyError naming the column when a file lacks it; ValueError when an id is missing.
    """
    by_id: dict[str, dict[str, Any]] = {}
    for path in table_files(out_dir):
        names = pq.ParquetFile(path).schema_arrow.names
        missing = [c for c in columns if c not in names]
        if missing:
            raise KeyError(f"{path} has no {missing} column(s): index with the flag that adds it")
        for row in pq.read_table(path, columns=["image_id", *columns]).to_pylist():
            by_id[row["image_id"]] = row
    lost = [i for i in image_ids if i not in by_id]
    if lost:
        raise ValueError(f"{len(lost)} table rows missing from the columns read, e.g. {lost[:3]}")
    return {column: [by_id[i][column] for i in image_ids] for column in columns}
