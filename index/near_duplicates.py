"""Near-duplicate groups of an index version: neighbour pairs -> groups, and the files holding them.

Two photos are near-duplicates when the cosine of their embeddings reaches a threshold: a
crop, a re-encode, a mirror or a brightness change of one photo (``benchmarks/variant_corpus``
makes exactly these). The index job finds them by a self-join over its own ScaNN index
(``pipelines.near_duplicates``): every row's ``NEIGHBOURS`` nearest neighbours, the pairs at or
above the threshold, then ``group_pairs``:

1. union-find: the connected components of the pair graph;
2. chaining guard: a component is split into stars. Its representative is the member with
   the most pairs (then the highest sum of their scores, then the lowest image id); the
   representative and every member paired with it form one group; the rest of the component
   is split the same way. So every member of a group is within the threshold of its
   representative, and a chain a~b~c~...~z of small steps never makes one group of photos
   that do not look alike (``split_chains=False`` keeps whole components, for comparison).

Only images with a near-duplicate are written (``OUT/near_duplicates/*.parquet``, one row per
member: ``image_id``, ``near_duplicate_group`` (the representative's image id),
``representative``, ``score`` (cosine to the representative; 1 for the representative itself));
every other row of the table is a singleton, its group null. The embedding table is written
before the index exists, so the group is not a column of it: serving joins by image id
(``read_groups``). The files are listed in the manifest, so ``verify_files`` covers them; a
version whose manifest lists none has no groups (not computed), which ``read_groups`` tells
apart from a version without near-duplicates.

Pure NumPy logic, plus ``exact_pairs``, the brute-force oracle for tests and benchmarks.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from index.manifest import IndexManifest
from index.scann_index import exact_top_k
from storage.files import join_path, open_file

logger = logging.getLogger(__name__)

NEAR_DUPLICATES_DIR = "near_duplicates"

NEAR_DUPLICATE_GROUP = "near_duplicate_group"

# The cosine at or above which two images are near-duplicates, per image encoder, measured on
# Flickr8k photos and their variants (benchmarks/bench_near_duplicates.py,
# benchmarks/results/near_duplicates.md): pairwise precision and recall both >= 0.998 there.
# It differs by encoder: averaging a photo with its mirror (mobilenet_v2_flip) makes every
# vector of the space closer to every other, so the same precision needs a higher cosine.
MEASURED_THRESHOLDS = {"mobilenet_v2": 0.825, "mobilenet_v2_flip": 0.875}

# The default encoder's; also what an encoder without a measured threshold gets (with a warning).
DEFAULT_THRESHOLD = MEASURED_THRESHOLDS["mobilenet_v2"]

# Neighbours each row is compared with, itself included. A group larger than this may be found
# as two or more groups (its members' lists cannot all hold its representative); variants of
# one photo rarely number more.
NEIGHBOURS = 16

# exact_pairs scores this many pairs at once (~256 MiB of float32 scores).
_EXACT_MAX_PAIRS = 64 * 2**20


def near_duplicates_schema(threshold: float, neighbours: int = NEIGHBOURS) -> pa.Schema:
    """The ``near_duplicates/`` Parquet files: one row per image that has a near-duplicate."""
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field(NEAR_DUPLICATE_GROUP, pa.string(), nullable=False),
            pa.field("representative", pa.string(), nullable=False),
            pa.field("score", pa.float32(), nullable=False),
        ],
        metadata={
            b"imgsearch.table": b"near_duplicates",
            b"imgsearch.threshold": repr(float(threshold)).encode(),
            b"imgsearch.neighbours": str(int(neighbours)).encode(),
        },
    )


def default_threshold(encoder_name: str) -> float:
    """The measured threshold of ``encoder_name``, else ``DEFAULT_THRESHOLD`` with a warning."""
    if encoder_name in MEASURED_THRESHOLDS:
        return MEASURED_THRESHOLDS[encoder_name]
    logger.warning(
        "no near-duplicate threshold was measured for encoder %s: using %.3f (mobilenet_v2's); "
        "measure one with benchmarks/bench_near_duplicates.py --encoders %s",
        encoder_name, DEFAULT_THRESHOLD, encoder_name,
    )  # fmt: skip
    return DEFAULT_THRESHOLD


def check_threshold(threshold: float) -> float:
    """``threshold`` as a float in (0, 1]; ValueError otherwise (a cosine of 0 pairs everything)."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float | np.floating):
        raise ValueError(f"the near-duplicate threshold must be a number, got {threshold!r}")
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"the near-duplicate threshold is a cosine in (0, 1], got {threshold}")
    return float(threshold)


