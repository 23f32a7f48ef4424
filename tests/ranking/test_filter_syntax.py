"""The filter language: parsing, its errors, its normal form, and masks against an oracle.

The oracle is a row-by-row Python evaluator with SQL's three-valued logic (``_truth``); random
filters over rows with missing values check the vectorised masks against it.
"""

from __future__ import annotations

import datetime as dt
import operator

import numpy as np
import pyarrow as pa
import pytest

from ranking.filter_syntax import (
    MAX_DEPTH,
    MAX_FILTER_CHARS,
    MAX_TERMS,
    FilterError,
    parse_filter,
)

FIELDS = {"site": "string", "width": "int", "score": "float", "nsfw": "bool",
          "taken": "timestamp", "tags": "string_list", "caption": "string",
          "image.width": "int"}  # fmt: skip
UTC = dt.UTC
ROWS = [
    {"site": "flickr", "width": 800, "score": 0.5, "nsfw": False,
     "taken": dt.datetime(2020, 1, 1, tzinfo=UTC), "tags": ["dog", "grass"], "caption": "A Dog"},
    {"site": "coco", "width": 640, "score": None, "nsfw": True,
     "taken": dt.datetime(2021, 6, 1, tzinfo=UTC), "tags": ["cat"], "caption": "a cat"},
    {"site": None, "width": 1024, "score": 0.9, "nsfw": None, "taken": None, "tags": None,
     "caption": None},
    {"site": 'say "hi"', "width": None, "score": 0.1, "nsfw": False,
     "taken": dt.datetime(2019, 12, 31, 23, tzinfo=UTC), "tags": [], "caption": "dogs"},
]  # fmt: skip
TAG_TYPE = pa.list_(pa.struct([("label", pa.string()), ("score", pa.float32())]))


def struct_tags(rows: list[dict]) -> pa.Array:
    return pa.array(
        [None if r["tags"] is None else [{"label": t, "score": 1.0} for t in r["tags"]]
         for r in rows],
        TAG_TYPE,
    )  # fmt: skip


def columns(rows: list[dict] = ROWS, tags_as_structs: bool = False) -> dict:
    out = {
        "site": pa.array([r["site"] for r in rows], pa.string()),
        "width": pa.array([r["width"] for r in rows], pa.int64()),
        "score": pa.array([r["score"] for r in rows], pa.float64()),
        "nsfw": pa.array([r["nsfw"] for r in rows], pa.bool_()),
        "taken": pa.array([r["taken"] for r in rows], pa.timestamp("us", tz="UTC")),
        "caption": pa.chunked_array([pa.array([r["caption"] for r in rows], pa.string())]),
        "image.width": pa.array([100 * (i + 1) for i in range(len(rows))], pa.int32()),
    }
    if tags_as_structs:
        out["tags"] = struct_tags(rows)
    else:
        out["tags"] = pa.array([r["tags"] for r in rows], pa.list_(pa.string()))
    return out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('site = "flickr"', [True, False, False, False]),
        ("site != 'flickr'", [False, True, False, True]),  # null site: not true
        ("site <> 'flickr'", [False, True, False, True]),
        ('site == "flickr"', [True, False, False, False]),
        ('site < "d"', [False, True, False, False]),  # code-point order
        ("width >= 800", [True, False, True, False]),
        ("width >= 800.0", [True, False, True, False]),  # a whole float is an int
        ("width IN (640, 1024)", [False, True, True, False]),
        ("width IN (1024, 640, 640)", [False, True, True, False]),
        ("NOT width IN (640, 1024)", [True, False, False, False]),  # null width stays out
        ("width NOT IN (640, 1024)", [True, False, False, False]),
        ('tags HAS "dog"', [True, False, False, False]),
        ('tags NOT HAS "dog"', [False, True, False, True]),  # null list: unknown
        ('tags has "Dog"', [False, False, False, False]),  # labels match exactly
        ('caption CONTAINS "dog"', [True, False, False, True]),  # case-insensitive
        ('caption NOT CONTAINS "DOG"', [False, True, False, False]),
        ("score IS NULL", [False, True, False, False]),
        ("score IS NOT NULL AND score > 0.2", [True, False, True, False]),
        ("score > .2", [True, False, True, False]),
        ("score < 1", [True, False, True, True]),  # an int literal on a float field
        ("nsfw = false", [True, False, False, True]),
        ("nsfw != TRUE", [True, False, False, True]),
        ('taken < "2020-01-01"', [False, False, False, True]),
        ('taken < "2020-01-01T00:30:00+01:00"', [False, False, False, True]),  # 23:30 UTC
        ('taken >= "2020-01-01T00:00:00Z" and taken < "2021-01-01"', [True, False, False, False]),
        ('taken IN ("2020-01-01", "2021-06-01T02:00:00+02:00")', [True, True, False, False]),
        ('site = "a" OR width < 700 AND nsfw = true', [False, True, False, False]),
        ('(site = "flickr" OR site = "coco") AND NOT nsfw = true', [True, False, False, False]),
        ("NOT score > 0.3", [False, False, False, True]),  # SQL: NOT of null is not true
        ("score > 0.3 OR NOT score > 0.3", [True, False, True, True]),  # nor is this
        ('width > 900 OR site = "flickr"', [True, False, True, False]),  # true OR null: true
        ('NOT (width > 900 AND site = "x")', [True, True, False, True]),  # false AND null
        ("NOT NOT width = 800", [True, False, False, False]),
        ('site = "say \\"hi\\""', [False, False, False, True]),
        ("site = 'say \"hi\"'", [False, False, False, True]),
        ("image.width > 250", [False, False, True, True]),
        ("image.width < 5000000000", [True, True, True, True]),  # past int32: still compared
    ],
)
@pytest.mark.parametrize("tags_as_structs", [False, True])
def test_masks(text, expected, tags_as_structs):
    mask = parse_filter(text, FIELDS).mask(columns(tags_as_structs=tags_as_structs))
    assert mask.dtype == bool and mask.tolist() == expected


