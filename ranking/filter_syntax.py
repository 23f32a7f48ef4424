"""The metadata filter language: ``site = "flickr" AND width >= 800 AND tags HAS "dog"``.

``parse_filter(text, fields)`` is a pure function (a tokenizer and a recursive-descent parser)
that checks every name and value against the fields' types, so a bad filter is one clear
``FilterError`` naming the problem and its position, before any row is looked at.
``Filter.mask(columns)`` then evaluates it over whole columns with ``pyarrow.compute``.

Grammar (keywords case-insensitive; NOT binds tighter than AND, AND tighter than OR)::

    expr  := term (OR term)*          term := factor (AND factor)*
    factor := NOT factor | "(" expr ")" | cmp
    cmp   := field (= | != | < | <= | > | >=) value | field IN "(" value ("," value)* ")"
           | field HAS string | field CONTAINS string | field IS [NOT] NULL

Nulls follow SQL's WHERE: a comparison with a missing value is not true, and neither is its
``NOT`` (``NOT rating > 3`` keeps rows that have a rating of at most 3, not rows without one);
``IS NULL`` finds those.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FIELD_TYPES = ("string", "int", "float", "bool", "timestamp", "string_list")
MAX_FILTER_CHARS = 1000
MAX_TERMS = 64  # comparisons in one filter: each is a pass over a column
MAX_DEPTH = 16  # nested parentheses / NOTs

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
      | (?P<op><=|>=|!=|=|<|>|\(|\)|,)
      | (?P<word>[A-Za-z_][A-Za-z0-9_.]*)
      | (?P<open>["'])
      | (?P<other>\S)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "has", "contains", "is", "null", "true", "false"}
_COMPARE = {"=": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal,
            ">": pc.greater, ">=": pc.greater_equal}  # fmt: skip
_ORDERED = {"int", "float", "timestamp", "string"}


class FilterError(ValueError):
    """A filter that cannot be used; the message names what is wrong and where (1-based)."""


@dataclasses.dataclass(frozen=True)
class _Token:
    kind: str  # string, number, op, word, keyword, end
    text: str
    value: object
    at: int  # 1-based character position


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
            raise FilterError(f"unterminated string at {at}")
        if kind == "other":
            raise FilterError(f"unexpected {raw!r} at {at}")
        value: object = raw
        if kind == "string":
            value = re.sub(r"\\(.)", r"\1", raw[1:-1])
        elif kind == "number":
            value = float(raw) if any(c in raw for c in ".eE") else int(raw)
        elif kind == "word" and raw.lower() in _KEYWORDS:
            kind, value = "keyword", raw.lower()
        tokens.append(_Token(kind, raw, value, at))
        position = match.end()
    tokens.append(_Token("end", "", None, len(text) + 1))
    return tokens


# The parsed tree: comparisons, and AND / OR / NOT over them.
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
            return f"NOT ({self.parts[0]})"
        return "(" + f" {self.op.upper()} ".join(str(p) for p in self.parts) + ")"


def _show(value: object) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dt.datetime):
        return '"' + value.isoformat() + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
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

    def expect_op(self, op: str, after: str) -> None:
        if self.token.kind != "op" or self.token.text != op:
            raise FilterError(f"expected {op!r} after {after} at {self.token.at}")
        self.take()

    def parse(self):
        if self.token.kind == "end":
            raise FilterError("empty filter")
        tree = self.expr(0)
        if self.token.kind != "end":
            raise FilterError(f"unexpected {self.token.text!r} at {self.token.at}")
        return tree

    def expr(self, depth: int):
        parts = [self.term(depth)]
        while self.is_keyword("or"):
            self.take()
            parts.append(self.term(depth))
        return parts[0] if len(parts) == 1 else _Bool("or", tuple(parts))

    def term(self, depth: int):
        parts = [self.factor(depth)]
        while self.is_keyword("and"):
            self.take()
            parts.append(self.factor(depth))
        return parts[0] if len(parts) == 1 else _Bool("and", tuple(parts))

    def factor(self, depth: int):
        if depth > MAX_DEPTH:
            raise FilterError(f"filter nested deeper than {MAX_DEPTH} at {self.token.at}")
        if self.is_keyword("not"):
            self.take()
            return _Bool("not", (self.factor(depth + 1),))
        if self.token.kind == "op" and self.token.text == "(":
            self.take()
            inner = self.expr(depth + 1)
            self.expect_op(")", "a parenthesised filter")
            return inner
        return self.compare()

    def compare(self) -> _Compare:
        token = self.take()
        if token.kind != "word":
            what = "the end" if token.kind == "end" else repr(token.text)
            raise FilterError(f"expected a field name, got {what} at {token.at}")
        name = token.text
        if name not in self.fields:
            known = ", ".join(sorted(self.fields)) or "none"
            raise FilterError(f"unknown field {name!r} at {token.at} (fields: {known})")
        kind = self.fields[name]
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise FilterError(f"more than {MAX_TERMS} comparisons in one filter")
        op_token = self.take()
        if op_token.kind == "op" and op_token.text in _COMPARE:
            op = op_token.text
            if kind == "string_list":
                raise FilterError(f'{name} is a list: use {name} HAS "..." (at {op_token.at})')
            if op not in ("=", "!=") and kind not in _ORDERED:
                raise FilterError(f"{name} ({kind}) cannot be compared with {op} at {op_token.at}")
            return _Compare(name, op, (self.value(name, kind, op),))
        if op_token.kind == "keyword" and op_token.value == "in":
            if kind == "string_list":
                raise FilterError(f'{name} is a list: use {name} HAS "..." (at {op_token.at})')
            self.expect_op("(", "IN")
            values = [self.value(name, kind, "IN")]
            while self.token.kind == "op" and self.token.text == ",":
                self.take()
                values.append(self.value(name, kind, "IN"))
            self.expect_op(")", "the IN list")
            return _Compare(name, "in", tuple(values))
        if op_token.kind == "keyword" and op_token.value in ("has", "contains"):
            op = str(op_token.value)
            if op == "has" and kind != "string_list":
                raise FilterError(f"HAS needs a list field; {name} is {kind} (at {op_token.at})")
            if op == "contains" and kind != "string":
                raise FilterError(
                    f"CONTAINS needs a text field; {name} is {kind} (at {op_token.at})"
                )
            value = self.take()
            if value.kind != "string":
                raise FilterError(f"expected a quoted string after {op.upper()} at {value.at}")
            return _Compare(name, op, (value.value,))
        if op_token.kind == "keyword" and op_token.value == "is":
            negate = self.is_keyword("not")
            if negate:
                self.take()
            null = self.take()
            if not (null.kind == "keyword" and null.value == "null"):
                raise FilterError(f"expected NULL after IS at {null.at}")
            return _Compare(name, "notnull" if negate else "null", ())
        what = "the end" if op_token.kind == "end" else repr(op_token.text)
        raise FilterError(
            f"expected an operator (=, !=, <, <=, >, >=, IN, HAS, CONTAINS, IS) after {name}, "
            f"got {what} at {op_token.at}"
        )

    def value(self, name: str, kind: str, after: str) -> object:
        token = self.take()
        if token.kind == "end" or (token.kind == "op" and token.text in "(),"):
            raise FilterError(f"expected a value after {after!r} at {token.at}")
        mismatch = FilterError(f"{name} is {kind}: {token.text} does not fit (at {token.at})")
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
            return float(token.value) if kind == "float" else token.value
        if kind == "timestamp":
            if token.kind != "string":
                raise mismatch
            try:
                moment = dt.datetime.fromisoformat(str(token.value).replace("Z", "+00:00"))
            except ValueError:
                raise FilterError(
                    f"{name} is a timestamp: {token.text} is not an ISO-8601 date (at {token.at})"
                ) from None
            return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
        raise mismatch


@dataclasses.dataclass(frozen=True)
class Filter:
    """A parsed filter; ``str()`` is its normal form (a cache key), ``mask`` evaluates it."""

    tree: object
    fields: frozenset[str]

    def __str__(self) -> str:
        return str(self.tree)

    def mask(self, columns: Mapping[str, pa.Array | pa.ChunkedArray]) -> np.ndarray:
        """The rows the filter keeps, as a boolean array over the columns' rows."""
        result = _evaluate(self.tree, columns)
        return np.asarray(pc.fill_null(result, False).to_numpy(zero_copy_only=False), dtype=bool)