@dataclasses.dataclass(frozen=True, eq=False)
class Pairs:
    """Pairs of rows ``left[i] < right[i]``, each once, with their cosine ``score[i]``."""

    left: np.ndarray  # int64
    right: np.ndarray  # int64
    score: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.left)

    @classmethod
    def empty(cls) -> Pairs:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))

    @classmethod
    def of(cls, left: np.ndarray, right: np.ndarray, score: np.ndarray) -> Pairs:
        """Canonical pairs from any: ``(min, max)`` per pair, self-pairs dropped, one entry per
        pair (the highest score: the two directions of an approximate search may differ)."""
        left = np.asarray(left, np.int64).ravel()
        right = np.asarray(right, np.int64).ravel()
        score = np.asarray(score, np.float32).ravel()
        keep = left != right
        low, high = np.minimum(left, right)[keep], np.maximum(left, right)[keep]
        score = score[keep]
        # Sorted by (low, high, score descending): the first of each pair is its best score.
        order = np.lexsort((-score, high, low))
        low, high, score = low[order], high[order], score[order]
        first = np.ones(len(low), bool)
        first[1:] = (low[1:] != low[:-1]) | (high[1:] != high[:-1])
        return cls(low[first], high[first], score[first])


def neighbour_pairs(
    query_rows: np.ndarray, indices: np.ndarray, scores: np.ndarray, threshold: float
) -> Pairs:
    """The pairs at or above ``threshold`` in neighbour lists: row ``query_rows[i]``'s neighbours
    are ``indices[i]`` (``-1`` for none) with cosines ``scores[i]`` (NaN for none)."""
    threshold = check_threshold(threshold)
    indices = np.asarray(indices, np.int64)
    scores = np.asarray(scores, np.float32)
    if indices.shape != scores.shape or indices.ndim != 2:
        raise ValueError(f"indices {indices.shape} and scores {scores.shape} must be (M, k)")
    queries = np.broadcast_to(np.asarray(query_rows, np.int64)[:, None], indices.shape)
    keep = (indices >= 0) & ~np.isnan(scores) & (scores >= threshold)
    return Pairs.of(queries[keep], indices[keep], scores[keep])


def exact_neighbour_pairs(embeddings: np.ndarray, threshold: float, k: int = NEIGHBOURS) -> Pairs:
    """What the job's self-join finds with an exact index: each row's ``k`` nearest (exact)."""
    indices, scores = exact_top_k(embeddings, embeddings, k)
    return neighbour_pairs(np.arange(len(indices)), indices, scores, threshold)