@pytest.mark.parametrize(
    ("text", "message", "at"),
    [
        ("", "empty filter at 1", 1),
        ("   ", "empty filter at 1", 1),
        ('sight = "x"', "unknown field 'sight' at 1 (fields: caption, image.width, nsfw", 1),
        ("width >= ", "expected a value after '>=' at 10", 10),
        ('site = "a" AND width >= AND', "expected a value after '>=' at 25 (got 'AND')", 25),
        ("width IN (1,)", "expected a value after ',' at 13", 13),
        ('width >= "big"', 'width is int: "big" does not fit at 10', 10),
        ("width = 800.5", "width is int: 800.5 is not a whole number at 9", 9),
        ("width = 99999999999999999999", "outside 64 bits", 9),
        ("score > 1e999", "not a finite number", 9),
        ("site = flickr", "site is string: flickr does not fit at 8 (strings are quoted)", 8),
        ("site = NULL", "use site IS NULL", 8),
        ("nsfw = 1", "nsfw is bool", 8),
        ("taken > 5", "taken is timestamp", 9),
        ('site HAS "x"', "HAS needs a list field; site is string at 6", 6),
        ('tags = "dog"', "tags is a list", 6),
        ('tags IN ("dog")', "tags is a list", 6),
        ('width CONTAINS "1"', "CONTAINS needs a text field", 7),
        ("caption CONTAINS 3", "expected a quoted string after CONTAINS", 18),
        ("nsfw < true", "cannot be compared", 6),
        ('site = "open', "unterminated string at 8", 8),
        ("site = 'it\\'s", "unterminated string at 8", 8),
        ('site = "a\\qb"', "unknown escape '\\q' in a string at 10", 10),
        ('site = "a" site', "unexpected 'site' at 12 (expected AND, OR or the end)", 12),
        ('(site = "a"', "expected ')' after a parenthesised filter", 12),
        ('site = "a")', "unexpected ')' at 11", 11),
        ("width ~ 3", "unexpected '~'", 7),
        ("width ! 3", "unexpected '!'", 7),
        ("width IS 3", "expected NULL after IS", 10),
        ("width NOT = 3", "expected IN, HAS or CONTAINS after width NOT", 11),
        ('taken < "last week"', "not an ISO-8601 date", 9),
        ("AND width = 1", "expected a field name", 1),
        ("width", "expected an operator", 6),
        ("width = 1 AND", "expected a field name, got the end of the filter at 14", 14),
    ],
)
def test_errors_name_the_problem_and_where(text, message, at):
    with pytest.raises(FilterError) as error:
        parse_filter(text, FIELDS)
    assert message in str(error.value)
    assert error.value.at == at and str(error.value).count(" at ") >= 1
    assert isinstance(error.value, ValueError) and "\n" not in str(error.value)


