"""The metadata filter language: ``site = "flickr" AND width >= 800 AND tags HAS "dog"``.

``parse_filter(text, fields)`` is a pure function (a tokenizer and a recursive-descent parser)
that checks every name and value against the fields' types, so a bad filter is one clear
``FilterError`` naming the problem and its 1-based character position, before any row is
looked at. ``Filter.mask(columns)`` then evaluates it over whole columns with
``pyarrow.compute``.

Grammar (keywords case-insensitive, field names not; NOT binds tighter than AND, AND tighter
than OR)::

    expr   := term (OR term)*          term := factor (AND factor)*
    factor := NOT factor | "(" expr ")" | cmp
    cmp    := field (= | != | < | <= | > | >=) value       ("==" and "<>" read as = and !=)
            | field [NOT] IN "(" value ("," value)* ")"
            | field [NOT] HAS string                        (a list field holds the label)
            | field [NOT] CONTAINS string                   (substring, any case)
            | field IS [NOT] NULL
    value  := "double" or 'single' quoted string (escapes \\\\ \\" \\' \\n \\t \\r)
            | number | TRUE | FALSE

Field types (``FIELD_TYPES``): string, int, float, bool, timestamp (compared with an ISO-8601
date or datetime string, naive meaning UTC, as the index job reads them) and string_list
(``tags``: ``list<string>`` or the table's ``list<struct<label, score>>``, matched on the
label). Ordering (< <= > >=) applies to string (code-point order), int, float and timestamp.

Nulls follow SQL's WHERE (three-valued logic): a comparison, IN, HAS or CONTAINS on a missing
value is unknown, and so is its ``NOT``; AND and OR are Kleene's (``false AND unknown`` is
false, ``true OR unknown`` is true); a row is kept only where the whole filter is true. So
``NOT rating > 3`` keeps the rows rated at most 3, not the rows without a rating, and
``rating > 3 OR NOT rating > 3`` drops those too; ``IS NULL`` is the way to find them.

``str(Filter)`` is a normal form (keywords upper case, strings double-quoted, timestamps in
UTC, AND/OR operands flattened, deduplicated and sorted) that parses back to an equal filter:
the same filter written two ways logs and caches under one key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import math
import re
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FIELD_TYPES = ("string", "int", "float", "bool", "timestamp", "string_list")
MAX_FILTER_CHARS = 1000
MAX_TERMS = 64  # comparisons in one filter: each is a pass over a column
MAX_DEPTH = 16  # nested parentheses / NOTs: bounds the parser's recursion

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<number>-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)
      | (?P<op><=|>=|!=|<>|==|=|<|>|\(|\)|,)
      | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
      | (?P<open>["'])
      | (?P<other>\S)
    )""",
    re.VERBOSE | re.DOTALL,
)
_KEYWORDS = {"and", "or", "not", "in", "has", "contains", "is", "null", "true", "false"}
_ALIASES = {"==": "=", "<>": "!="}
_COMPARE = {"=": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal,
            ">": pc.greater, ">=": pc.greater_equal}  # fmt: skip
_ORDERED = {"int", "float", "timestamp", "string"}
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r"}
_SHOWN = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_INT64 = (-(2**63), 2**63)
_LISTED_FIELDS = 20  # an unknown field's message lists at most this many known ones


class FilterError(ValueError):
    """A filter that cannot be used: the message names what is wrong and where.

    ``at`` is the 1-based character position the message ends with (``at 1`` is the first
    character; one past the end for something missing at the end).
    """

    def __init__(self, reason: str, at: int, hint: str = "") -> None:
        super().__init__(f"{reason} at {at}{hint}")
        self.reason, self.at = reason, at


@dataclasses.dataclass(frozen=True)
class _Token:
    kind: str  # string, number, op, word, keyword, end
    text: str
    value: object
    at: int  # 1-based character position

    def shown(self) -> str:
        return "the end of the filter" if self.kind == "end" else repr(self.text)


