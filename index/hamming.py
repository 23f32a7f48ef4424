"""Binary codes for semantic hashing: pack, Hamming top-R, exact re-ranking, the hash encoder.

Pure NumPy, shared by the trainer (``training.hashing``), the model store and search:

- ``HashEncoder``: ``z = x @ kernel + bias (+ an optional ReLU MLP branch)``, bit ``j`` is
  ``z_j > 0``. ITQ is the linear part alone (PCA then a rotation); the autoencoder's encoder adds
  the MLP branch. Whoever trained it, encoding is this one NumPy function.
- ``pack_bits``/``unpack_bits``: ``(N, bits)`` 0/1 <-> ``(N, bits / 8)`` uint8, most significant
  bit first (``np.packbits``' default order), so a code is ``bits / 8`` bytes per image.
- ``CodeColumns``/``hamming_distances``/``hamming_top_r``: XOR then popcount
  (``np.bitwise_count``, NumPy >= 2, or a 256-entry table on older NumPy) over the codes laid
  out one 64-bit word per contiguous column; the top R within a cut distance guessed from a
  sample and raised until it holds R rows, ties broken by the lower row (deterministic).
- ``rerank``/``hamming_search``: the R candidates rescored exactly with the float embeddings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from index.stored_vectors import StoredVectors

KIND_HASHING = "hashing"

# Popcount of every byte, for NumPy without bitwise_count (< 2.0).
_POPCOUNT_TABLE = np.array([bin(value).count("1") for value in range(256)], dtype=np.uint8)

_HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")


def check_bits(bits: int) -> int:
    """``bits`` if it is a positive multiple of 8 (codes are whole bytes), else ValueError."""
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or bits <= 0 or bits % 8:
        raise ValueError(f"code length must be a positive multiple of 8 bits, got {bits!r}")
    return int(bits)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """``(N, b)`` booleans or 0/1 -> ``(N, b / 8)`` uint8, most significant bit first."""
    bits = np.asarray(bits)
    if bits.ndim != 2:
        raise ValueError(f"bits must be a (N, b) matrix, got shape {bits.shape}")
    check_bits(bits.shape[1])
    return np.packbits(bits.astype(bool), axis=1)


def unpack_bits(codes: np.ndarray, bits: int | None = None) -> np.ndarray:
    """``(N, b / 8)`` uint8 -> ``(N, b)`` uint8 0/1 (the inverse of ``pack_bits``)."""
    codes = _as_codes("codes", codes)
    unpacked = np.unpackbits(codes, axis=1)
    if bits is not None and check_bits(bits) != unpacked.shape[1]:
        raise ValueError(f"codes hold {unpacked.shape[1]} bits, not {bits}")
    return unpacked


def _as_codes(name: str, codes: np.ndarray, width: int | None = None) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.dtype != np.uint8 or codes.ndim != 2:
        raise ValueError(
            f"{name} must be a (N, bytes) uint8 matrix, got {codes.dtype} {codes.shape}"
        )
    if width is not None and codes.shape[1] != width:
        raise ValueError(f"{name} are {codes.shape[1]} bytes wide, the database {width}")
    return np.ascontiguousarray(codes)


def _words(codes: np.ndarray) -> np.ndarray:
    """The same bytes as uint64 words when the width allows: 8x fewer XORs and popcounts."""
    return codes.view(np.uint64) if codes.shape[1] % 8 == 0 else codes


def _popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each element of a 1-d uint8 or uint64 array -> uint8 counts."""
    if _HAS_BITWISE_COUNT:
        return np.bitwise_count(values)
    per_byte = _POPCOUNT_TABLE[values.view(np.uint8)].reshape(len(values), values.itemsize)
    return per_byte.sum(axis=1, dtype=np.uint8)


@dataclasses.dataclass(frozen=True, eq=False)
class CodeColumns:
    """Packed codes laid out for scanning: one contiguous array per 64-bit word of the code
    (per byte when the width is not a multiple of 8 bytes).

    Row-major ``(N, words)`` would make the per-row popcount sum a reduction over a 1-4 long
    axis, which NumPy runs ~10x slower than adding whole columns (measured at 1M rows).
    """

    columns: np.ndarray  # (words, N) uint64 or (bytes, N) uint8
    width: int  # bytes per code

    @classmethod
    def from_packed(cls, codes: np.ndarray) -> CodeColumns:
        codes = _as_codes("codes", codes)
        return cls(np.ascontiguousarray(_words(codes).T), codes.shape[1])

    def __len__(self) -> int:
        return int(self.columns.shape[1])

    def distances(self, query: np.ndarray) -> np.ndarray:
        """Hamming distance ``(N,)`` int32 from one packed ``query`` ``(bytes,)`` to every row."""
        query = _as_codes("query", np.asarray(query).reshape(1, -1), self.width)
        words = _words(query)[0]
        total = _popcount(np.bitwise_xor(self.columns[0], words[0])).astype(np.int32)
        for column, word in zip(self.columns[1:], words[1:], strict=True):
            total += _popcount(np.bitwise_xor(column, word))
        return total


