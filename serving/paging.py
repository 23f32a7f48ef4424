"""One page of a ranking: offset and k, a score threshold, and near-duplicates collapsed.

Every search route cuts its page here, from a search callable that returns the top ``n`` of
one ranking for any ``n``. Searches are prefix-stable (``ImageSearcher`` rescores the same
candidates whatever ``n`` and settles ties by row), so the pages of one query over one index
version never repeat or skip a result; collapsing near-duplicates and the threshold keep that,
since both only drop results from a fixed order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from serving.searcher import SearchHit


@dataclasses.dataclass(frozen=True)
class PageRequest:
    """What a client asked of a ranking: ``k`` results after ``offset``, and how to cut them.

    ``min_score`` drops every result scoring below it (the route's own ``score``: cosine for
    image and joint text queries, the fused score with ``mode=fused``); ``filter`` is the
    metadata filter text (``ranking.filter_syntax``), applied by the search itself; ``dedupe``
    shows one result per near-duplicate group (the best ranked), ``False`` shows all.
    """

    k: int
    offset: int = 0
    min_score: float | None = None
    filter: str | None = None
    dedupe: bool = True

    @property
    def end(self) -> int:
        return self.offset + self.k


@dataclasses.dataclass(frozen=True)
class CutPage:
    """The page's hits and, for each, its position in the search's ranking (for its ``why``)."""

    hits: list[SearchHit]
    positions: list[int]
    more: bool  # a next page exists
    hidden: dict[str, int]  # image id -> near-duplicates collapsed into it (dedupe only)


def cut_page(
    search: Callable[[int], Sequence[SearchHit]],
    page: PageRequest,
    group_of: Mapping[str, str] | None,
    total: int,
    exclude: Callable[[SearchHit], bool] | None = None,
) -> CutPage:
    """The hits of ``page`` from ``search(n)``, the top ``n`` of one ranking (best first).

    Asks for one result more than the page ends at, to know whether another page follows;
    with near-duplicates collapsed it asks again, twice as deep, until the page is full or
    the ranking ends (``search`` gave fewer than asked, or all ``total`` images). Hits for
    which ``exclude`` is true never show (e.g. the query image's own near-duplicates).
    """
    collapse = page.dedupe and bool(group_of)
    n = min(page.end + 1, total)
    while True:
        ranked = list(search(n)) if n > 0 else []
        kept, hidden = _collapsed(ranked, group_of) if collapse else (list(range(len(ranked))), {})
        if exclude is not None:
            kept = [i for i in kept if not exclude(ranked[i])]
        exhausted = len(ranked) < n or n >= total
        below = page.min_score is not None and any(ranked[i].score < page.min_score for i in kept)
        if len(kept) > page.end or exhausted or below:
            break
        n = min(2 * n, total)
    if page.min_score is not None:
        kept = [i for i in kept if ranked[i].score >= page.min_score]
    positions = kept[page.offset : page.end]
    return CutPage(
        hits=[ranked[i] for i in positions],
        positions=positions,
        more=len(kept) > page.end,
        hidden={ranked[i].image_id: hidden[i] for i in positions if hidden.get(i)},
    )


def _collapsed(
    ranked: Sequence[SearchHit], group_of: Mapping[str, str]
) -> tuple[list[int], dict[int, int]]:
    """Positions of the first hit of each near-duplicate group (and of every ungrouped hit),
    and for each kept position how many later hits of its group were dropped."""
    kept: list[int] = []
    first_of: dict[str, int] = {}
    hidden: dict[int, int] = {}
    for position, hit in enumerate(ranked):
        group = group_of.get(hit.image_id)
        if group is None:
            kept.append(position)
        elif group in first_of:
            hidden[first_of[group]] = hidden.get(first_of[group], 0) + 1
        else:
            first_of[group] = position
            kept.append(position)
    return kept, hidden
