"""Metadata filters over one index version: filter text -> the searcher rows it keeps.

The fields a filter may name are the built-in columns every table has (``width``,
``height``, ``num_bytes``), the tagging and captioning columns where the index has them
(``tags``, ``caption``), and the typed manifest columns (``index.metadata_columns``: the
table's ``attributes``). A manifest column named like a built-in one wins; the built-in stays
reachable as ``image.width``. Masks are cached per filter (a page, the next page and the batch
routes ask for the same one), a few at a time: each is one byte per indexed image.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from index.metadata_columns import ATTRIBUTES
from index.near_duplicates import NEAR_DUPLICATE_GROUP
from ranking.filter_syntax import FilterError, parse_filter
from serving.details import ImageDetails
from serving.lru import LRU
from serving.query_error import QueryError

FILTER_HELP = (
    'metadata filter, e.g. site = "flickr" AND width >= 800 AND tags HAS "dog" '
    "(=, !=, <, <=, >, >=, IN (...), HAS, CONTAINS, IS [NOT] NULL, AND, OR, NOT, parentheses)"
)

_BUILT_IN = {"width": "int", "height": "int", "num_bytes": "int"}
_ARROW_KINDS = (
    (pa.types.is_boolean, "bool"),
    (pa.types.is_integer, "int"),
    (pa.types.is_floating, "float"),
    (pa.types.is_timestamp, "timestamp"),
    (pa.types.is_string, "string"),
)
_CACHED_MASKS = 16


def _kind(arrow_type: pa.DataType) -> str | None:
    return next((kind for test, kind in _ARROW_KINDS if test(arrow_type)), None)


class RowFilters:
    """The filterable columns of one version, in the searcher's row order."""

    def __init__(self, columns: Mapping[str, pa.ChunkedArray | pa.Array], types: Mapping[str, str]):
        self._columns = dict(columns)
        self._types = dict(types)
        self._masks: LRU[np.ndarray] = LRU(_CACHED_MASKS)

    @classmethod
    def from_details(
        cls,
        details: ImageDetails,
        searcher_rows: np.ndarray | None,
        groups: Mapping[str, str] | None = None,
    ) -> RowFilters:
        """From the details' table (``image_id`` order), reordered to the searcher's rows.

        ``groups`` (image id -> near-duplicate group, ``IndexBundle.near_duplicates``) adds the
        field ``near_duplicate_group``: ``= "ID"`` keeps one group, ``IS NULL`` the photos
        without a near-duplicate.
        """
        table = details.table
        if searcher_rows is not None:  # details row r is searcher row searcher_rows[r]
            order = np.empty(len(searcher_rows), np.int64)
            order[searcher_rows] = np.arange(len(searcher_rows))
            table = table.take(pa.array(order))
        columns: dict[str, pa.ChunkedArray] = {}
        types: dict[str, str] = {}
        for name, kind in _BUILT_IN.items():
            if name in table.column_names:
                columns[name] = columns[f"image.{name}"] = table[name]
                types[name] = types[f"image.{name}"] = kind
        if "tags" in table.column_names:
            columns["tags"], types["tags"] = table["tags"], "string_list"
        if "caption" in table.column_names:
            columns["caption"], types["caption"] = table["caption"], "string"
        if groups is not None:
            ids = table["image_id"].to_pylist()
            column = pa.chunked_array([pa.array([groups.get(i) for i in ids], pa.string())])
            columns[NEAR_DUPLICATE_GROUP], types[NEAR_DUPLICATE_GROUP] = column, "string"
        if ATTRIBUTES in table.column_names:
            attributes = table[ATTRIBUTES].combine_chunks()
            for index in range(attributes.type.num_fields):
                field = attributes.type.field(index)
                kind = _kind(field.type)
                if kind is not None:  # a manifest column shadows a built-in of its name
                    columns[field.name] = attributes.field(index)
                    types[field.name] = kind
        return cls(columns, types)

    def fields(self) -> dict[str, str]:
        """Field name -> type, for the page's help and error messages."""
        return dict(self._types)

    def allowed(self, text: str) -> np.ndarray:
        """The boolean mask of rows ``text`` keeps; QueryError 400 naming what is wrong."""
        try:
            parsed = parse_filter(text, self._types)
        except FilterError as exc:
            raise QueryError(400, f"bad filter: {exc}") from exc
        key = str(parsed)
        mask = self._masks.get(key)
        if mask is not None:
            return mask
        mask = np.asarray(parsed.mask(self._columns), dtype=bool)
        mask.flags.writeable = False
        self._masks.put(key, mask)
        return mask