def test_an_unknown_field_lists_a_bounded_number_of_names():
    many = {f"field_{i:03d}": "int" for i in range(100)}
    with pytest.raises(FilterError) as error:
        parse_filter("nope = 1", many)
    assert str(error.value).endswith(", ...)") and "field_019" in str(error.value)
    assert "field_020" not in str(error.value)


def test_a_declared_type_outside_field_types_is_refused():
    with pytest.raises(ValueError, match="type must be one of"):
        parse_filter("a = 1", {"a": "integer"})


def test_hostile_filters_are_bounded():
    with pytest.raises(FilterError, match="longer than") as error:
        parse_filter("width = 1 OR " * 200, FIELDS)
    assert error.value.at == MAX_FILTER_CHARS + 1
    many = " OR ".join(["width = 1"] * (MAX_TERMS + 1))
    assert len(many) <= MAX_FILTER_CHARS
    with pytest.raises(FilterError, match=f"more than {MAX_TERMS}"):
        parse_filter(many, FIELDS)
    parse_filter(" OR ".join(["width = 1"] * MAX_TERMS), FIELDS)
    with pytest.raises(FilterError, match="nested deeper"):
        parse_filter("(" * 40 + "width = 1" + ")" * 40, FIELDS)
    with pytest.raises(FilterError, match="nested deeper"):
        parse_filter("NOT " * 200 + "width = 1", FIELDS)
    nested = "(" * MAX_DEPTH + "width = 800" + ")" * MAX_DEPTH
    assert parse_filter(nested, FIELDS).mask(columns()).tolist() == [True, False, False, False]


def test_the_normal_form_is_a_stable_key():
    a = parse_filter('width=1   and   site="x"', FIELDS)
    b = parse_filter("site = 'x' AND width = 1 and site = \"x\"", FIELDS)
    assert str(a) == str(b) == 'site = "x" AND width = 1' and a == b
    assert a.fields == {"site", "width"}
    nested = parse_filter('(nsfw = true OR (site = "b" OR site = "a")) AND width > 1', FIELDS)
    assert str(nested) == '(nsfw = TRUE OR site = "a" OR site = "b") AND width > 1'
    moment = parse_filter('taken < "2020-01-01T01:00:00+01:00"', FIELDS)
    assert str(moment) == 'taken < "2020-01-01T00:00:00Z"'
    assert moment == parse_filter("taken < '2020-01-01'", FIELDS)
    assert str(parse_filter("width IN (3, 1, 2, 1)", FIELDS)) == "width IN (1, 2, 3)"
    assert str(parse_filter("width NOT IN (1)", FIELDS)) == "NOT width IN (1)"
    assert str(parse_filter('NOT (site = "a" OR width = 1)', FIELDS)) == (
        'NOT (site = "a" OR width = 1)'
    )
    escaped = parse_filter("site = 'a\\\\b\\n\"c'", FIELDS)
    assert str(escaped) == 'site = "a\\\\b\\n\\"c"'
    assert parse_filter(str(escaped), FIELDS) == escaped


def test_mask_refuses_columns_that_contradict_the_filter():
    parsed = parse_filter("width > 1 AND site = 'a'", FIELDS)
    with pytest.raises(ValueError, match="no column 'site'"):
        parsed.mask({"width": pa.array([1, 2])})
    with pytest.raises(ValueError, match="differ in length"):
        parsed.mask({"width": pa.array([1, 2]), "site": pa.array(["a"])})
    with pytest.raises(ValueError, match="column 'width' is string, which is not a int field"):
        parsed.mask({"width": pa.array(["1"]), "site": pa.array(["a"])})
    with pytest.raises(ValueError, match="not a string_list field"):
        parse_filter('tags HAS "a"', FIELDS).mask({"tags": pa.array([[1]])})