def _tokens(text: str) -> list[_Token]:
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:  # only whitespace is left
            break
        kind = match.lastgroup
        raw = match.group(kind)
        at = match.start(kind) + 1
        if kind == "open":
            raise FilterError("unterminated string", at)
        if kind == "other":
            raise FilterError(f"unexpected {raw!r}", at)
        value: object = raw
        if kind == "string":
            value = _unescape(raw, at)
        elif kind == "number":
            value = float(raw) if any(c in raw for c in ".eE") else int(raw)
        elif kind == "op":
            raw = value = _ALIASES.get(raw, raw)
        elif kind == "word" and raw.lower() in _KEYWORDS:
            kind, value = "keyword", raw.lower()
        tokens.append(_Token(kind, raw, value, at))
        position = match.end()
    tokens.append(_Token("end", "", None, len(text) + 1))
    return tokens


def _unescape(quoted: str, at: int) -> str:
    """A quoted string token's text: quotes off, backslash escapes resolved."""
    out, i, body = [], 0, quoted[1:-1]
    while i < len(body):
        char = body[i]
        if char == "\\":
            escaped = body[i + 1]  # the token's pattern puts a character after every "\"
            if escaped not in _ESCAPES:
                raise FilterError(f"unknown escape '\\{escaped}' in a string", at + 1 + i)
            out.append(_ESCAPES[escaped])
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


# The parsed tree: comparisons, and AND / OR / NOT over them. Frozen, so equal filters compare
# and hash equal.
@dataclasses.dataclass(frozen=True)
class _Compare:
    field: str
    op: str  # = != < <= > >= in has contains null notnull
    values: tuple

    def __str__(self) -> str:
        if self.op in ("null", "notnull"):
            return f"{self.field} IS {'NOT ' if self.op == 'notnull' else ''}NULL"
        shown = [_show(v) for v in self.values]
        if self.op == "in":
            return f"{self.field} IN ({', '.join(shown)})"
        return f"{self.field} {self.op.upper()} {shown[0]}"


@dataclasses.dataclass(frozen=True)
class _Bool:
    op: str  # and, or, not
    parts: tuple

    def __str__(self) -> str:
        if self.op == "not":
            inner = self.parts[0]
            return f"NOT ({inner})" if isinstance(inner, _Bool) else f"NOT {inner}"
        # AND binds tighter than OR: only an OR inside an AND needs parentheses.
        return f" {self.op.upper()} ".join(
            f"({p})" if self.op == "and" and isinstance(p, _Bool) and p.op == "or" else str(p)
            for p in self.parts
        )


def _joined(op: str, parts: list) -> object:
    """``parts`` under one AND/OR: nested ones of the same op flattened, repeats dropped, the
    rest sorted by their text (AND and OR are commutative and idempotent, with nulls too)."""
    flat: dict[str, object] = {}
    for part in parts:
        for piece in part.parts if isinstance(part, _Bool) and part.op == op else (part,):
            flat.setdefault(str(piece), piece)
    if len(flat) == 1:
        return next(iter(flat.values()))
    return _Bool(op, tuple(flat[key] for key in sorted(flat)))


def _show(value: object) -> str:
    if isinstance(value, str):
        return '"' + "".join(_SHOWN.get(c, c) for c in value) + '"'
    if isinstance(value, dt.datetime):
        return '"' + value.isoformat().replace("+00:00", "Z") + '"'
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    return repr(value)


