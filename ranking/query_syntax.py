"""The text query syntax: weighted terms, quoted phrases, ``+`` and ``-`` (pure, no models).

    query  := [op] term (op term)*
    op     := "+" | "-"              (an operator starts the query or follows whitespace)
    term   := [weight ":"] text | [weight ":"] '"' [weight ":"] text '"'
    weight := digits ["." digits]    (0 < weight <= MAX_WEIGHT; 1 when absent)

``"2:golden retriever" + beach - snow`` is three terms: ``("golden retriever", 2.0)``,
``("beach", 1.0)``, ``("snow", -1.0)``. A ``-`` subtracts its term (negative weight); an
operator inside a word (``t-shirt``, ``dog+cat``) is text, since only one that starts the query
or follows whitespace counts. Quotes keep ``+``/``-`` inside a term as text; the weight may
stand before the quotes or just inside them. A number and a colon at the start of a term is
always a weight (``10:30 train`` is ``("30 train", 10.0)``).

A query with none of this (``is_plain``) is one term of weight 1, the text as it was given, so
plain queries mean what they meant before the syntax existed. Malformed syntax raises
``QuerySyntaxError`` with the 0-based character position of the problem.
"""

from __future__ import annotations

import re
from typing import NamedTuple

MAX_WEIGHT = 100.0
MAX_TERMS = 12  # as many words as a plain query's explanation scores (serving.explain)

# A weight candidate: digits and dots up to a colon at the start of a term ("1.2.3:" is one,
# and refused); ``_WEIGHT_NUMBER`` is what a valid one looks like.
_WEIGHT_PREFIX = re.compile(r"(?=[0-9.]*[0-9])([0-9.]+):")
_WEIGHT_NUMBER = re.compile(r"\d+(\.\d*)?|\.\d+")
# Anything that makes a query more than plain text: a quote, an operator at a term boundary.
_SYNTAX = re.compile(r'"|(?:^|\s)[+-]')
_OPERATORS = "+-"


class QueryTerm(NamedTuple):
    """One term: its text (stripped) and its signed weight (negative: subtract it)."""

    text: str
    weight: float


class QuerySyntaxError(ValueError):
    """Malformed query syntax; ``position`` is the 0-based index of the offending character."""

    def __init__(self, reason: str, position: int) -> None:
        super().__init__(f"{reason} at position {position}")
        self.reason, self.position = reason, position


def is_plain(query: str) -> bool:
    """True when ``query`` uses none of the syntax: ``parse_query`` gives it back as one term."""
    return _SYNTAX.search(query) is None and _WEIGHT_PREFIX.match(query.lstrip()) is None


def parse_query(query: str, max_terms: int = MAX_TERMS) -> list[QueryTerm]:
    """``query`` -> its terms in order, as ``QueryTerm(text, weight)``.

    QuerySyntaxError for an empty query, an unclosed quote, a quote inside a bare term, text
    right after a closing quote, two operators in a row or one with no term after it, a bad
    weight (not a number, 0, over ``MAX_WEIGHT``), an empty term, or more than ``max_terms``.
    """
    if is_plain(query):
        if not query.strip():
            raise QuerySyntaxError("empty query", 0)
        return [QueryTerm(query.strip(), 1.0)]
    terms: list[QueryTerm] = []
    n = len(query)
    pos = _skip_spaces(query, 0)
    sign, operator_at = 1.0, None
    if pos < n and query[pos] in _OPERATORS:
        sign, operator_at = (-1.0 if query[pos] == "-" else 1.0), pos
        pos = _skip_spaces(query, pos + 1)
    while True:
        if pos == n:
            if operator_at is not None:
                raise QuerySyntaxError(f"no term after {query[operator_at]!r}", operator_at)
            break
        if query[pos] in _OPERATORS:
            raise QuerySyntaxError(f"two operators in a row ({query[pos]!r})", pos)
        if len(terms) == max_terms:
            raise QuerySyntaxError(f"more than {max_terms} terms", pos)
        text, weight, pos = _term(query, pos)
        terms.append(QueryTerm(text, sign * weight))
        pos = _skip_spaces(query, pos)
        if pos == n:
            break
        if query[pos] not in _OPERATORS:  # after a quoted term: '"a b" c'
            raise QuerySyntaxError("expected + or - between terms", pos)
        sign, operator_at = (-1.0 if query[pos] == "-" else 1.0), pos
        pos = _skip_spaces(query, pos + 1)
    return terms


def _skip_spaces(query: str, pos: int) -> int:
    while pos < len(query) and query[pos].isspace():
        pos += 1
    return pos


def _weight(query: str, pos: int) -> tuple[float | None, int]:
    """The weight prefix at ``pos`` (or None) and where the term's text starts."""
    found = _WEIGHT_PREFIX.match(query, pos)
    if found is None:
        return None, pos
    number = found.group(1)
    if not _WEIGHT_NUMBER.fullmatch(number):
        raise QuerySyntaxError(f"bad weight {number!r}", pos)
    weight = float(number)
    if not 0.0 < weight <= MAX_WEIGHT:
        raise QuerySyntaxError(f"a weight must be in (0, {MAX_WEIGHT:g}], got {number}", pos)
    return weight, found.end()


def _term(query: str, start: int) -> tuple[str, float, int]:
    """``(text, weight, end)`` of the term at ``start`` (a term starts there, not an operator)."""
    weight, after_weight = _weight(query, start)
    pos = _skip_spaces(query, after_weight)
    n = len(query)
    if pos < n and query[pos] in _OPERATORS and pos == after_weight:  # "2:-dog"
        raise QuerySyntaxError("an operator goes before the weight (-2:x, not 2:-x)", pos)
    if pos == n or query[pos] in _OPERATORS:  # "2:" alone, "2: + dog"
        raise QuerySyntaxError("empty term", start)
    if query[pos] == '"':
        close = query.find('"', pos + 1)
        if close < 0:
            raise QuerySyntaxError("unclosed quote", pos)
        inner, inner_start = query[pos + 1 : close], pos + 1
        if weight is None:
            weight, text_start = _weight(query, inner_start)
            inner = query[text_start:close]
        text, end = inner.strip(), close + 1
        if not text:
            raise QuerySyntaxError("empty term", pos)
        if end < n and not query[end].isspace() and query[end] not in _OPERATORS:
            raise QuerySyntaxError("expected + or - after a closing quote", end)
        return text, 1.0 if weight is None else weight, end
    end = pos
    while end < n:
        char = query[end]
        if char == '"':
            raise QuerySyntaxError("a quote may only open a term", end)
        if char in _OPERATORS and query[end - 1].isspace():
            break
        end += 1
    return query[pos:end].strip(), 1.0 if weight is None else weight, end