def _columns(database: np.ndarray | CodeColumns) -> CodeColumns:
    return database if isinstance(database, CodeColumns) else CodeColumns.from_packed(database)


def hamming_distances(database: np.ndarray | CodeColumns, query: np.ndarray) -> np.ndarray:
    """Hamming distance ``(N,)`` int32 from one packed ``query`` ``(bytes,)`` to every row."""
    return _columns(database).distances(query)


# _top_r_of guesses the cut distance from every n/_SAMPLE-th row's distance.
_SAMPLE = 4096


def _top_r_of(distances: np.ndarray, r: int, max_distance: int) -> np.ndarray:
    """The ``r`` smallest distances' rows, by (distance, row), without sorting all N.

    A cut guessed from a sample, raised until at least ``r`` rows lie within it, keeps every
    row of the answer; only those candidates are sorted. (A full ``np.bincount`` of the
    distances costs ~5x the scan itself at 1M rows; this costs one comparison pass.)
    """
    n = len(distances)
    if r >= n:
        return np.argsort(distances, kind="stable")
    sample = distances[:: max(1, n // _SAMPLE)]
    wanted = min(len(sample), int(np.ceil(1.5 * len(sample) * r / n)) + 8)
    cut = int(np.partition(sample, wanted - 1)[wanted - 1])
    candidates = np.flatnonzero(distances <= cut)
    while len(candidates) < r and cut < max_distance:
        cut += 1
        candidates = np.flatnonzero(distances <= cut)
    # Candidates are in row order, so the stable sort keeps the lower row first among ties.
    return candidates[np.argsort(distances[candidates], kind="stable")[:r]]


def hamming_top_r(
    database: np.ndarray | CodeColumns,
    queries: np.ndarray,
    r: int,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``r`` nearest rows of each packed query: ``(rows int64 (M, r'), distances int32)``.

    ``database``: packed ``(N, bytes)`` codes, or ``CodeColumns`` made once from them (what a
    searcher should hold: the layout is rebuilt on every call otherwise). ``allowed``: a
    ``(N,)`` boolean mask (a filter); only its rows are returned. ``r' = min(r, N)`` (or the
    allowed rows); nearest first, equal distances by the lower row.
    """
    columns = _columns(database)
    queries = _as_codes("queries", queries, columns.width)
    if isinstance(r, bool) or not isinstance(r, int | np.integer) or r < 1:
        raise ValueError(f"r must be a positive integer, got {r!r}")
    max_distance = 8 * columns.width
    allowed_rows = None
    if allowed is not None:
        allowed = np.asarray(allowed, dtype=bool)
        if allowed.shape != (len(columns),):
            raise ValueError(f"allowed must be a ({len(columns)},) mask, got {allowed.shape}")
        allowed_rows = np.flatnonzero(allowed)  # ascending: ties still go to the lower row
    r = min(int(r), len(columns) if allowed_rows is None else len(allowed_rows))
    rows = np.empty((queries.shape[0], r), dtype=np.int64)
    distances = np.empty((queries.shape[0], r), dtype=np.int32)
    if r == 0:
        return rows, distances
    for i, query in enumerate(queries):
        dist = columns.distances(query)
        if allowed_rows is None:
            top = _top_r_of(dist, r, max_distance)
            rows[i], distances[i] = top, dist[top]
        else:
            dist = dist[allowed_rows]
            top = _top_r_of(dist, r, max_distance)
            rows[i], distances[i] = allowed_rows[top], dist[top]
    return rows, distances


def rerank(
    embeddings: np.ndarray | StoredVectors, query: np.ndarray, candidates: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of ``candidates`` (rows of ``embeddings``, a matrix or a server's held
    vectors) by exact dot product with ``query``: ``(rows int64 (k',), scores float32 (k',))``,
    best first, ties by the lower row."""
    candidates = np.asarray(candidates, dtype=np.int64)
    scores = embeddings[candidates] @ np.asarray(query, dtype=np.float32)
    order = np.lexsort((candidates, -scores))[: min(int(k), len(candidates))]
    return candidates[order], scores[order].astype(np.float32)


def hamming_search(
    codes: np.ndarray | CodeColumns,
    embeddings: np.ndarray,
    queries: np.ndarray,
    query_codes: np.ndarray,
    k: int,
    r: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of each query: Hamming top ``r`` over ``codes``, re-ranked with ``embeddings``.

    ``(rows int64 (M, k'), scores float32 (M, k'))``, ``k' = min(k, r, N)``.
    """
    if len(codes) != len(embeddings):
        raise ValueError(f"{len(codes)} codes for {len(embeddings)} embeddings")
    candidates, _ = hamming_top_r(_columns(codes), query_codes, max(int(r), int(k)))
    k = min(int(k), candidates.shape[1])
    rows = np.empty((len(candidates), k), dtype=np.int64)
    scores = np.empty((len(candidates), k), dtype=np.float32)
    for i, row in enumerate(candidates):
        rows[i], scores[i] = rerank(embeddings, queries[i], row, k)
    return rows, scores


@dataclasses.dataclass(frozen=True, eq=False)
class HashEncoder:
    """Embeddings ``(N, dim)`` -> packed codes ``(N, bits / 8)``.

    ``z = x @ kernel + bias + mlp(x)``, where ``mlp`` is ReLU layers ``(W, b)`` ending in a
    linear layer to ``bits`` (empty for ITQ); bit ``j`` is set when ``z_j > 0``.
    """

    method: str  # "itq" or "autoencoder"
    kernel: np.ndarray  # (dim, bits)
    bias: np.ndarray  # (bits,)
    mlp: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
    encoder_id: str = ""  # the image encoder whose embeddings it codes

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.bias.shape != (self.bits,):
            raise ValueError(f"bias has shape {self.bias.shape}, expected ({self.bits},)")
        width = self.dim
        for i, (weight, bias) in enumerate(self.mlp):
            if weight.shape[0] != width or bias.shape != (weight.shape[1],):
                raise ValueError(f"mlp layer {i} has shapes {weight.shape}/{bias.shape}")
            width = weight.shape[1]
        if self.mlp and width != self.bits:
            raise ValueError(f"the mlp ends at width {width}, not {self.bits} bits")

    @property
    def dim(self) -> int:
        return int(self.kernel.shape[0])

    @property
    def bits(self) -> int:
        return int(self.kernel.shape[1])

    @property
    def bytes_per_code(self) -> int:
        return self.bits // 8

    def project(self, embeddings: np.ndarray) -> np.ndarray:
        """The real-valued ``z`` ``(N, bits)`` float32 whose signs are the bits."""
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"embeddings must be (N, {self.dim}), got {x.shape}")
        z = x @ self.kernel + self.bias
        if self.mlp:
            hidden = x
            for i, (weight, bias) in enumerate(self.mlp):
                hidden = hidden @ weight + bias
                if i < len(self.mlp) - 1:
                    hidden = np.maximum(hidden, 0.0)
            z = z + hidden
        return z.astype(np.float32)

    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        """Packed codes ``(N, bits / 8)`` uint8."""
        return pack_bits(self.project(embeddings) > 0)

    def config(self) -> dict[str, Any]:
        return {
            "kind": KIND_HASHING,
            "method": self.method,
            "dim": self.dim,
            "bits": self.bits,
            "mlp_layers": len(self.mlp),
            "encoder_id": self.encoder_id,
        }

    def weights(self) -> dict[str, np.ndarray]:
        arrays = {"kernel": self.kernel, "bias": self.bias}
        for i, (weight, bias) in enumerate(self.mlp):
            arrays[f"mlp_{i}_kernel"], arrays[f"mlp_{i}_bias"] = weight, bias
        return arrays

    @classmethod
    def from_arrays(
        cls, config: Mapping[str, Any], weights: Mapping[str, np.ndarray]
    ) -> HashEncoder:
        if config.get("kind") != KIND_HASHING:
            raise ValueError(f"not a {KIND_HASHING!r} model config: kind {config.get('kind')!r}")
        mlp = tuple(
            (np.asarray(weights[f"mlp_{i}_kernel"]), np.asarray(weights[f"mlp_{i}_bias"]))
            for i in range(int(config.get("mlp_layers", 0)))
        )
        encoder = cls(
            method=str(config["method"]),
            kernel=np.asarray(weights["kernel"]),
            bias=np.asarray(weights["bias"]),
            mlp=mlp,
            encoder_id=str(config.get("encoder_id", "")),
        )
        if (encoder.dim, encoder.bits) != (config["dim"], config["bits"]):
            raise ValueError(
                f"weights are {encoder.dim} -> {encoder.bits} bits, config says "
                f"{config['dim']} -> {config['bits']}"
            )
        return encoder