def exact_pairs(embeddings: np.ndarray, threshold: float) -> Pairs:
    """Every pair of rows whose dot product reaches ``threshold``: the oracle, O(N^2) work."""
    threshold = check_threshold(threshold)
    vectors = np.ascontiguousarray(embeddings, np.float32)
    num = len(vectors)
    if num == 0:
        return Pairs.empty()
    block = max(1, _EXACT_MAX_PAIRS // num)
    parts = []
    for start in range(0, num, block):
        scores = vectors[start : start + block] @ vectors.T
        rows, cols = np.nonzero(scores >= threshold)
        rows = rows + start
        upper = cols > rows
        parts.append((rows[upper], cols[upper], scores[rows[upper] - start, cols[upper]]))
    return Pairs.of(*(np.concatenate(column) for column in zip(*parts, strict=True)))


def components(num_rows: int, pairs: Pairs) -> np.ndarray:
    """Each row's connected component (union-find over ``pairs``): labels ``0..C-1``."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix(
        (np.ones(len(pairs), np.int8), (pairs.left, pairs.right)), shape=(num_rows, num_rows)
    )
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class Groups:
    """Rows that have a near-duplicate: ``member[i]`` belongs to the group of row
    ``representative[i]``, at cosine ``score[i]`` from it (1 for the representative, NaN where
    no pair links them: only with ``split_chains=False``). Sorted by (representative, member)."""

    member: np.ndarray  # int64
    representative: np.ndarray  # int64
    score: np.ndarray  # float32

    def __len__(self) -> int:
        return len(self.member)

    @property
    def num_groups(self) -> int:
        return len(np.unique(self.representative))

    def labels(self, num_rows: int) -> np.ndarray:
        """Each row's group (its representative's row), ``-1`` for a singleton."""
        labels = np.full(num_rows, -1, np.int64)
        labels[self.member] = self.representative
        return labels


def _adjacency(pairs: Pairs, rows: np.ndarray) -> dict[int, dict[int, float]]:
    adjacent: dict[int, dict[int, float]] = {int(row): {} for row in rows}
    for left, right, score in zip(
        pairs.left.tolist(), pairs.right.tolist(), pairs.score.tolist(), strict=True
    ):
        adjacent[left][right] = score
        adjacent[right][left] = score
    return adjacent


def _ranking_key(row: int, adjacent: dict[int, dict[int, float]], remaining: set[int]) -> tuple:
    """Who represents a group best: most pairs, then highest score sum, then the lowest row.

    The sum runs over the neighbours in row order, so the same pairs give the same float.
    """
    scores = [adjacent[row][other] for other in sorted(adjacent[row]) if other in remaining]
    return (-len(scores), -sum(scores), row)


def _stars(rows: np.ndarray, adjacent: dict[int, dict[int, float]]) -> list[tuple[int, dict]]:
    """One component split into stars: ``[(representative, {member: score}), ...]``."""
    remaining = {int(row) for row in rows}
    keys = {row: _ranking_key(row, adjacent, remaining) for row in remaining}
    heap = list(keys.values())
    heapq.heapify(heap)
    stars = []
    while heap:
        key = heapq.heappop(heap)
        row = key[2]
        if row not in remaining or keys[row] != key:
            continue  # taken by a group, or a stale key (its pairs changed since it was pushed)
        if key[0] == 0:
            break  # the best remaining row has no pair left: neither has any other
        members = {other: s for other, s in adjacent[row].items() if other in remaining}
        stars.append((row, members))
        taken = {row, *members}
        remaining -= taken
        touched = {o for t in taken for o in adjacent[t] if o in remaining}
        for other in touched:
            keys[other] = _ranking_key(other, adjacent, remaining)
            heapq.heappush(heap, keys[other])
    return stars


def group_pairs(num_rows: int, pairs: Pairs, *, split_chains: bool = True) -> Groups:
    """Rows ``0..num_rows-1`` linked by ``pairs`` -> near-duplicate groups (see the module doc).

    Deterministic: the same pairs give the same groups whatever their order. Rows in no pair,
    or left alone by the split, are singletons and appear nowhere in the result.
    """
    if len(pairs) == 0:
        return Groups(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
    if pairs.left.min() < 0 or pairs.right.max() >= num_rows:
        raise ValueError(f"pairs name rows outside 0..{num_rows - 1}")
    labels = components(num_rows, pairs)
    sizes = np.bincount(labels)
    members: list[np.ndarray] = []
    representatives: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    # Components of two (most of them) need no search: the lower row represents the pair.
    pair_of_two = sizes[labels[pairs.left]] == 2
    low, high, score = pairs.left[pair_of_two], pairs.right[pair_of_two], pairs.score[pair_of_two]
    members += [low, high]
    representatives += [low, low]
    scores += [np.ones(len(low), np.float32), score]
    larger = np.flatnonzero(sizes > 2)
    if len(larger):
        in_larger = np.isin(labels, larger)
        rows = np.flatnonzero(in_larger)
        mine = in_larger[pairs.left]
        adjacent = _adjacency(Pairs(pairs.left[mine], pairs.right[mine], pairs.score[mine]), rows)
        order = np.argsort(labels[rows], kind="stable")
        bounds = np.flatnonzero(np.diff(labels[rows][order])) + 1
        for component in np.split(rows[order], bounds):
            stars = _stars(component, adjacent) if split_chains else [_whole(component, adjacent)]
            for representative, linked in stars:
                others = sorted(linked)
                members.append(np.array([representative, *others], np.int64))
                representatives.append(np.full(len(others) + 1, representative, np.int64))
                scores.append(np.array([1.0, *(linked[o] for o in others)], np.float32))
    member = np.concatenate(members)
    representative = np.concatenate(representatives)
    score = np.concatenate(scores)
    order = np.lexsort((member, representative))
    return Groups(member[order], representative[order], score[order])


def _whole(rows: np.ndarray, adjacent: dict[int, dict[int, float]]) -> tuple[int, dict]:
    """A whole component as one group (no chaining guard), around the best-ranked row."""
    remaining = {int(row) for row in rows}
    representative = min(remaining, key=lambda row: _ranking_key(row, adjacent, remaining))
    linked = adjacent[representative]
    return representative, {
        int(row): linked.get(int(row), float("nan")) for row in rows if row != representative
    }


def group_image_pairs(
    pairs: Iterable[tuple[str, str, float]], *, split_chains: bool = True
) -> list[dict[str, Any]]:
    """Image-id pairs ``(a, b, cosine)`` (any order, either direction, repeats allowed) -> the
    ``near_duplicates`` rows, sorted by (group, image_id). Ties are settled by image id."""
    listed = list(pairs)
    if not listed:
        return []
    ids = sorted({image_id for a, b, _ in listed for image_id in (a, b)})
    row_of = {image_id: row for row, image_id in enumerate(ids)}
    groups = group_pairs(
        len(ids),
        Pairs.of(
            np.array([row_of[a] for a, _, _ in listed], np.int64),
            np.array([row_of[b] for _, b, _ in listed], np.int64),
            np.array([s for _, _, s in listed], np.float32),
        ),
        split_chains=split_chains,
    )
    return [
        {
            "image_id": ids[member],
            NEAR_DUPLICATE_GROUP: ids[representative],
            "representative": ids[representative],
            "score": float(score),
        }
        for member, representative, score in zip(
            groups.member.tolist(), groups.representative.tolist(), groups.score.tolist(),
            strict=True,
        )
    ]  # fmt: skip


@dataclasses.dataclass(frozen=True)
class CarriedGroups:
    """What an in-place update keeps of the previous version's groups, and what it joins again.

    ``pairs``: the (member, representative, cosine) links of every group no changed row
    belongs to, as they were (both rows unchanged, so is their cosine); ``requery``: the rows
    to look up in the new index: the upserted ones and the surviving members of every group a
    changed row (upserted or deleted) belonged to. Grouping the carried pairs with the pairs the
    requeried rows find gives the new version's groups at a cost that follows the change, not
    the index.
    """

    pairs: list[tuple[str, str, float]]
    requery: frozenset[str]


def carry_over(
    previous: Iterable[Mapping[str, Any]], upserted: Iterable[str], deleted: Iterable[str]
) -> CarriedGroups:
    """``previous``: the base version's ``near_duplicates`` rows; ``upserted``/``deleted``: the
    update's ids (a replaced row is upserted). Pure: see ``CarriedGroups``."""
    rows = list(previous)
    upserted, deleted = set(upserted), set(deleted)
    changed = upserted | deleted
    touched = {row[NEAR_DUPLICATE_GROUP] for row in rows if row["image_id"] in changed}
    pairs = [
        (row["image_id"], row["representative"], float(row["score"]))
        for row in rows
        if row[NEAR_DUPLICATE_GROUP] not in touched and row["image_id"] != row["representative"]
    ]
    members = {row["image_id"] for row in rows if row[NEAR_DUPLICATE_GROUP] in touched}
    return CarriedGroups(pairs, frozenset((members | upserted) - deleted))


