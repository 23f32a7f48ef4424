"""ScaNN index logic: choose parameters, build, save/load, search, and the exact NumPy oracle.

Pure functions over NumPy arrays and local directories; no Beam, no file systems other than the
local disk (``index.shards`` moves the serialized files to gs:// and back).

``scann`` is imported lazily: its package ``__init__`` imports TensorFlow (~5 s), and callers such
as DAG files, benchmarks that only need ``exact_top_k`` and ``choose_scann_params`` should not pay
for it. Only the pybind API (``scann.scann_ops_pybind``) is used; no TensorFlow op is involved.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from scann.scann_ops.py.scann_ops_pybind import ScannSearcher


logger = logging.getLogger(__name__)

ScannKind = Literal["brute_force", "tree_ah"]

KINDS: tuple[str, ...] = ("brute_force", "tree_ah")

# How ScaNN stores the vectors it scores exactly (brute force) or rescores (tree-AH reorder):
# float32 (4 bytes a dimension, exact), bfloat16 (2 bytes, 8 significant bits) or int8 (1 byte,
# ScaNN's fixed point with one multiplier per dimension). The compact ones cut the index's
# largest part by 2x/4x at a measured recall cost (benchmarks/results/storage.md).
QUANTIZE: tuple[str, ...] = ("float32", "bfloat16", "int8")

# ScaNN's rules of thumb (scann/docs/algorithms.md) say "fewer than 20k points: brute force".
# At that size an exact scan costs ~20k dot products per query (a few ms even at dim 1280), has
# recall 1.0, and needs no training; k-means over ~sqrt(20k) = 141 leaves of ~141 points and an
# AH codebook trained on so few points would cost recall for no measurable speed-up.
BRUTE_FORCE_MAX_VECTORS = 20_000

# Share of the leaves searched per query. ScaNN's README searches 100 of 2000 leaves (5%) on
# glove-1.2M. We search twice that share: with ~sqrt(N) leaves it is still ~0.1 * sqrt(N) leaves
# (100 at 1M vectors), cheap next to the rescoring, and it buys recall headroom on embeddings
# we have not tuned for. Tune it with a benchmark against exact_top_k, not by guessing.
LEAVES_TO_SEARCH_FRACTION = 0.10

MIN_LEAVES_TO_SEARCH = 8

# k-means needs tens of points per leaf to place centres well; ScaNN's own default sample is
# 100k. The upper bound keeps training time and memory flat however large the table grows.
MIN_TRAINING_SAMPLE = 100_000

TRAINING_POINTS_PER_LEAF = 50

MAX_TRAINING_SAMPLE = 500_000

# "When scoring with AH, dimensions_per_block should be set to 2" (algorithms.md).
DIMS_PER_BLOCK = 2

# The threshold ScaNN's README uses for dot-product search (anisotropic quantization, AVQ).
ANISOTROPIC_QUANTIZATION_THRESHOLD = 0.2

# Rescoring "should be greater than k"; the README rescoring 100 for k=10 is where recall
# saturates in its benchmark, so we keep that ratio for any k.
REORDER_MULTIPLE = 10

# exact_top_k scores this many (query, database) pairs at once, bounding its memory at ~256 MiB.
_EXACT_MAX_PAIRS = 64 * 2**20


@dataclasses.dataclass(frozen=True)
class ScannParams:
    """How a ScaNN index is built and searched; stored in the manifest as JSON.

    ``brute_force`` uses only ``num_neighbors`` (the other fields stay ``None``); ``tree_ah``
    partitions into ``num_leaves`` k-means leaves, scores the ``num_leaves_to_search`` nearest
    leaves with asymmetric hashing, then rescores the best ``reorder_k`` candidates exactly.
    """

    kind: ScannKind
    num_neighbors: int
    num_leaves: int | None = None
    num_leaves_to_search: int | None = None
    training_sample_size: int | None = None
    dims_per_block: int | None = None
    anisotropic_quantization_threshold: float | None = None
    reorder_k: int | None = None
    quantize: str = "float32"  # QUANTIZE: the exact-scoring copy's type (both kinds)

    _TREE_FIELDS = (
        "num_leaves",
        "num_leaves_to_search",
        "training_sample_size",
        "dims_per_block",
        "anisotropic_quantization_threshold",
        "reorder_k",
    )

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"ScaNN kind must be one of {KINDS}, got {self.kind!r}")
        _check_positive_int("num_neighbors", self.num_neighbors)
        if self.quantize not in QUANTIZE:
            raise ValueError(f"ScaNN quantize must be one of {QUANTIZE}, got {self.quantize!r}")
        values = {name: getattr(self, name) for name in self._TREE_FIELDS}
        if self.kind == "brute_force":
            # A manifest claiming leaves for a brute-force index would mislead whoever reads it.
            set_fields = sorted(name for name, value in values.items() if value is not None)
            if set_fields:
                raise ValueError(f"brute_force ScaNN params must not set {set_fields}")
            return
        missing = sorted(name for name, value in values.items() if value is None)
        if missing:
            raise ValueError(f"tree_ah ScaNN params need {missing}")
        for name in ("num_leaves", "num_leaves_to_search", "training_sample_size"):
            _check_positive_int(name, values[name])
        _check_positive_int("dims_per_block", self.dims_per_block)
        _check_positive_int("reorder_k", self.reorder_k)
        if self.num_leaves_to_search > self.num_leaves:
            raise ValueError(
                f"num_leaves_to_search ({self.num_leaves_to_search}) exceeds "
                f"num_leaves ({self.num_leaves})"
            )
        if self.reorder_k < self.num_neighbors:
            raise ValueError(
                f"reorder_k ({self.reorder_k}) must be >= num_neighbors ({self.num_neighbors})"
            )

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["quantize"] == "float32":
            del data["quantize"]  # the default: manifests without it read the same
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScannParams:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def _check_positive_int(name: str, value: Any) -> None:
    # bool is an int subclass: True as a neighbour count is a caller bug, not 1.
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def choose_scann_params(num_vectors: int, dim: int, k: int = 10) -> ScannParams:
    """ScaNN parameters for ``num_vectors`` unit vectors of ``dim`` floats, searched for top ``k``.

    Follows ScaNN's documented rules of thumb: brute force below ``BRUTE_FORCE_MAX_VECTORS``;
    above, a k-means tree with ~sqrt(N) leaves, AH scoring with 2 dims per block and
    anisotropic quantization, and exact rescoring of ``REORDER_MULTIPLE * k`` candidates.

    Raises ValueError for an empty table or a non-positive ``dim``/``k``.
    """
    if isinstance(num_vectors, bool) or not isinstance(num_vectors, int | np.integer):
        raise ValueError(f"num_vectors must be an integer, got {num_vectors!r}")
    if num_vectors < 0:
        raise ValueError(f"num_vectors must be >= 0, got {num_vectors}")
    if num_vectors == 0:
        raise ValueError("empty table: there are no vectors to index")
    _check_positive_int("dim", dim)
    _check_positive_int("k", k)
    num_vectors, dim, k = int(num_vectors), int(dim), int(k)
    num_neighbors = min(k, num_vectors)  # ScaNN pads results past N with NaN scores
    if num_vectors < BRUTE_FORCE_MAX_VECTORS:
        return ScannParams(kind="brute_force", num_neighbors=num_neighbors)

    num_leaves = max(1, round(math.sqrt(num_vectors)))
    leaves_to_search = min(
        num_leaves,
        max(MIN_LEAVES_TO_SEARCH, math.ceil(LEAVES_TO_SEARCH_FRACTION * num_leaves)),
    )
    training_sample = min(
        num_vectors,
        MAX_TRAINING_SAMPLE,
        max(MIN_TRAINING_SAMPLE, TRAINING_POINTS_PER_LEAF * num_leaves),
    )
    return ScannParams(
        kind="tree_ah",
        num_neighbors=num_neighbors,
        num_leaves=num_leaves,
        num_leaves_to_search=leaves_to_search,
        training_sample_size=training_sample,
        dims_per_block=min(DIMS_PER_BLOCK, dim),
        anisotropic_quantization_threshold=ANISOTROPIC_QUANTIZATION_THRESHOLD,
        reorder_k=min(num_vectors, REORDER_MULTIPLE * k),
    )


def _as_matrix(name: str, array: np.ndarray, dim: int | None = None) -> np.ndarray:
    """``array`` as a C-contiguous float32 ``(rows, dim)`` matrix of finite values."""
    matrix = np.ascontiguousarray(array, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (rows, dim) array, got shape {matrix.shape}")
    if dim is not None and matrix.shape[1] != dim:
        raise ValueError(f"{name} has dimension {matrix.shape[1]}, expected {dim}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return matrix


def scann_pybind():
    """ScaNN's pybind module (``scann.scann_ops.py.scann_ops_pybind``), imported without
    TensorFlow.

    ``import scann`` also imports TensorFlow, when it can, for ScaNN's TF ops, which nothing
    here uses: 3-4 s and hundreds of MB in a process that otherwise never loads it (an index
    job on the int8 LiteRT encoder, a server whose models run without it). ``None`` in
    ``sys.modules`` makes that one ``import tensorflow`` fail as "not installed", which
    ``scann/__init__`` expects and skips; TensorFlow imports normally afterwards. A process that
    has TensorFlow already gets the usual import.
    """
    if "scann" not in sys.modules and "tensorflow" not in sys.modules:
        sys.modules["tensorflow"] = None  # type: ignore[assignment]
        try:
            import scann  # noqa: F401  (the package, without its TF ops)
        finally:
            del sys.modules["tensorflow"]
    from scann import scann_ops_pybind

    return scann_ops_pybind


def _reorder_type(quantize: str):
    scann_pybind()  # the package without TensorFlow, before its submodule
    from scann.scann_ops.py.scann_builder import ReorderType

    return {
        "float32": ReorderType.FLOAT32,
        "bfloat16": ReorderType.BFLOAT16,
        "int8": ReorderType.INT8,
    }[quantize]


def build_searcher(embeddings: np.ndarray, params: ScannParams) -> ScannSearcher:
    """Train a ScaNN searcher over ``embeddings`` ``(N, dim)`` (unit rows) with dot product.

    Row ``i`` of ``embeddings`` is result index ``i``. Raises ValueError on an empty matrix.
    """
    database = _as_matrix("embeddings", embeddings)
    num_vectors, dim = database.shape
    if num_vectors == 0:
        raise ValueError("empty table: there are no vectors to index")
    num_neighbors = min(params.num_neighbors, num_vectors)
    builder = scann_pybind().builder(database, num_neighbors, "dot_product")
    quantize = _reorder_type(params.quantize)
    if params.kind == "brute_force":
        builder = builder.score_brute_force(quantize)  # float32: exact results
    else:
        if params.num_leaves > num_vectors:
            raise ValueError(f"num_leaves ({params.num_leaves}) exceeds the {num_vectors} vectors")
        sample = min(params.training_sample_size, num_vectors)
        builder = (
            builder.tree(
                num_leaves=params.num_leaves,
                num_leaves_to_search=params.num_leaves_to_search,
                training_sample_size=sample,
                # Stored vectors are unit-norm, so spherical k-means puts centres on the sphere
                # where the data lives (as ann-benchmarks does for ScaNN on angular data).
                spherical=True,
            )
            .score_ah(
                params.dims_per_block,
                anisotropic_quantization_threshold=params.anisotropic_quantization_threshold,
                training_sample_size=sample,
            )
            .reorder(params.reorder_k, quantize=quantize)
        )
    started = time.perf_counter()
    searcher = builder.build()
    logger.info(
        "built ScaNN %s over %d x %d in %.2f s",
        params.kind,
        num_vectors,
        dim,
        time.perf_counter() - started,
    )
    return searcher


def search_batched(
    searcher: ScannSearcher,
    queries: np.ndarray,
    k: int,
    params: ScannParams,
    candidates: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of each query row: ``(indices int64 (M, k'), scores float32 (M, k'))``.

    ``k' = min(k, searcher size)``; rows are best first. Where ScaNN found fewer than ``k'``
    candidates (possible with a tree that searches few leaves) the tail holds index ``-1`` and
    score NaN. Queries are used as given: normalising them is the caller's job.

    ``candidates`` rescored exactly (at least ``params.reorder_k`` and ``k``): a caller that
    asks one query for different ``k`` (pages of results) passes the same number every time,
    so each answer is a prefix of one ranking; with the default the candidate pool grows with
    ``k`` once ``k`` passes ``reorder_k``, and a deeper answer may rank differently.
    """
    _check_positive_int("k", k)
    size = searcher.size()
    k = min(int(k), size)
    # ScaNN keeps no record of the dimension we can read back: callers check it (the manifest
    # has it), and ScaNN itself refuses a mismatch with a RuntimeError.
    queries = _as_matrix("queries", queries)
    if queries.shape[0] == 0:  # ScaNN rejects an empty batch with a dimension error
        return np.empty((0, k), np.int64), np.empty((0, k), np.float32)
    if params.kind == "brute_force":
        indices, scores = searcher.search_batched(queries, final_num_neighbors=k)
    else:
        indices, scores = searcher.search_batched(
            queries,
            final_num_neighbors=k,
            # Rescoring fewer candidates than requested results would truncate the answer.
            pre_reorder_num_neighbors=max(params.reorder_k, k, candidates),
            leaves_to_search=params.num_leaves_to_search,
        )
    indices = np.asarray(indices, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    indices[np.isnan(scores)] = -1
    return indices, scores


def save_searcher(searcher: ScannSearcher, local_dir: str) -> list[str]:
    """Serialize ``searcher`` into the local directory ``local_dir``; returns the file names.

    Asset paths are written relative to the directory, so it can be copied anywhere (gs:// and
    back) and still load.
    """
    if "://" in local_dir:
        raise ValueError(f"save_searcher writes to a local directory, got {local_dir!r}")
    os.makedirs(local_dir, exist_ok=True)
    searcher.serialize(local_dir, relative_path=True)
    return sorted(os.listdir(local_dir))


def load_searcher(local_dir: str) -> ScannSearcher:
    """Load a searcher that ``save_searcher`` wrote into ``local_dir``."""
    if not os.path.isfile(os.path.join(local_dir, "scann_assets.pbtxt")):
        raise FileNotFoundError(f"no ScaNN index in {local_dir} (scann_assets.pbtxt is missing)")
    return scann_pybind().load_searcher(local_dir)


def _lowest_on_ties(all_scores: np.ndarray, top: np.ndarray) -> np.ndarray:
    """``argpartition``'s top columns, with ties at the k-th score settled by the lower index.

    ``argpartition`` picks any of the rows that tie with the k-th score, so the top ``k`` and
    the top ``k + 10`` could disagree on which of them comes first; pages of results cut from
    answers of different depth would then repeat or skip one. Rows without such a tie (nearly
    all) are kept as they are.
    """
    kth = np.take_along_axis(all_scores, top, axis=1).min(axis=1)
    tied = (all_scores == kth[:, None]).sum(axis=1)
    tied_in_top = (np.take_along_axis(all_scores, top, axis=1) == kth[:, None]).sum(axis=1)
    top = np.array(top)  # writable
    for row in np.flatnonzero(tied > tied_in_top):
        above = top[row][all_scores[row, top[row]] > kth[row]]
        ties = np.flatnonzero(all_scores[row] == kth[row])[: top.shape[1] - len(above)]
        top[row] = np.concatenate([above, ties])
    return top


def exact_top_k(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact dot-product top ``k``: ``(indices int64 (M, k'), scores float32 (M, k'))``.

    ``k' = min(k, N)``; best first, ties broken by the lower index. The brute-force oracle for
    tests and benchmarks: one BLAS matmul per block of queries, ``argpartition`` for the top k,
    then a sort of just those k.
    """
    _check_positive_int("k", k)
    database = _as_matrix("database", database)
    num_vectors, dim = database.shape
    if num_vectors == 0:
        raise ValueError("empty table: the database has no vectors")
    queries = _as_matrix("queries", queries, dim)
    k = min(int(k), num_vectors)
    indices = np.empty((queries.shape[0], k), dtype=np.int64)
    scores = np.empty((queries.shape[0], k), dtype=np.float32)
    block = max(1, _EXACT_MAX_PAIRS // num_vectors)
    for start in range(0, queries.shape[0], block):
        all_scores = queries[start : start + block] @ database.T
        if k < num_vectors:
            top = np.argpartition(-all_scores, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(num_vectors), all_scores.shape)
        top = _lowest_on_ties(all_scores, top) if k < num_vectors else top
        top_scores = np.take_along_axis(all_scores, top, axis=1)
        # lexsort's last key is the primary one: score descending, then index ascending.
        order = np.lexsort((top, -top_scores), axis=1)
        indices[start : start + block] = np.take_along_axis(top, order, axis=1)
        scores[start : start + block] = np.take_along_axis(top_scores, order, axis=1)
    return indices, scores