def parse_filter(text: str, fields: Mapping[str, str]) -> Filter:
    """Filter text -> ``Filter``, checked against ``fields`` (name -> one of FIELD_TYPES)."""
    if len(text) > MAX_FILTER_CHARS:
        raise FilterError(f"filter longer than {MAX_FILTER_CHARS} characters")
    parser = _Parser(text, fields)
    tree = parser.parse()
    return Filter(tree, frozenset(_names(tree)))


def _names(tree) -> set[str]:
    if isinstance(tree, _Compare):
        return {tree.field}
    return set().union(*(_names(part) for part in tree.parts))


def _evaluate(tree, columns):
    """Three-valued (true / false / null) as SQL, so NOT of a missing value stays not true."""
    if isinstance(tree, _Bool):
        parts = [_evaluate(part, columns) for part in tree.parts]
        if tree.op == "not":
            return pc.invert(parts[0])
        combine = pc.and_kleene if tree.op == "and" else pc.or_kleene
        result = parts[0]
        for part in parts[1:]:
            result = combine(result, part)
        return result
    column = columns[tree.field]
    if tree.op == "null":
        return pc.is_null(column)
    if tree.op == "notnull":
        return pc.is_valid(column)
    if tree.op == "has":
        return _has(column, tree.values[0])
    if tree.op == "contains":
        return pc.match_substring(column, tree.values[0], ignore_case=True)
    values = [_scalar(v, column.type) for v in tree.values]
    if tree.op == "in":
        found = pc.is_in(column, value_set=pa.array(values, type=column.type))
        return pc.if_else(pc.is_null(column), pa.scalar(None, pa.bool_()), found)
    return _COMPARE[tree.op](column, values[0])


def _scalar(value: object, arrow_type: pa.DataType) -> pa.Scalar:
    if pa.types.is_timestamp(arrow_type) and isinstance(value, dt.datetime):
        if arrow_type.tz is None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return pa.scalar(value, type=arrow_type)


def _has(column, label: str):
    """Whether a list column (of strings, or of ``{label, score}`` tags) holds ``label``."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    values = column.flatten()
    if pa.types.is_struct(values.type):
        values = values.field("label")
    hit = pc.fill_null(pc.equal(values, label), False).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
    mask = np.zeros(len(column), dtype=bool)
    mask[parents[hit]] = True
    result = pa.array(mask)
    return pc.if_else(pc.is_null(column), pa.scalar(None, pa.bool_()), result)
