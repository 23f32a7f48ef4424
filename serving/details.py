"""Per-image details (uri, size, source metadata) read from an index version's Parquet table.

Read once when a version loads, so a details request or a thumbnail lookup does no file I/O.
Only the small columns are read (never the embeddings). Rows are sorted by ``image_id``, the
order ``index.table.read_embedding_table`` gives the index, so a row number here is
the row of ``ImageSearcher.vectors`` too.

Generated captions and classifier tags come from the index job's ``--captioner`` and
``--tag_head`` columns; the fields exist in every answer (``None`` and ``[]`` when the table
has no such columns) so clients can rely on the shape.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from index.manifest import IndexManifest
from index.metadata_columns import ATTRIBUTES, json_ready
from index.schema import caption_list
from storage.files import join_path, open_file

# Columns shown as image details when the table has them (older tables may lack some).
DETAIL_COLUMNS = ("width", "height", "num_bytes", "sha256", "duplicate_uris", "metadata")
# What the tagging and captioning stages add (index.schema TAGS, CAPTION, CAPTION_SCORE,
# CAPTIONS), and the typed metadata columns (index.metadata_columns ATTRIBUTES).
DESCRIPTION_COLUMNS = ("tags", "caption", "caption_score", "captions", ATTRIBUTES)


class ImageDetails:
    """``image_id`` -> its row of the table's small columns; lookups are in-memory only."""

    def __init__(self, table: pa.Table) -> None:
        if "image_id" not in table.column_names or "uri" not in table.column_names:
            raise ValueError("an embedding table needs 'image_id' and 'uri' columns")
        table = table.take(pc.sort_indices(table["image_id"]))
        self._table = table
        self._image_ids: list[str] = table["image_id"].to_pylist()
        self._uris: list[str] = table["uri"].to_pylist()
        self._columns = [c for c in DETAIL_COLUMNS if c in table.column_names]
        self._descriptions = [c for c in DESCRIPTION_COLUMNS if c in table.column_names]

    @classmethod
    def load(cls, out_dir: str, manifest: IndexManifest) -> ImageDetails:
        """Read the small columns of every table file the manifest lists."""
        paths = sorted(join_path(out_dir, e["path"]) for e in manifest.files_under("table"))
        if not paths:
            raise ValueError(f"index version {manifest.version} lists no table files")
        parts = []
        for path in paths:
            with open_file(path) as handle:
                parquet = pq.ParquetFile(handle)
                wanted = ["image_id", "uri", *DETAIL_COLUMNS, *DESCRIPTION_COLUMNS]
                columns = [c for c in wanted if c in parquet.schema_arrow.names]
                parts.append(parquet.read(columns=columns).replace_schema_metadata(None))
        return cls(pa.concat_tables(parts))

    def __len__(self) -> int:
        return len(self._image_ids)

    def searcher_rows(self, hit_id_of_row, samples: int = 4096) -> np.ndarray | None:
        """Map this table's rows to a searcher's rows; None when the order is the same.

        ``hit_id_of_row(r)`` is the image id of the searcher's row ``r``. Today both sort by
        image id, which ``samples`` evenly spaced rows confirm cheaply (a full pass is a second
        of GIL-holding Python per million rows, taken from requests during a hot reload); any
        difference there builds the full mapping, so explanations stay right if a searcher
        ever orders rows otherwise (shards concatenated, say).
        """
        n = len(self._image_ids)
        probe = np.unique(np.linspace(0, n - 1, min(n, samples), dtype=np.int64))
        if all(hit_id_of_row(int(r)) == self._image_ids[r] for r in probe):
            return None
        mapping = np.empty(n, np.int64)
        for r in range(n):
            row = self.row_of(hit_id_of_row(r))
            if row is None:
                raise ValueError(f"the searcher holds {hit_id_of_row(r)!r}, the table does not")
            mapping[row] = r
        return mapping

    def row_of(self, image_id: str) -> int | None:
        """The row of ``image_id`` (binary search over the sorted ids), or None."""
        row = bisect.bisect_left(self._image_ids, image_id)
        if row < len(self._image_ids) and self._image_ids[row] == image_id:
            return row
        return None

    def uri_of(self, image_id: str) -> str | None:
        row = self.row_of(image_id)
        return None if row is None else self._uris[row]

    def describe(self, image_id: str) -> dict[str, Any] | None:
        """The JSON details of one image, or None when it is not in this version."""
        row = self.row_of(image_id)
        if row is None:
            return None
        values = {c: self._table[c][row].as_py() for c in self._columns}
        described = {c: self._table[c][row].as_py() for c in self._descriptions}
        metadata = values.pop("metadata", None)
        try:
            source_metadata = json.loads(metadata) if metadata else {}
        except json.JSONDecodeError:
            source_metadata = {"raw": metadata}
        return {
            "image_id": image_id,
            "uri": self._uris[row],
            **values,
            "metadata": json_ready(described.get(ATTRIBUTES) or {}),
            "source_metadata": source_metadata,
            "caption": described.get("caption"),
            "caption_score": described.get("caption_score"),
            # Every beam the index kept, best first; an older table's one caption.
            "captions": caption_list(described) or [],
            "tags": described.get("tags") or [],
        }

    def image_ids(self) -> Sequence[str]:
        return self._image_ids

    @property
    def table(self) -> pa.Table:
        """The small columns, one row per image in ``image_id`` order (read-only use)."""
        return self._table