def group_settings(out_dir: str, manifest: IndexManifest) -> tuple[float, int] | None:
    """The (threshold, neighbours) the version's groups were made with, or None (no groups)."""
    metadata = _group_file_metadata(out_dir, manifest)
    threshold = metadata.get(b"imgsearch.threshold")
    neighbours = metadata.get(b"imgsearch.neighbours")
    if threshold is None or neighbours is None:
        return None
    return float(threshold), int(neighbours)


def pair_precision_recall(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Pairwise precision and recall of a grouping: over the pairs of items put in one group.

    ``predicted[i]`` and ``truth[i]`` are item ``i``'s group labels, ``-1`` in ``predicted``
    for a singleton (each ``-1`` is a group of its own). Precision is 1 with no predicted
    pair, recall 1 with no true pair.
    """
    predicted = np.asarray(predicted, np.int64)
    truth = np.asarray(truth, np.int64)
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted {predicted.shape} and truth {truth.shape} differ in shape")
    grouped = predicted >= 0

    def pairs_within(*labels: np.ndarray) -> int:
        _, counts = np.unique(np.stack(labels), axis=1, return_counts=True)
        return int((counts * (counts - 1) // 2).sum())

    if not grouped.any():
        true_pairs = pairs_within(truth)
        return 1.0, 1.0 if true_pairs == 0 else 0.0
    predicted_pairs = pairs_within(predicted[grouped])
    both = pairs_within(predicted[grouped], truth[grouped])
    true_pairs = pairs_within(truth)
    precision = both / predicted_pairs if predicted_pairs else 1.0
    recall = both / true_pairs if true_pairs else 1.0
    return precision, recall


# --- the files of a version ---------------------------------------------------------------


def near_duplicate_files(manifest: IndexManifest) -> list[dict[str, Any]]:
    """The manifest's entries of ``near_duplicates/`` files ([] when the version has no groups)."""
    return manifest.files_under(NEAR_DUPLICATES_DIR)


def read_group_table(out_dir: str, manifest: IndexManifest) -> pa.Table | None:
    """Every ``near_duplicates`` row of the version, sorted by (group, image_id); None when the
    version has no groups (the index job ran without them, or an in-place update dropped them).
    """
    entries = near_duplicate_files(manifest)
    if not entries:
        return None
    parts = []
    for entry in entries:
        with open_file(join_path(out_dir, entry["path"])) as handle:
            parts.append(pq.read_table(handle).replace_schema_metadata(None))
    table = pa.concat_tables(parts)
    return table.sort_by([(NEAR_DUPLICATE_GROUP, "ascending"), ("image_id", "ascending")])


def read_groups(out_dir: str, manifest: IndexManifest) -> dict[str, str] | None:
    """``{image_id: near_duplicate_group}`` for every grouped image of the version; an image
    that is absent is a singleton (its group is null). None: the version has no groups."""
    table = read_group_table(out_dir, manifest)
    if table is None:
        return None
    return dict(
        zip(table["image_id"].to_pylist(), table[NEAR_DUPLICATE_GROUP].to_pylist(), strict=True)
    )


def group_threshold(out_dir: str, manifest: IndexManifest) -> float | None:
    """The threshold the version's groups were made with (from their files), or None."""
    value = _group_file_metadata(out_dir, manifest).get(b"imgsearch.threshold")
    return float(value) if value is not None else None


def _group_file_metadata(out_dir: str, manifest: IndexManifest) -> dict[bytes, bytes]:
    """The schema metadata of the version's first groups file ({} when it has none)."""
    entries = near_duplicate_files(manifest)
    if not entries:
        return {}
    with open_file(join_path(out_dir, entries[0]["path"])) as handle:
        return pq.ParquetFile(handle).schema_arrow.metadata or {}


# What finds the groups of a built index before its manifest is published: called with the
# output dir and the unpublished manifest (table and shards final), it writes
# ``OUT/near_duplicates/`` and returns those files' manifest entries and the counts to record.
# The index job passes ``pipelines.near_duplicates.beam_near_duplicates`` (a Beam job).
NearDuplicateStep = Callable[[str, IndexManifest], tuple[list[dict[str, Any]], Mapping[str, int]]]


def with_near_duplicates(
    out_dir: str, manifest: IndexManifest, step: NearDuplicateStep | None
) -> IndexManifest:
    """``manifest`` plus the files and counts of ``step`` (unchanged when ``step`` is None)."""
    if step is None:
        return manifest
    files, counts = step(out_dir, manifest)
    listed = manifest.with_files_under(NEAR_DUPLICATES_DIR, files)
    return dataclasses.replace(listed, counts={**manifest.counts, **counts})
