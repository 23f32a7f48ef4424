"""The filter language: parsing, its errors, and masks against a row-by-row oracle."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from ranking.filter_syntax import MAX_FILTER_CHARS, MAX_TERMS, FilterError, parse_filter

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


def columns(struct_tags: bool = False) -> dict:
    out = {
        "site": pa.array([r["site"] for r in ROWS], pa.string()),
        "width": pa.array([r["width"] for r in ROWS], pa.int64()),
        "score": pa.array([r["score"] for r in ROWS], pa.float64()),
        "nsfw": pa.array([r["nsfw"] for r in ROWS], pa.bool_()),
        "taken": pa.array([r["taken"] for r in ROWS], pa.timestamp("us", tz="UTC")),
        "caption": pa.chunked_array([pa.array([r["caption"] for r in ROWS], pa.string())]),
        "image.width": pa.array([100, 200, 300, 400], pa.int32()),
    }
    if struct_tags:
        tags = [None if r["tags"] is None else [{"label": t, "score": 1.0} for t in r["tags"]]
                for r in ROWS]  # fmt: skip
        out["tags"] = pa.array(tags, TAG_TYPE)
    else:
        out["tags"] = pa.array([r["tags"] for r in ROWS], pa.list_(pa.string()))
    return out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('site = "flickr"', [True, False, False, False]),
        ("site != 'flickr'", [False, True, False, True]),  # null site: not true
        ("width >= 800", [True, False, True, False]),
        ("width IN (640, 1024)", [False, True, True, False]),
        ("NOT width IN (640, 1024)", [True, False, False, False]),  # null width stays out
        ('tags HAS "dog"', [True, False, False, False]),
        ('caption CONTAINS "dog"', [True, False, False, True]),  # case-insensitive
        ("score IS NULL", [False, True, False, False]),
        ("score IS NOT NULL AND score > 0.2", [True, False, True, False]),
        ("nsfw = false", [True, False, False, True]),
        ('taken < "2020-01-01"', [False, False, False, True]),
        ('taken >= "2020-01-01T00:00:00Z" and taken < "2021-01-01"', [True, False, False, False]),
        ('site = "a" OR width < 700 AND nsfw = true', [False, True, False, False]),
        ('(site = "flickr" OR site = "coco") AND NOT nsfw = true', [True, False, False, False]),
        ("NOT score > 0.3", [False, False, False, True]),  # SQL: NOT of null is not true
        ('site = "say \\"hi\\""', [False, False, False, True]),
        ("image.width > 250", [False, False, True, True]),
    ],
)
@pytest.mark.parametrize("struct_tags", [False, True])
def test_masks(text, expected, struct_tags):
    mask = parse_filter(text, FIELDS).mask(columns(struct_tags))
    assert mask.dtype == bool and mask.tolist() == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty filter"),
        ("   ", "empty filter"),
        ('sight = "x"', "unknown field 'sight' at 1 (fields: caption, image.width, nsfw"),
        ("width >= ", "expected a value after '>=' at 10"),
        ('width >= "big"', "width is int"),
        ("site = flickr", "site is string"),
        ('site HAS "x"', "HAS needs a list field"),
        ('tags = "dog"', "tags is a list"),
        ('width CONTAINS "1"', "CONTAINS needs a text field"),
        ("nsfw < true", "cannot be compared"),
        ('site = "open', "unterminated string at 8"),
        ('site = "a" site', "unexpected 'site' at 12"),
        ('(site = "a"', "expected ')'"),
        ("width ~ 3", "unexpected '~'"),
        ("width IS 3", "expected NULL after IS"),
        ('taken < "last week"', "not an ISO-8601 date"),
        ("AND width = 1", "expected a field name"),
        ("width", "expected an operator"),
    ],
)
def test_errors_name_the_problem_and_where(text, message):
    with pytest.raises(FilterError) as error:
        parse_filter(text, FIELDS)
    assert message in str(error.value)


def test_hostile_filters_are_bounded():
    with pytest.raises(FilterError, match="longer than"):
        parse_filter("width = 1 OR " * 200, FIELDS)
    many = " OR ".join(["width = 1"] * (MAX_TERMS + 1))
    assert len(many) <= MAX_FILTER_CHARS
    with pytest.raises(FilterError, match=f"more than {MAX_TERMS}"):
        parse_filter(many, FIELDS)
    with pytest.raises(FilterError, match="nested deeper"):
        parse_filter("(" * 40 + "width = 1" + ")" * 40, FIELDS)


def test_the_normal_form_is_a_stable_key():
    a = parse_filter('site="x"   and   WIDTH_IS_NOT_A_FIELD = 1'.replace(
        "WIDTH_IS_NOT_A_FIELD", "width"), FIELDS)  # fmt: skip
    b = parse_filter("site = 'x' AND width = 1", FIELDS)
    assert str(a) == str(b) == '(site = "x" AND width = 1)'
    assert a.fields == {"site", "width"}


def test_random_filters_match_a_row_by_row_oracle():
    rng = np.random.default_rng(0)
    n = 500
    widths = rng.integers(100, 2000, n)
    sites = rng.choice(["a", "b", "c"], n)
    cols = {"width": pa.array(widths), "site": pa.array(sites)}
    fields = {"width": "int", "site": "string"}
    for _ in range(50):
        w1, w2 = sorted(rng.integers(100, 2000, 2))
        site = str(rng.choice(["a", "b", "c"]))
        text = f'(width >= {w1} AND width < {w2}) OR NOT site = "{site}"'
        expected = ((widths >= w1) & (widths < w2)) | (sites != site)
        assert parse_filter(text, fields).mask(cols).tolist() == expected.tolist()