class _Parser:
    def __init__(self, text: str, fields: Mapping[str, str]) -> None:
        self.tokens, self.fields, self.i, self.terms = _tokens(text), fields, 0, 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def is_keyword(self, *words: str) -> bool:
        return self.token.kind == "keyword" and self.token.value in words

    def is_op(self, op: str) -> bool:
        return self.token.kind == "op" and self.token.text == op

    def expect_op(self, op: str, after: str) -> None:
        if not self.is_op(op):
            raise FilterError(
                f"expected {op!r} after {after}, got {self.token.shown()}", self.token.at
            )
        self.take()

    def parse(self):
        if self.token.kind == "end":
            raise FilterError("empty filter", 1)
        tree = self.expr(0)
        if self.token.kind != "end":
            raise FilterError(
                f"unexpected {self.token.text!r}", self.token.at, " (expected AND, OR or the end)"
            )
        return tree

    def expr(self, depth: int):
        parts = [self.term(depth)]
        while self.is_keyword("or"):
            self.take()
            parts.append(self.term(depth))
        return _joined("or", parts)

    def term(self, depth: int):
        parts = [self.factor(depth)]
        while self.is_keyword("and"):
            self.take()
            parts.append(self.factor(depth))
        return _joined("and", parts)

    def factor(self, depth: int):
        if depth > MAX_DEPTH:
            raise FilterError(f"filter nested deeper than {MAX_DEPTH}", self.token.at)
        if self.is_keyword("not"):
            self.take()
            return _Bool("not", (self.factor(depth + 1),))
        if self.is_op("("):
            self.take()
            inner = self.expr(depth + 1)
            self.expect_op(")", "a parenthesised filter")
            return inner
        return self.compare()

    def compare(self):
        token = self.take()
        if token.kind != "word":
            raise FilterError(f"expected a field name, got {token.shown()}", token.at)
        name = token.text
        if name not in self.fields:
            known = sorted(self.fields)
            listed = ", ".join(known[:_LISTED_FIELDS]) + (
                ", ..." if len(known) > _LISTED_FIELDS else ""
            )
            raise FilterError(f"unknown field {name!r}", token.at, f" (fields: {listed or 'none'})")
        kind = self.fields[name]
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise FilterError(f"more than {MAX_TERMS} comparisons in one filter", token.at)
        op_token = self.take()
        if op_token.kind == "op" and op_token.text in _COMPARE:
            op = op_token.text
            if kind == "string_list":
                raise FilterError(f'{name} is a list: use {name} HAS "..."', op_token.at)
            if op not in ("=", "!=") and kind not in _ORDERED:
                raise FilterError(f"{name} ({kind}) cannot be compared with {op}", op_token.at)
            return _Compare(name, op, (self.value(name, kind, op),))
        negate = op_token.kind == "keyword" and op_token.value == "not"
        if negate:  # field NOT IN / NOT HAS / NOT CONTAINS
            op_token = self.take()
            if op_token.kind != "keyword" or op_token.value not in ("in", "has", "contains"):
                raise FilterError(
                    f"expected IN, HAS or CONTAINS after {name} NOT, got {op_token.shown()}",
                    op_token.at,
                )
        if op_token.kind == "keyword" and op_token.value == "in":
            if kind == "string_list":
                raise FilterError(f'{name} is a list: use {name} HAS "..."', op_token.at)
            self.expect_op("(", "IN")
            values = [self.value(name, kind, "IN")]
            while self.is_op(","):
                self.take()
                values.append(self.value(name, kind, ","))
            self.expect_op(")", "the IN list")
            found = _Compare(name, "in", tuple(sorted(set(values), key=_sort_key)))
            return _Bool("not", (found,)) if negate else found
        if op_token.kind == "keyword" and op_token.value in ("has", "contains"):
            op = str(op_token.value)
            if op == "has" and kind != "string_list":
                raise FilterError(f"HAS needs a list field; {name} is {kind}", op_token.at)
            if op == "contains" and kind != "string":
                raise FilterError(f"CONTAINS needs a text field; {name} is {kind}", op_token.at)
            value = self.take()
            if value.kind != "string":
                raise FilterError(
                    f"expected a quoted string after {op.upper()}, got {value.shown()}", value.at
                )
            found = _Compare(name, op, (value.value,))
            return _Bool("not", (found,)) if negate else found
        if op_token.kind == "keyword" and op_token.value == "is":
            negate = self.is_keyword("not")
            if negate:
                self.take()
            null = self.take()
            if not (null.kind == "keyword" and null.value == "null"):
                raise FilterError(f"expected NULL after IS, got {null.shown()}", null.at)
            return _Compare(name, "notnull" if negate else "null", ())
        raise FilterError(
            f"expected an operator (=, !=, <, <=, >, >=, IN, HAS, CONTAINS, IS) after {name}, "
            f"got {op_token.shown()}",
            op_token.at,
        )

    def value(self, name: str, kind: str, after: str) -> object:
        """The literal after ``after``, as ``kind``'s Python value (checked here, not later)."""
        token = self.take()
        if token.kind in ("end", "op") or (
            token.kind == "keyword" and token.value not in ("true", "false", "null")
        ):
            got = "" if token.kind == "end" else f" (got {token.text!r})"
            raise FilterError(f"expected a value after {after!r}", token.at, got)
        if token.kind == "keyword" and token.value == "null":
            raise FilterError(f"a comparison with NULL is never true: use {name} IS NULL", token.at)
        quote = " (strings are quoted)" if token.kind == "word" else ""
        mismatch = FilterError(f"{name} is {kind}: {token.text} does not fit", token.at, quote)
        if kind == "string":
            if token.kind != "string":
                raise mismatch
            return token.value
        if kind == "bool":
            if token.kind != "keyword" or token.value not in ("true", "false"):
                raise mismatch
            return token.value == "true"
        if kind in ("int", "float"):
            if token.kind != "number":
                raise mismatch
            number = token.value
            if not math.isfinite(number):
                raise FilterError(f"{token.text} is not a finite number", token.at)
            if kind == "float":
                return float(number)
            if isinstance(number, float):  # 800.0 and 8e2 are whole; 800.5 is not an int
                if not number.is_integer():
                    raise FilterError(
                        f"{name} is int: {token.text} is not a whole number", token.at
                    )
                number = int(number)
            if not _INT64[0] <= number < _INT64[1]:
                raise FilterError(f"{name} is int: {token.text} is outside 64 bits", token.at)
            return number
        if kind == "timestamp":
            if token.kind != "string":
                raise mismatch
            return _timestamp(name, token)
        raise mismatch


