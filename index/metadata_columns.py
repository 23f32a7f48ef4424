"""Typed metadata columns: manifest columns the index job stores typed, so searches can filter.

Declared with ``--metadata_columns "site:string,taken:timestamp,width:int"`` (or inferred from
a Parquet manifest's own schema), they are written into the embedding table as one struct
column, ``attributes`` (``attributes.site``, ``attributes.taken``, ... in DuckDB or BigQuery),
next to the ``metadata`` JSON column, which keeps every extra column as before. A struct and
not top-level columns: a manifest column may share a name with a built-in one (``width`` is
the decoded image's width; ``attributes.width`` the manifest's).

Values are checked when the manifest row is read, so a value that does not fit its type makes
that row a dead letter with the reason, never a failed table write.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

ATTRIBUTES = "attributes"

COLUMN_TYPES = ("string", "int", "float", "bool", "timestamp")

_ARROW_TYPES = {
    "string": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
# Manifest columns that are never metadata: the image's address and id.
_RESERVED = ("uri", "id")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


@dataclasses.dataclass(frozen=True)
class MetadataColumn:
    name: str
    type: str  # one of COLUMN_TYPES

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"metadata column name {self.name!r}: letters, digits and _ (not first), "
                "at most 64 characters"
            )
        if self.name in _RESERVED:
            raise ValueError(f"{self.name!r} is the manifest's own column, not metadata")
        if self.type not in COLUMN_TYPES:
            raise ValueError(
                f"metadata column {self.name!r}: type must be one of {', '.join(COLUMN_TYPES)}, "
                f"got {self.type!r}"
            )

    @property
    def arrow_type(self) -> pa.DataType:
        return _ARROW_TYPES[self.type]

    def to_spec(self) -> str:
        return f"{self.name}:{self.type}"


def parse_metadata_columns(spec: str) -> tuple[MetadataColumn, ...]:
    """``"site:string,taken:timestamp"`` -> columns; ValueError naming the bad entry."""
    columns = []
    for entry in (part.strip() for part in spec.split(",")):
        if not entry:
            continue
        name, sep, kind = entry.partition(":")
        if not sep:
            raise ValueError(
                f"--metadata_columns entry {entry!r} needs a type: name:type, type one of "
                f"{', '.join(COLUMN_TYPES)}"
            )
        columns.append(MetadataColumn(name.strip(), kind.strip().lower()))
    names = [c.name for c in columns]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"--metadata_columns names {repeated[0]!r} twice")
    return tuple(columns)


def columns_spec(columns: Sequence[MetadataColumn]) -> str:
    return ",".join(c.to_spec() for c in columns)


def infer_from_schema(schema: pa.Schema) -> tuple[MetadataColumn, ...]:
    """The typed columns of a Parquet manifest: every column but uri/id of a scalar type."""
    columns = []
    for field in schema:
        if field.name in _RESERVED or field.name.startswith("_") or not _NAME.match(field.name):
            continue
        kind = _kind_of(field.type)
        if kind is not None:
            columns.append(MetadataColumn(field.name, kind))
    return tuple(columns)


def _kind_of(arrow_type: pa.DataType) -> str | None:
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "string"
    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_floating(arrow_type):
        return "float"
    if pa.types.is_timestamp(arrow_type) or pa.types.is_date(arrow_type):
        return "timestamp"
    return None  # lists, structs, binary: kept in the JSON metadata only


def attributes_type(columns: Sequence[MetadataColumn]) -> pa.StructType:
    return pa.struct([pa.field(c.name, c.arrow_type, nullable=True) for c in columns])


def typed_value(column: MetadataColumn, value: Any) -> Any:
    """``value`` (from CSV text, JSON or Parquet) as ``column``'s type; None stays None.

    ValueError says why a value does not fit, for the row's dead letter.
    """
    if value is None or (isinstance(value, str) and not value.strip() and column.type != "string"):
        return None
    kind = column.type
    try:
        if kind == "string":
            return value if isinstance(value, str) else str(value)
        if kind == "bool":
            return _as_bool(value)
        if kind == "int":
            return _as_int(value)
        if kind == "float":
            number = float(value)
            if not math.isfinite(number):
                raise ValueError("not a finite number")
            return number
        return parse_timestamp(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(
            f"metadata column {column.name!r} ({kind}): {str(value)[:80]!r} does not fit ({exc})"
        ) from exc


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError("expected true/false")


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("a boolean is not an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("not a whole number")
        value = int(value)
    number = int(str(value).strip()) if not isinstance(value, int) else value
    if not -(2**63) <= number < 2**63:
        raise ValueError("outside the 64-bit range")
    return number


def parse_timestamp(value: Any) -> dt.datetime:
    """An ISO-8601 date or datetime (naive means UTC), a datetime or a date -> aware UTC."""
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day)
    else:
        text = str(value).strip()
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def typed_values(columns: Sequence[MetadataColumn], metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The declared columns of one row's metadata, typed (absent columns are None)."""
    return {c.name: typed_value(c, metadata.get(c.name)) for c in columns}


def json_ready(values: Mapping[str, Any]) -> dict[str, Any]:
    """Typed values as JSON keeps them: timestamps as ISO-8601 UTC strings."""
    return {
        name: value.isoformat().replace("+00:00", "Z") if isinstance(value, dt.datetime) else value
        for name, value in values.items()
    }
