"""Load one index version (its manifest) and search it by vector, by image id, or by image.

Queries go through the same code as the index job: ``encoders.imaging.decode_image`` to
pixels, the manifest's encoder to a vector, and ``encoders.base.l2_normalize`` (the one
normalisation), so a photo that is in the index finds itself.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from encoders.base import EncoderSpec, ImageEncoder, l2_normalize
from index.filtered_search import filtered_search
from index.hash_codes import DEFAULT_RERANK, HammingIndex, read_hash_model
from index.manifest import IndexManifest, manifest_location, read_manifest, verify_files
from index.scann_index import ScannParams, search_batched
from index.schema import JOINT_EMBEDDING
from index.shards import load_shard
from index.stored_vectors import StoredVectors
from index.table import read_stored_column, read_stored_table
from models.query_model import EncoderMismatchError
from storage.files import join_path, open_file

if TYPE_CHECKING:
    from scann.scann_ops.py.scann_ops_pybind import ScannSearcher

logger = logging.getLogger(__name__)

# How image-space queries find candidates: ScaNN (the default), or a Hamming scan of the
# version's semantic-hashing codes (--hash_model at index time) re-ranked exactly.
IMAGE_SEARCHES = ("scann", "hamming")

# A version's shards are searched on threads when the work is large enough. ScaNN's batched
# search releases the GIL: two 200k x 256-d shards, 64 queries, 2 cores: 14.8 ms one after the
# other, 7.6 ms on two threads; but handing a small search to a thread costs more than it
# saves (one query: 0.23 ms against 0.27 ms). So threads are used from this many query x
# row products of the largest shard (a single query over shards of 500k rows and more).
PARALLEL_SHARD_WORK = 500_000
_SHARD_THREADS = 4
_shard_pool = None
_shard_pool_lock = threading.Lock()


def _shard_executor():
    """The process's shard-search threads (made on first use, shared by every version)."""
    global _shard_pool
    with _shard_pool_lock:
        if _shard_pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _shard_pool = ThreadPoolExecutor(_SHARD_THREADS, thread_name_prefix="shard-search")
        return _shard_pool


