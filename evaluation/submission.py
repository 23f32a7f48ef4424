"""Competition-style submission files: one line per caption query, its ranked image ids.

Format (CSV, UTF-8, header required), as in Kaggle text->image retrieval tasks::

    query_id,query,image_ids
    q000000,A dog runs on the beach .,1234.jpg 5678.jpg 91011.jpg ...

``query_id`` is ``q`` + the caption's 0-based row in the dataset's caption order (file order for
a captions.tsv, (image, annotation id) order for COCO: both what ``load_captioned_dataset``
gives), so ids leak nothing about the answer; ``query`` repeats the caption so a file made for
another dataset or split is caught; ``image_ids`` are image file names, best first, separated by
spaces (at most ``DEFAULT_TOP_K`` are read by convention, any number is accepted).

Scoring (``score_submission``): each query has one correct image (the one its caption
describes). Its rank is its position in the line's list; an image absent from the list counts as
not retrieved (reciprocal rank 0, outside every R@k). Reported: ``R@1/5/10`` and ``MRR@L`` with
``L`` the longest list, which equals MAP@L for one relevant image per query.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.captions import CaptionedDataset, DatasetError

HEADER = ("query_id", "query", "image_ids")
DEFAULT_TOP_K = 20


def query_id(row: int) -> str:
    return f"q{row:06d}"


def write_submission(
    path: str | Path, dataset: CaptionedDataset, rankings: Sequence[Sequence[str]]
) -> Path:
    """Write one line per caption of ``dataset`` with ``rankings[c]`` (image names, best first)."""
    if len(rankings) != len(dataset.captions):
        raise ValueError(f"{len(dataset.captions)} captions but {len(rankings)} rankings")
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for row, ((_, caption), ranking) in enumerate(zip(dataset.captions, rankings, strict=True)):
            writer.writerow([query_id(row), caption, " ".join(ranking)])
    return path


def read_submission(
    path: str | Path, dataset: CaptionedDataset, max_examples: int = 5
) -> dict[int, list[str]]:
    """Caption row -> ranked image names; ``DatasetError`` naming every wrong line.

    Wrong: a bad header, an unknown or repeated query id, a query text that is not the
    dataset's caption, an empty ranking, an image name the dataset lacks, a name listed twice,
    and (after reading all lines) queries with no line.
    """
    problems: dict[str, list[str]] = {}

    def add(kind: str, message: str) -> None:
        problems.setdefault(kind, []).append(message)

    known_images = set(dataset.image_names)
    rankings: dict[int, list[str]] = {}
    with Path(path).open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != HEADER:
            raise DatasetError(str(path), {"bad header": [f"line 1 must be {','.join(HEADER)}"]})
        for number, fields in enumerate(reader, 2):
            if not fields:
                continue
            if len(fields) != len(HEADER):
                add("malformed line", f"line {number}: {len(fields)} fields, expected 3")
                continue
            qid, text, ids = (field.strip() for field in fields)
            row = int(qid[1:]) if qid[:1] == "q" and qid[1:].isdigit() else -1
            if not 0 <= row < len(dataset.captions):
                add("unknown query id", f"line {number}: {qid!r}")
                continue
            if row in rankings:
                add("duplicate query", f"line {number}: {qid}")
                continue
            if text != dataset.captions[row][1]:
                add(
                    "query text differs from the dataset's caption",
                    f"line {number}: {qid} is {dataset.captions[row][1]!r}, got {text!r}",
                )
                continue
            ranking = ids.split()
            if not ranking:
                add("empty ranking", f"line {number}: {qid}")
                continue
            unknown = [name for name in ranking if name not in known_images]
            if unknown:
                add("unknown image id", f"line {number}: {qid}: {unknown[:3]}")
                continue
            if len(set(ranking)) != len(ranking):
                add("image listed twice", f"line {number}: {qid}")
                continue
            rankings[row] = ranking
    missing = [query_id(row) for row in range(len(dataset.captions)) if row not in rankings]
    if missing and not problems:
        problems["query without a line"] = missing
    if problems:
        raise DatasetError(f"submission {path}", problems, max_examples)
    return rankings


def score_rankings(
    dataset: CaptionedDataset, rankings: dict[int, list[str]], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, Any]:
    """Caption row -> ranked names (every caption present) -> R@k, MRR@L, queries, list length."""
    longest = max(len(ranking) for ranking in rankings.values())
    reciprocal = np.zeros(len(dataset.captions))
    ranks = np.full(len(dataset.captions), np.inf)
    for row, (image, _) in enumerate(dataset.captions):
        ranking = rankings[row]
        if image in ranking:
            ranks[row] = ranking.index(image) + 1
            reciprocal[row] = 1.0 / ranks[row]
    figures: dict[str, Any] = {f"R@{k}": float(np.mean(ranks <= k)) for k in ks}
    figures[f"MRR@{longest}"] = float(reciprocal.mean())
    figures["queries"] = len(dataset.captions)
    figures["list_length"] = longest
    return figures


def score_submission(
    path: str | Path, dataset: CaptionedDataset, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, Any]:
    """Read and score a submission file against ``dataset`` (see the module docstring)."""
    return score_rankings(dataset, read_submission(path, dataset), ks)