def _timestamp(name: str, token: _Token) -> dt.datetime:
    """An ISO-8601 date or datetime, naive meaning UTC -> an aware UTC datetime."""
    try:
        moment = dt.datetime.fromisoformat(str(token.value).strip().replace("Z", "+00:00"))
    except ValueError:
        raise FilterError(
            f"{name} is a timestamp: {token.text} is not an ISO-8601 date or datetime", token.at
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def _sort_key(value: object) -> tuple:
    return (str(type(value)), value)


@dataclasses.dataclass(frozen=True)
class Filter:
    """A parsed filter; ``str()`` is its normal form (a cache key), ``mask`` evaluates it."""

    tree: object
    fields: frozenset[str]  # the field names it reads
    types: tuple[tuple[str, str], ...] = ()  # (name, field type) of those fields, sorted

    def __str__(self) -> str:
        return str(self.tree)

    def mask(self, columns: Mapping[str, pa.Array | pa.ChunkedArray]) -> np.ndarray:
        """``bool (N,)``: the rows where the filter is true (not unknown; see the module notes).

        ``columns`` maps each of ``fields`` to an Arrow array or chunked array (anything else
        goes through ``pa.array``), all of one length N; only those fields are read, so a lazy
        mapping loads no more than it must. ValueError for a missing column, columns of
        different lengths, or a column whose Arrow type does not fit its field's type.
        """
        kinds = dict(self.types)
        used = {name: _column(name, kinds.get(name), columns) for name in sorted(self.fields)}
        lengths = {name: len(column) for name, column in used.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"filter columns differ in length: {lengths}")
        result = pc.fill_null(_evaluate(self.tree, used), False)
        return np.asarray(result.to_numpy(zero_copy_only=False), dtype=bool)


def parse_filter(text: str, fields: Mapping[str, str]) -> Filter:
    """Filter text -> ``Filter``, checked against ``fields`` (name -> one of FIELD_TYPES).

    FilterError (a ValueError) for anything the filter cannot mean: an empty filter, one over
    ``MAX_FILTER_CHARS`` characters, ``MAX_TERMS`` comparisons or ``MAX_DEPTH`` levels, an
    unknown field, an operator or value that does not fit the field's type, an unterminated
    string, a missing or trailing token. ValueError for a field declared with another type.
    """
    unknown = sorted(name for name, kind in fields.items() if kind not in FIELD_TYPES)
    if unknown:
        raise ValueError(f"field {unknown[0]!r}: type must be one of {', '.join(FIELD_TYPES)}")
    if len(text) > MAX_FILTER_CHARS:
        raise FilterError(
            f"filter longer than {MAX_FILTER_CHARS} characters ({len(text)})", MAX_FILTER_CHARS + 1
        )
    tree = _Parser(text, fields).parse()
    names = frozenset(_names(tree))
    return Filter(tree, names, tuple((name, fields[name]) for name in sorted(names)))


def _names(tree) -> set[str]:
    if isinstance(tree, _Compare):
        return {tree.field}
    return set().union(*(_names(part) for part in tree.parts))


# --- evaluation over Arrow columns ---

_KIND_TESTS = {
    "string": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
    "int": pa.types.is_integer,
    "float": lambda t: pa.types.is_floating(t) or pa.types.is_integer(t),
    "bool": pa.types.is_boolean,
    "timestamp": lambda t: pa.types.is_timestamp(t) or pa.types.is_date(t),
    "string_list": lambda t: (
        (pa.types.is_list(t) or pa.types.is_large_list(t))
        and (
            pa.types.is_string(t.value_type)
            or (
                pa.types.is_struct(t.value_type)
                and t.value_type.get_field_index("label") >= 0
                and pa.types.is_string(t.value_type.field("label").type)
            )
        )
    ),
}


def _column(name: str, kind: str | None, columns: Mapping) -> pa.Array | pa.ChunkedArray:
    """Column ``name`` checked against its field type; timestamps as microseconds."""
    if name not in columns:
        raise ValueError(f"no column {name!r} to filter on")
    column = columns[name]
    if not isinstance(column, pa.Array | pa.ChunkedArray):
        column = pa.array(column)
    if pa.types.is_null(column.type) or kind is None:
        return column  # all missing: every comparison is unknown; or a Filter built by hand
    if not _KIND_TESTS[kind](column.type):
        raise ValueError(f"column {name!r} is {column.type}, which is not a {kind} field")
    if kind == "timestamp":
        tz = column.type.tz if pa.types.is_timestamp(column.type) else None
        if column.type != pa.timestamp("us", tz=tz):  # dates, seconds, nanoseconds
            column = pc.cast(column, pa.timestamp("us", tz=tz), safe=False)
    return column


def _evaluate(tree, columns):
    """Three-valued (true / false / null) as SQL, so NOT of a missing value stays not true."""
    if isinstance(tree, _Bool):
        parts = [_evaluate(part, columns) for part in tree.parts]
        if tree.op == "not":
            return pc.invert(parts[0])
        return functools.reduce(pc.and_kleene if tree.op == "and" else pc.or_kleene, parts)
    column = columns[tree.field]
    if tree.op == "null":
        return pc.is_null(column)
    if tree.op == "notnull":
        return pc.is_valid(column)
    if pa.types.is_null(column.type):
        return pa.nulls(len(column), pa.bool_())
    if tree.op == "has":
        return _has(column, tree.values[0])
    if tree.op == "contains":
        return pc.match_substring(column, tree.values[0], ignore_case=True)
    if tree.op == "in":
        scalars = [_scalar(v, column.type) for v in tree.values]
        value_set = pa.array([s.as_py() for s in scalars], type=scalars[0].type)
        found = pc.is_in(column, value_set=value_set)
        # is_in says false for a missing value; SQL says unknown (so NOT IN leaves it out too).
        return pc.if_else(pc.is_valid(column), found, pa.scalar(None, pa.bool_()))
    return _COMPARE[tree.op](column, _scalar(tree.values[0], column.type))


def _scalar(value: object, column_type: pa.DataType) -> pa.Scalar:
    """``value`` as a scalar the column compares with: numbers keep their own type (an int
    column of 32 bits still compares with 2**40), timestamps take the column's zone."""
    if isinstance(value, dt.datetime):
        tz = column_type.tz
        return pa.scalar(value if tz else value.replace(tzinfo=None), pa.timestamp("us", tz=tz))
    return pa.scalar(value)


def _has(column, label: str):
    """Whether each list (of strings, or of ``{label, score}`` tags) holds ``label``."""
    if isinstance(column, pa.ChunkedArray):
        return pa.chunked_array([_has(chunk, label) for chunk in column.chunks], pa.bool_())
    # Offsets and values, not flatten(): flatten drops the values behind null lists, and then
    # the offsets would no longer index it. Counting hits between offsets (a cumulative sum)
    # costs a third of what mapping each value to its list does.
    offsets = column.offsets.to_numpy()
    values = column.values.slice(offsets[0], offsets[-1] - offsets[0])
    if pa.types.is_struct(values.type):
        values = pc.struct_field(values, "label")
    hit = pc.fill_null(pc.equal(values, label), False).to_numpy(zero_copy_only=False)
    hits_before = np.concatenate([[0], np.cumsum(hit, dtype=np.int64)])
    ends = offsets - offsets[0]
    held = hits_before[ends[1:]] > hits_before[ends[:-1]]
    return pa.array(held, mask=column.is_null().to_numpy(zero_copy_only=False))