def test_mask_reads_only_the_fields_it_names():
    class Lazy(dict):
        def __getitem__(self, name):
            if name != "width":
                raise AssertionError(f"read {name}")
            return pa.array([1, 5, None])

        def __contains__(self, name):
            return True

    assert parse_filter("width > 2", FIELDS).mask(Lazy()).tolist() == [False, True, False]


def _two_chunks(column: pa.Array | pa.ChunkedArray, at: int) -> pa.ChunkedArray:
    whole = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return pa.chunked_array([whole[:at], whole[at:]])


def test_column_shapes_arrow_tables_hold():
    # Chunked and sliced columns (a table read from several files), other Arrow types that
    # carry the same field types, and a column that is entirely null.
    rows = ROWS * 3
    full = columns(rows, tags_as_structs=True)
    chunked = {name: _two_chunks(column, 5) for name, column in full.items()}
    sliced = {name: column.slice(4) for name, column in full.items()}
    text = 'tags HAS "dog" OR (site IN ("coco") AND taken > "2021-01-01") OR width IS NULL'
    parsed = parse_filter(text, FIELDS)
    expected = parsed.mask(full)
    assert expected.tolist() == [True, True, False, True] * 3
    assert parsed.mask(chunked).tolist() == expected.tolist()
    assert parsed.mask(sliced).tolist() == expected.tolist()[4:]
    others = {
        "site": pa.array([r["site"] for r in ROWS], pa.large_string()),
        "width": pa.array([r["width"] for r in ROWS], pa.int16()),
        "taken": pa.array([r["taken"] for r in ROWS], pa.timestamp("s", tz="UTC")),
        "tags": pa.array([r["tags"] for r in ROWS], pa.large_list(pa.string())),
    }
    assert parsed.mask(others).tolist() == [True, True, False, True]
    naive = {"taken": pa.array([dt.datetime(2020, 1, 1), None], pa.timestamp("ms"))}
    assert parse_filter('taken >= "2020-01-01"', FIELDS).mask(naive).tolist() == [True, False]
    dates = {"taken": pa.array([dt.date(2020, 1, 1), dt.date(2019, 1, 1)], pa.date32())}
    assert parse_filter('taken < "2019-06-01"', FIELDS).mask(dates).tolist() == [False, True]
    empty = {"site": pa.nulls(3)}
    assert parse_filter('site = "a"', FIELDS).mask(empty).tolist() == [False] * 3
    assert parse_filter("site IS NULL", FIELDS).mask(empty).tolist() == [True] * 3
    assert parse_filter('site = "a"', FIELDS).mask({"site": pa.array([], pa.string())}).size == 0


# --- random filters against a row-by-row oracle with three-valued logic ---

_OPS = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
        ">": operator.gt, ">=": operator.ge}  # fmt: skip


def _truth(spec, row):
    """True / False / None (unknown) of a filter spec on one row, as SQL's WHERE sees it."""
    kind = spec[0]
    if kind in ("and", "or"):
        parts = [_truth(s, row) for s in spec[1]]
        decisive = kind == "or"  # True decides an OR, False an AND
        if decisive in parts:
            return decisive
        return None if None in parts else not decisive
    if kind == "not":
        inner = _truth(spec[1], row)
        return None if inner is None else not inner
    field, op, literal = spec[1], spec[2], spec[3]
    value = row[field]
    if op == "null":
        return value is None
    if value is None:
        return None
    if op == "in":
        return value in literal
    if op == "has":
        return literal in value
    if op == "contains":
        return literal.lower() in value.lower()
    return _OPS[op](value, literal)


def _text(spec) -> str:
    kind = spec[0]
    if kind in ("and", "or"):
        return "(" + f" {kind.upper()} ".join(_text(s) for s in spec[1]) + ")"
    if kind == "not":
        return f"NOT {_text(spec[1])}"
    field, op, literal = spec[1], spec[2], spec[3]

    def lit(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, dt.datetime):
            return f'"{v.date().isoformat()}"'
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return repr(v)

    if op == "null":
        return f"{field} IS NULL"
    if op == "in":
        return f"{field} IN ({', '.join(lit(v) for v in literal)})"
    return f"{field} {op.upper()} {lit(literal)}"


