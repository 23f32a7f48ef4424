"""The text query syntax against hand-worked queries: terms, weights, phrases, + and -, errors."""

from __future__ import annotations

import pytest

from ranking.query_syntax import QuerySyntaxError, QueryTerm, is_plain, parse_query


@pytest.mark.parametrize(
    "query",
    [
        "dog running on the beach",
        "  a dog  ",
        "t-shirt on a well-lit table",  # an operator inside a word is text
        "dog+cat",
        "time: 10:30",  # a colon not after a leading number
        "what's this?",
    ],
)
def test_plain_text_is_one_term_of_weight_one_as_given(query: str) -> None:
    assert is_plain(query)
    assert parse_query(query) == [(query.strip(), 1.0)]


@pytest.mark.parametrize(
    "query, terms",
    [
        (
            '"2:golden retriever" + beach - snow',
            [("golden retriever", 2.0), ("beach", 1.0), ("snow", -1.0)],
        ),
        (
            '2:"golden retriever" +beach -snow',
            [("golden retriever", 2.0), ("beach", 1.0), ("snow", -1.0)],
        ),
        ("dog -snow", [("dog", 1.0), ("snow", -1.0)]),
        ("-snow", [("snow", -1.0)]),
        ("+ dog", [("dog", 1.0)]),
        ("a dog - 0.5:grass + 3:ball", [("a dog", 1.0), ("grass", -0.5), ("ball", 3.0)]),
        (".5:x - 2.:y", [("x", 0.5), ("y", -2.0)]),
        ('"a - b" - c', [("a - b", 1.0), ("c", -1.0)]),  # quotes keep operators as text
        ('"a"-b', [("a", 1.0), ("b", -1.0)]),
        ('3:"2:x"', [("2:x", 3.0)]),  # one weight: the inner one is text
        ("10:30 train", [("30 train", 10.0)]),  # a leading number and colon is a weight
        ("2: dog", [("dog", 2.0)]),
        ("dog - dog", [("dog", 1.0), ("dog", -1.0)]),  # parsing does not judge meaning
        ("100:x", [("x", 100.0)]),
        ("t-shirt - well-lit", [("t-shirt", 1.0), ("well-lit", -1.0)]),
    ],
)
def test_terms_by_hand(query: str, terms: list[tuple[str, float]]) -> None:
    assert not is_plain(query)
    parsed = parse_query(query)
    assert parsed == terms
    assert all(isinstance(term, QueryTerm) for term in parsed)


@pytest.mark.parametrize(
    "query, position, reason",
    [
        ("", 0, "empty query"),
        ("   ", 0, "empty query"),
        ('"golden retriever + beach', 0, "unclosed quote"),
        ('beach + "golden', 8, "unclosed quote"),
        ("dog +", 4, "no term after '+'"),
        ("-", 0, "no term after '-'"),
        ("dog + + cat", 6, "two operators in a row"),
        ("dog - -cat", 6, "two operators in a row"),
        ("0:dog", 0, "a weight must be in (0, 100]"),
        ("dog + 101:cat", 6, "a weight must be in (0, 100]"),
        ("1.2.3:dog", 0, "bad weight '1.2.3'"),
        ("dog - 2.5.:x", 6, "bad weight"),
        ("2:", 0, "empty term"),
        ("dog + 2: - cat", 6, "empty term"),
        ('""', 0, "empty term"),
        ('dog - "  "', 6, "empty term"),
        ('"2:"', 0, "empty term"),
        ("2:-dog", 2, "an operator goes before the weight"),
        ('dog"s', 3, "a quote may only open a term"),
        ('"a"b', 3, "expected + or - after a closing quote"),
        ('"a b" c', 6, "expected + or - between terms"),
    ],
)
def test_malformed_syntax_names_the_position(query: str, position: int, reason: str) -> None:
    with pytest.raises(QuerySyntaxError) as caught:
        parse_query(query)
    assert caught.value.position == position
    assert caught.value.reason.startswith(reason)
    assert str(caught.value).endswith(f"at position {position}")
    assert isinstance(caught.value, ValueError)


def test_at_most_max_terms() -> None:
    assert len(parse_query(" + ".join("abc"), max_terms=3)) == 3
    with pytest.raises(QuerySyntaxError) as caught:
        parse_query("a + b + c + d", max_terms=3)
    assert caught.value.position == 12 and "more than 3 terms" in str(caught.value)