def search_shards(
    shards: Sequence[_Shard], queries: np.ndarray, depth: int, candidates: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each shard's ``search_batched`` answer, in shard order: on threads when the work is
    ``PARALLEL_SHARD_WORK`` or more, else one after the other."""

    def one(shard: _Shard) -> tuple[np.ndarray, np.ndarray]:
        return search_batched(shard.searcher, queries, depth, shard.params, candidates)

    work = len(queries) * max((s.size for s in shards), default=0)
    if len(shards) < 2 or work < PARALLEL_SHARD_WORK:
        return [one(s) for s in shards]
    return list(_shard_executor().map(one, shards))


@dataclasses.dataclass(frozen=True)
class SearchHit:
    """One result: an indexed image and its dot-product (cosine) score with the query."""

    image_id: str
    uri: str
    score: float


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


@dataclasses.dataclass(frozen=True)
class _Shard:
    """One loaded ScaNN shard: its rows are global rows ``offset .. offset + size - 1``."""

    searcher: ScannSearcher
    params: ScannParams
    offset: int

    @property
    def size(self) -> int:
        return int(self.searcher.size())


def _as_shards(
    searchers: ScannSearcher | Sequence[ScannSearcher], params: Sequence[ScannParams]
) -> list[_Shard]:
    if not isinstance(searchers, list | tuple):
        searchers = [searchers]
    if len(searchers) != len(params):
        raise ValueError(f"{len(searchers)} ScaNN searchers for {len(params)} manifest shards")
    shards, offset = [], 0
    for searcher, shard_params in zip(searchers, params, strict=True):
        shards.append(_Shard(searcher, shard_params, offset))
        offset += int(searcher.size())
    return shards


def _tied_at(scores: np.ndarray, k: int) -> bool:
    """Whether any row's k-th score (1-based) equals the next one: the cut falls in a tie."""
    if scores.shape[1] <= k:
        return False
    return bool(np.any(scores[:, k - 1] == scores[:, k]))


def merge_top_k(
    indices: Sequence[np.ndarray], scores: Sequence[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard top-k lists (global rows, ``-1``/NaN for none) into one top ``k``.

    Rows of the result are best first, ties broken by the lower global row; the tail is ``-1``
    / NaN where all shards together found fewer than ``k``. Each shard's top ``k`` holds every
    candidate of the global top ``k`` that lives in that shard, so with exact shards the merge
    equals one exact index over all rows.
    """
    all_indices = np.concatenate(indices, axis=1)
    all_scores = np.concatenate(scores, axis=1).astype(np.float32)
    ranked = np.where(np.isnan(all_scores) | (all_indices < 0), -np.inf, all_scores)
    # lexsort's last key is the primary one: score descending, then global row ascending.
    order = np.lexsort((all_indices, -ranked), axis=1)[:, :k]
    top_indices = np.take_along_axis(all_indices, order, axis=1)
    top_scores = np.take_along_axis(all_scores, order, axis=1)
    missing = np.isneginf(np.take_along_axis(ranked, order, axis=1))
    top_indices[missing] = -1
    top_scores[missing] = np.nan
    return top_indices, top_scores


class ImageSearcher:
    """Nearest-neighbour search over one published index version, merged over its shards.

    Global row ``i`` (``hit_for_row``, ``vectors``) is shard by shard in manifest order,
    each shard's rows in its ``ids.parquet`` order. The table's vectors are kept in memory in
    that order, as stored (``index.stored_vectors``: 4, 2 or 1 bytes a dimension; 1M x 1280
    int8 is 1.2 GiB where float32 is 4.9), so ``similar_to_image_id``, exact filtered search
    and re-ranking can read a stored vector. Searches are read-only and may run from several
    threads.
    """

    def __init__(
        self,
        manifest: IndexManifest,
        searcher: ScannSearcher | Sequence[ScannSearcher],
        image_ids: Sequence[str],
        uris: Sequence[str],
        vectors: StoredVectors | np.ndarray,
        encoder: ImageEncoder | None = None,
        joint_searcher: ScannSearcher | Sequence[ScannSearcher] | None = None,
        candidates: int = 0,
        table_dir: str | None = None,
        hamming: HammingIndex | None = None,
    ) -> None:
        # Candidates ScaNN rescores for every query whatever its k (``search_batched``): the
        # server sets the deepest page it allows, so every page is cut from one ranking.
        self.candidates = int(candidates)
        shard_params = [ScannParams.from_json(manifest.shard_params(s)) for s in manifest.shards]
        self._shards = _as_shards(searcher, shard_params)
        total = sum(shard.size for shard in self._shards)
        if not isinstance(vectors, StoredVectors):
            vectors = StoredVectors(np.asarray(vectors, dtype=np.float32))
        if not (len(image_ids) == len(uris) == len(vectors) == total):
            raise ValueError(
                f"index parts disagree on the number of images: ids {len(image_ids)}, "
                f"uris {len(uris)}, vectors {len(vectors)}, ScaNN {total}"
            )
        if vectors.dim != manifest.dim:
            raise ValueError(f"vectors have dim {vectors.dim}, manifest {manifest.dim}")
        self.manifest = manifest
        self._params = shard_params[0]
        self._image_ids = list(image_ids)
        self._uris = list(uris)
        self._vectors = vectors
        self._row_of = {image_id: row for row, image_id in enumerate(self._image_ids)}
        self._joint_shards: list[_Shard] = []
        if manifest.joint_index is not None:
            joint_params = [
                ScannParams.from_json(
                    shard.get("scann_params") or manifest.joint_index["scann_params"]
                )
                for shard in manifest.joint_shards
            ]
            joint = _as_shards(joint_searcher, joint_params) if joint_searcher is not None else []
            if [s.size for s in joint] != [s.size for s in self._shards]:
                raise ValueError(
                    f"manifest {manifest.version} lists a joint index; pass its ScaNN searchers "
                    f"over the same {len(image_ids)} images, shard by shard"
                )
            self._joint_shards = joint
        if hamming is not None and len(hamming.codes) != total:
            raise ValueError(f"{len(hamming.codes)} hash codes for {total} indexed images")
        # Image-space queries scan the version's hash codes instead of ScaNN when set.
        self.hamming = hamming
        self._encoder = None
        self._encoder_lock = threading.Lock()
        self._table_dir = table_dir  # the version's folder, for columns read on demand
        self._joint_vectors: StoredVectors | None = None
        self._joint_lock = threading.Lock()
        if encoder is not None:
            self._encoder = self._checked_encoder(encoder)

    @classmethod
    def load(
        cls,
        out_dir_or_manifest: str,
        encoder: ImageEncoder | None = None,
        verify: bool = True,
        candidates: int = 0,
        image_search: str = "scann",
        hamming_rerank: int = DEFAULT_RERANK,
        precision: str | None = None,
    ) -> ImageSearcher:
        """Load the index version published at an output dir (or its ``manifest.json``).

        ``verify`` checks every file's size and SHA-256 against the manifest first (reads the
        whole table once more); ``encoder`` is used for image queries instead of building the
        manifest's encoder lazily; ``candidates``: see ``search_batched``. ``image_search``
        ``"hamming"`` answers image-space queries from the version's hash codes (Hamming top
        ``hamming_rerank``, re-ranked exactly; ValueError when it stores none). ``precision``
        holds the vectors in memory as float32, float16 or int8 whatever the table stores
        (default: as stored; ``index.table.read_stored_table``). Raises
        FileNotFoundError without a manifest,
        ManifestVerificationError on a damaged file, EncoderMismatchError for a wrong encoder.
        """
        if image_search not in IMAGE_SEARCHES:
            raise ValueError(f"image_search must be one of {IMAGE_SEARCHES}, got {image_search!r}")
        out_dir, manifest_path = manifest_location(out_dir_or_manifest)
        manifest = read_manifest(manifest_path)
        if image_search == "hamming" and manifest.hashing is None:
            read_hash_model(out_dir, manifest)  # raises, saying how to index with codes
        if verify:
            verify_files(out_dir, manifest)
        searchers, image_ids, uris = [], [], []
        for shard in manifest.shards:
            searcher, shard_ids, shard_uris = load_shard(out_dir, manifest, shard)
            searchers.append(searcher)
            image_ids.extend(shard_ids)
            uris.extend(shard_uris)
        joint_searchers = None
        if manifest.joint_index is not None:
            joint_searchers = []
            for shard, joint_shard in zip(manifest.shards, manifest.joint_shards, strict=True):
                joint_searcher, joint_ids, _ = load_shard(out_dir, manifest, joint_shard)
                start = sum(s.size() for s in searchers[: len(joint_searchers)])
                if joint_ids != image_ids[start : start + len(joint_ids)]:
                    raise ValueError(
                        f"joint shard {joint_shard['index_dir']} of index version "
                        f"{manifest.version} holds other images than {shard['index_dir']}"
                    )
                joint_searchers.append(joint_searcher)

        table_paths = [join_path(out_dir, entry["path"]) for entry in manifest.files_under("table")]
        try:  # the vectors straight into the index's global row order
            table = read_stored_table(table_paths, precision, row_order=image_ids)
        except ValueError as exc:  # possible with verify=False
            raise ValueError(
                f"the table under {out_dir} does not match index version {manifest.version}: {exc}"
            ) from exc
        if table.encoder_id != manifest.encoder_id:
            raise ValueError(
                f"the table under {out_dir} does not match index version {manifest.version} "
                f"(encoder {table.encoder_id} vs {manifest.encoder_id})"
            )
        hamming = None
        if image_search == "hamming":
            hamming = HammingIndex.load(out_dir, manifest, image_ids, hamming_rerank)
        logger.info(
            "loaded index version %s: %d images in %d shard(s), dim %d, %s",
            manifest.version,
            len(image_ids),
            len(searchers),
            manifest.dim,
            manifest.scann_params.get("kind") if hamming is None else hamming.describe(),
        )
        return cls(
            manifest,
            searchers,
            image_ids,
            uris,
            table.vectors,
            encoder=encoder,
            joint_searcher=joint_searchers,
            candidates=candidates,
            table_dir=out_dir,
            hamming=hamming,
        )

    def __len__(self) -> int:
        return len(self._image_ids)

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def encoder_id(self) -> str:
        return self.manifest.encoder_id

    @property
    def vectors(self) -> StoredVectors:
        """The indexed ``(N, dim)`` unit vectors, row ``i`` for ``hit_for_row(i)``, as held:
        ``vectors[rows]`` decodes rows to float32."""
        return self._vectors

    def row_of(self, image_id: str) -> int | None:
        """The global row of an indexed image, or None."""
        return self._row_of.get(image_id)

    def hit_for_row(self, row: int, score: float) -> SearchHit:
        """The ``SearchHit`` of table row ``row`` (for searches over projected ``vectors``)."""
        return SearchHit(self._image_ids[row], self._uris[row], float(score))

    def search_vectors(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> list[list[SearchHit]]:
        """``(M, dim)`` query vectors -> per query, up to ``k`` hits, best first.

        Query rows are L2-normalised here, so callers may pass raw vectors; ``k`` is clipped
        to the number of indexed images. Every shard is searched for its own top ``k`` and the
        lists are merged by score (``merge_top_k``). ``allowed``, a boolean mask over the
        global rows (a metadata filter), keeps the hits to those rows
        (``index.filtered_search``: exact over few rows, ANN with oversampling over many).
        With ``hamming`` set, the hash codes are scanned instead of ScaNN (filters included:
        only allowed rows compete for the candidates re-ranked).
        """
        if self.hamming is not None:
            hamming, vectors, rerank = self.hamming, self._vectors, self.hamming_rerank
            k = _check_k(k)
            queries = self._checked_queries(queries, self.dim)
            mask = self._checked_allowed(allowed)
            return self._tie_settled(
                lambda depth: hamming.ranked(queries, depth, vectors, mask, rerank), k
            )
        return self._search(self._shards, queries, k, self.dim, allowed, self._vectors_of)

    @property
    def hamming_rerank(self) -> int:
        """Rows each Hamming-searched query re-ranks: the index's R, or the server's page
        depth (``candidates``) when deeper, so every page of a query is cut from one ranking
        as it is with ScaNN."""
        if self.hamming is None:
            raise ValueError("this searcher does not search hash codes")
        return max(self.hamming.rerank, self.candidates)

    def _vectors_of(self, rows: np.ndarray) -> np.ndarray:
        return self._vectors[rows]

    def _search(
        self,
        shards: Sequence[_Shard],
        queries: np.ndarray,
        k: int,
        dim: int,
        allowed: np.ndarray | None = None,
        vectors_of: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> list[list[SearchHit]]:
        k = _check_k(k)
        queries = self._checked_queries(queries, dim)
        allowed = self._checked_allowed(allowed)
        if allowed is not None:
            k = min(k, len(self))
            found = filtered_search(
                queries, allowed, k, lambda q, n: self._ranked(shards, q, n), vectors_of
            )
            return self._hits(found.indices, found.scores, k)
        return self._tie_settled(lambda depth: self._ranked(shards, queries, depth), k)

    @staticmethod
    def _checked_queries(queries: np.ndarray, dim: int) -> np.ndarray:
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != dim:
            raise ValueError(f"queries must have shape (M, {dim}), got {queries.shape}")
        if not np.isfinite(queries).all():
            raise ValueError("queries contain NaN or infinite values")
        return l2_normalize(queries)

    def _checked_allowed(self, allowed: np.ndarray | None) -> np.ndarray | None:
        if allowed is None:
            return None
        allowed = np.asarray(allowed, dtype=bool)
        if allowed.shape != (len(self),):
            raise ValueError(f"allowed must be a ({len(self)},) mask, got {allowed.shape}")
        return allowed

    def _tie_settled(
        self, ranked: Callable[[int], tuple[np.ndarray, np.ndarray]], k: int
    ) -> list[list[SearchHit]]:
        """The top ``k`` of ``ranked(depth)`` (rows and scores, best first), searched deeper
        while the ``k``-th score ties with the next.

        One more than asked: a tie between the k-th and the next result is settled by the
        lower row (searching deeper until the tie is inside the answer), so the top k is
        always a prefix of the top k + n and pages never repeat or skip a result.
        """
        k = min(k, len(self))
        depth = min(k + 1, len(self))
        while True:
            indices, scores = ranked(depth)
            if depth >= len(self) or not _tied_at(scores, k):
                break
            depth = min(2 * depth, len(self))
        return self._hits(indices, scores, k)

    def _hits(self, indices: np.ndarray, scores: np.ndarray, k: int) -> list[list[SearchHit]]:
        return [
            [
                SearchHit(self._image_ids[row], self._uris[row], float(score))
                for row, score in zip(row_indices[:k], row_scores[:k], strict=True)
                if row >= 0  # -1: ScaNN found fewer candidates than asked for
            ]
            for row_indices, row_scores in zip(indices, scores, strict=True)
        ]

    def _ranked(
        self, shards: Sequence[_Shard], queries: np.ndarray, depth: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each shard's top ``depth`` -> global rows and scores, by score then lower row."""
        found = search_shards(shards, queries, depth, self.candidates)
        return merge_top_k(
            [np.where(i >= 0, i + s.offset, -1) for (i, _), s in zip(found, shards, strict=True)],
            [scores for _, scores in found],
            depth,
        )

    @property
    def joint_index(self) -> dict | None:
        """The manifest's joint index entry (model, model_version, dim, ...), or None."""
        return self.manifest.joint_index

    def search_joint_vectors(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> list[list[SearchHit]]:
        """``(M, joint dim)`` vectors in the joint model's space -> up to ``k`` hits each.

        Searches the joint ScaNN shard (the table's ``joint_embedding``); ValueError when this
        index version has none. ``allowed``: as for ``search_vectors``.
        """
        if not self._joint_shards:
            raise ValueError(f"index version {self.manifest.version} has no joint index")
        dim = self.joint_index["dim"]
        return self._search(self._joint_shards, queries, k, dim, allowed, self._joint_vectors_of)

    def _joint_vectors_of(self, rows: np.ndarray) -> np.ndarray:
        """Stored joint vectors of ``rows``, for exact filtered search in the joint space.

        Read from the table on the first filtered query that needs them, not at load: only
        selective filters score rows exactly, and the joint column is N x joint dim floats
        (held at the image vectors' precision).
        """
        with self._joint_lock:  # not the encoder's: a model build must not hold this up
            if self._joint_vectors is None:
                self._joint_vectors = self._read_joint_vectors()
        return self._joint_vectors[rows]

    def _read_joint_vectors(self) -> StoredVectors:
        if self._table_dir is None:
            raise ValueError("this searcher was not loaded from a folder: no joint vectors")
        return read_stored_column(
            self._table_dir, JOINT_EMBEDDING, self._image_ids, self._vectors.precision
        )

    def search_vector(
        self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> list[SearchHit]:
        """One ``(dim,)`` query vector -> up to ``k`` hits, best first."""
        vector = np.asarray(vector, dtype=np.float32)
        if vector.shape != (self.dim,):
            raise ValueError(f"a query vector must have shape ({self.dim},), got {vector.shape}")
        return self.search_vectors(vector[np.newaxis], k, allowed)[0]

    def similar_to_image_id(
        self, image_id: str, k: int, allowed: np.ndarray | None = None
    ) -> list[SearchHit]:
        """The ``k`` indexed images nearest to an indexed image, without the image itself."""
        k = _check_k(k)
        row = self._row_of.get(image_id)
        if row is None:
            raise KeyError(
                f"image_id {image_id!r} is not in index version {self.manifest.version} "
                f"({len(self)} images, encoder {self.encoder_id})"
            )
        # One extra result, because the image normally finds itself first; filter by id, not
        # by position, since an identical vector may tie with it.
        hits = self.search_vector(self._vectors[row], min(k + 1, len(self)), allowed)
        return [hit for hit in hits if hit.image_id != image_id][:k]

    def search_image_bytes(self, data: bytes, k: int) -> list[SearchHit]:
        """An encoded image (JPEG, PNG, ...) -> its ``k`` nearest indexed images.

        Raises ``encoders.imaging.ImageRejected`` (a ValueError) for bytes that are not a
        usable image.
        """
        from encoders.imaging import decode_image  # lazy: needs Pillow, only image queries do

        k = _check_k(k)
        encoder = self.image_encoder()
        pixels, _, _ = decode_image(data, size=encoder.input_size)
        vector = encoder.encode(pixels[np.newaxis])[0]
        return self.search_vector(vector, k)

    def search_image_path(self, path: str, k: int) -> list[SearchHit]:
        """An image file (local path or gs://) -> its ``k`` nearest indexed images."""
        with open_file(path) as f:
            data = f.read()
        return self.search_image_bytes(data, k)

    def image_encoder(self) -> ImageEncoder:
        """The encoder for image queries: the one passed in, else built from the manifest once."""
        with self._encoder_lock:  # concurrent first queries must not build the model twice
            if self._encoder is None:
                # Lazy: building a real model loads TensorFlow and weights, which vector-only
                # callers never need.
                from encoders.registry import create_image_encoder

                spec = EncoderSpec.from_json(self.manifest.encoder_spec)
                self._encoder = self._checked_encoder(create_image_encoder(spec))
            return self._encoder

    def _checked_encoder(self, encoder: ImageEncoder) -> ImageEncoder:
        if encoder.encoder_id != self.manifest.encoder_id or encoder.dim != self.manifest.dim:
            raise EncoderMismatchError(
                f"encoder {encoder.encoder_id} (dim {encoder.dim}) cannot query index version "
                f"{self.manifest.version}, whose vectors come from {self.manifest.encoder_id} "
                f"(dim {self.manifest.dim})"
            )
        return encoder