SITES = ["flickr", "coco", 'say "hi"', "a\\b"]
DAYS = [dt.datetime(2019 + y, m, 1, tzinfo=UTC) for y in range(3) for m in (1, 7)]


def _random_rows(rng, n):
    def maybe(value):
        return None if rng.random() < 0.2 else value

    return [
        {
            "site": maybe(str(rng.choice(SITES))),
            "width": maybe(int(rng.integers(0, 10)) * 100),
            "score": maybe(float(rng.integers(0, 5)) / 4),
            "nsfw": maybe(bool(rng.random() < 0.5)),
            "taken": maybe(DAYS[rng.integers(len(DAYS))]),
            "tags": maybe([str(t) for t in rng.choice(["dog", "cat", "sky"], rng.integers(0, 3))]),
            "caption": maybe(str(rng.choice(["A Dog", "cats", "DOGS and cats", ""]))),
        }
        for _ in range(n)
    ]


def _random_spec(rng, depth=0):
    if depth < 3 and rng.random() < 0.5:
        kind = str(rng.choice(["and", "or", "not"]))
        if kind == "not":
            return ("not", _random_spec(rng, depth + 1))
        return (kind, [_random_spec(rng, depth + 1) for _ in range(rng.integers(2, 4))])
    field = str(rng.choice(["site", "width", "score", "nsfw", "taken", "tags", "caption"]))
    if rng.random() < 0.1:
        return ("cmp", field, "null", None)
    if field == "tags":
        return ("cmp", field, "has", str(rng.choice(["dog", "cat", "sky", "cow"])))
    if field == "caption":
        return ("cmp", field, "contains", str(rng.choice(["dog", "CAT", "and", "x"])))
    values = {"site": SITES, "width": [0, 300, 500, 900], "score": [0.0, 0.25, 0.5, 1.0],
              "nsfw": [True, False], "taken": DAYS}[field]  # fmt: skip
    ops = ["=", "!="] if field == "nsfw" else list(_OPS)
    if rng.random() < 0.2:
        picked = rng.choice(len(values), size=2, replace=False)
        return ("cmp", field, "in", [values[i] for i in picked])
    return ("cmp", field, str(rng.choice(ops)), values[rng.integers(len(values))])


def test_random_filters_match_a_row_by_row_oracle():
    rng = np.random.default_rng(0)
    rows = _random_rows(rng, 300)
    cols = columns(rows, tags_as_structs=True)
    plain_tags = {**cols, "tags": pa.array([r["tags"] for r in rows], pa.list_(pa.string()))}
    checked = 0
    for _ in range(300):
        spec = _random_spec(rng)
        text = _text(spec)
        parsed = parse_filter(text, FIELDS)
        expected = [_truth(spec, row) is True for row in rows]
        assert parsed.mask(cols).tolist() == expected, text
        assert parsed.mask(plain_tags).tolist() == expected, text
        again = parse_filter(str(parsed), FIELDS)  # the normal form means the same
        assert again == parsed and str(again) == str(parsed), text
        checked += any(expected) and not all(expected)
    assert checked > 100  # most filters split the rows, so the check has teeth


def test_has_reads_lists_whatever_their_layout():
    # A null list may be backed by values (Arrow allows it): they are not its labels.
    offsets = pa.array([0, 1, 3, 4], pa.int32())
    values = pa.array(["dog", "dog", "cat", "cow"])
    backed = pa.ListArray.from_arrays(offsets, values, mask=pa.array([False, True, False]))
    has = parse_filter('tags HAS "dog"', FIELDS)
    assert has.mask({"tags": backed}).tolist() == [True, False, False]
    not_cat = parse_filter('tags NOT HAS "cat"', FIELDS)
    assert not_cat.mask({"tags": backed}).tolist() == [True, False, True]  # the null: unknown
    assert has.mask({"tags": backed.slice(1)}).tolist() == [False, False]
    tags = struct_tags(ROWS * 2)
    assert has.mask({"tags": tags.slice(3, 3)}).tolist() == [False, True, False]
