"""Typed metadata columns: declaring them, inferring them, and typing manifest values."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from index.metadata_columns import (
    MetadataColumn,
    infer_from_schema,
    json_ready,
    parse_metadata_columns,
    typed_value,
)
from pipelines.corpus import ref_from_manifest_row
from pipelines.types import DeadLetter


def test_declared_columns_parse_and_bad_declarations_say_why():
    columns = parse_metadata_columns("site:string, taken:TIMESTAMP,width:int,")
    assert [c.to_spec() for c in columns] == ["site:string", "taken:timestamp", "width:int"]
    for spec, message in [
        ("site", "needs a type"),
        ("site:text", "type must be one of"),
        ("a:int,a:float", "twice"),
        ("uri:string", "manifest's own column"),
        ("9lives:int", "letters, digits"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_metadata_columns(spec)


def test_a_parquet_manifest_schema_gives_its_scalar_columns():
    schema = pa.schema([
        ("uri", pa.string()), ("id", pa.string()), ("site", pa.large_string()),
        ("views", pa.int32()), ("score", pa.float32()), ("nsfw", pa.bool_()),
        ("taken", pa.timestamp("ms")), ("day", pa.date32()), ("labels", pa.list_(pa.string())),
    ])  # fmt: skip
    assert [c.to_spec() for c in infer_from_schema(schema)] == [
        "site:string", "views:int", "score:float", "nsfw:bool", "taken:timestamp",
        "day:timestamp",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "raw", "typed"),
    [
        ("int", "42", 42), ("int", 7.0, 7), ("float", "0.5", 0.5), ("bool", "yes", True),
        ("bool", False, False), ("string", 12, "12"), ("int", "", None), ("float", None, None),
        ("timestamp", "2020-05-01", dt.datetime(2020, 5, 1, tzinfo=dt.UTC)),
        ("timestamp", "2020-05-01T10:00:00+02:00", dt.datetime(2020, 5, 1, 8, tzinfo=dt.UTC)),
        ("timestamp", "2020-05-01T10:00:00Z", dt.datetime(2020, 5, 1, 10, tzinfo=dt.UTC)),
    ],
)  # fmt: skip
def test_values_are_typed(kind, raw, typed):
    assert typed_value(MetadataColumn("c", kind), raw) == typed


@pytest.mark.parametrize(
    ("kind", "raw"),
    [("int", "4.5"), ("int", True), ("int", 2**70), ("float", "nan"), ("bool", "maybe"),
     ("timestamp", "yesterday"), ("int", "12abc")],
)  # fmt: skip
def test_values_that_do_not_fit_name_the_column(kind, raw):
    with pytest.raises(ValueError, match=f"metadata column 'c' \\({kind}\\)"):
        typed_value(MetadataColumn("c", kind), raw)


def test_a_manifest_row_with_a_bad_typed_value_is_a_dead_letter():
    columns = parse_metadata_columns("taken:timestamp,rating:int")
    good = ref_from_manifest_row(
        {"uri": "/a.jpg", "taken": "2021-03-04", "rating": "5", "note": "x", "_line": 1},
        "/m.jsonl", columns,
    )  # fmt: skip
    assert not isinstance(good, DeadLetter)
    assert (
        '"taken": "2021-03-04T00:00:00Z"' in good.metadata_json
        and '"rating": 5' in good.metadata_json
    )
    bad = ref_from_manifest_row(
        {"uri": "/b.jpg", "rating": "five", "_line": 2}, "/m.jsonl", columns
    )
    assert isinstance(bad, DeadLetter) and bad.stage == "read"
    assert "rating" in bad.reason and "five" in bad.reason


def test_json_ready_writes_timestamps_as_utc_strings():
    moment = dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert json_ready({"t": moment, "n": 1}) == {"t": "2020-01-02T03:04:05Z", "n": 1}
