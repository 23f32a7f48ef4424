"""A version's vectors kept in memory as compactly as they are stored, decoded on read.

Serving reads stored vectors a few rows at a time (similar-to-id, exact scores under a selective
filter, Hamming re-ranking, explanations) and only rarely as a whole (a dual tower's projection
of the index, fusion's exact scores). Held decoded they are ``N x dim`` float32, the largest part
of a served version (1M x 1280 is 4.9 GiB, beside ScaNN's own copy); held as the table stores
them they take 2 (float16) or 1 (int8 codes and a float32 scale per row) bytes a dimension.
Every read decodes exactly as ``index.table.read_embedding_table`` does, so a row read here is
the row the index was built from, bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from encoders.base import l2_normalize
from index.schema import EMBEDDING_STORAGES, dequantize_int8, quantize_int8

# Rows decoded at a time by whole-table passes: 16k x 1280 float32 is 80 MiB of scratch.
CHUNK_ROWS = 16_384

_DTYPES = {"float32": np.float32, "float16": np.float16, "int8": np.int8}


def decode(values: np.ndarray, scales: np.ndarray | None = None) -> np.ndarray:
    """Stored rows -> float32: float32 as they are; float16 and int8 (with their per-row
    ``scales``) widened and renormalised, since rounding moves a row's norm (int8: ~1e-3) and
    the index scores by dot product, the cosine only for unit rows."""
    if values.dtype == np.float32:
        return values
    if values.dtype == np.int8:
        if scales is None:
            raise ValueError("int8 vectors need their per-row scales")
        vectors = dequantize_int8(values, scales)
    else:
        vectors = values.astype(np.float32)
    return l2_normalize(vectors)


class StoredVectors:
    """``N x dim`` vectors as ``float32``, ``float16`` or ``int8`` + per-row scale (read-only).

    ``vectors[rows]`` is the decoded float32 rows (an int gives one ``(dim,)`` row); ``dot``
    and ``map_chunks`` are whole-table passes that decode ``CHUNK_ROWS`` rows at a time, so no
    decoded copy of the whole table is ever made. Safe to read from several threads.
    """

    def __init__(self, values: np.ndarray, scales: np.ndarray | None = None) -> None:
        values = np.asarray(values)
        if values.ndim != 2:
            raise ValueError(f"stored vectors must be a matrix, got shape {values.shape}")
        precision = next((p for p, t in _DTYPES.items() if values.dtype == t), None)
        if precision is None:
            raise ValueError(f"stored vectors must be {EMBEDDING_STORAGES}, not {values.dtype}")
        if (precision == "int8") != (scales is not None):
            raise ValueError("int8 vectors, and only they, come with per-row scales")
        if scales is not None:
            scales = np.ascontiguousarray(scales, dtype=np.float32)
            if scales.shape != (len(values),):
                raise ValueError(f"{len(values)} int8 rows need as many scales, got {scales.shape}")
            scales.flags.writeable = False
        values = np.ascontiguousarray(values)
        values.flags.writeable = False
        self.precision = precision
        self._values, self._scales = values, scales

    @classmethod
    def encode(cls, vectors: np.ndarray, precision: str) -> StoredVectors:
        """Float32 ``vectors`` held at ``precision`` (one of ``EMBEDDING_STORAGES``).

        Unit rows stay unit rows on read: compact ones are renormalised by ``decode``.
        """
        if precision not in _DTYPES:
            raise ValueError(f"precision must be one of {EMBEDDING_STORAGES}, got {precision!r}")
        vectors = np.asarray(vectors, dtype=np.float32)
        if precision == "int8":
            codes, scales = quantize_int8(vectors)
            return cls(codes, scales)
        return cls(vectors.astype(_DTYPES[precision], copy=False))

    @classmethod
    def concat(cls, parts: Sequence[StoredVectors], precision: str | None = None) -> StoredVectors:
        """The parts' rows in order, at ``precision``. By default, the parts' own when they
        share one, else float32: the only one that holds every other's rows exactly (an int8
        row's decoded values are not float16 values)."""
        if not parts:
            raise ValueError("no vectors to concatenate")
        if precision is None:
            own = {p.precision for p in parts}
            precision = own.pop() if len(own) == 1 else "float32"
        parts = [p.as_precision(precision) for p in parts]
        values = np.concatenate([p._values for p in parts])
        scales = None if precision != "int8" else np.concatenate([p._scales for p in parts])
        return cls(values, scales)

    @classmethod
    def assemble(
        cls,
        rows: int,
        dim: int,
        precision: str,
        pieces: Iterable[tuple[np.ndarray, StoredVectors]],
    ) -> StoredVectors:
        """``rows`` vectors at ``precision`` from ``(positions, part)`` pieces, each part's
        rows placed at its positions, converted one piece at a time: one matrix is allocated,
        and no larger scratch than a piece. ValueError unless every row was placed once."""
        if precision not in _DTYPES:
            raise ValueError(f"precision must be one of {EMBEDDING_STORAGES}, got {precision!r}")
        values = np.empty((rows, dim), _DTYPES[precision])
        scales = np.empty(rows, np.float32) if precision == "int8" else None
        placed = np.zeros(rows, bool)
        for positions, part in pieces:
            part = part.as_precision(precision)
            if part.dim != dim or len(positions) != len(part):
                raise ValueError(f"a piece of {part.shape} vectors for {len(positions)} rows")
            values[positions] = part._values
            if scales is not None:
                scales[positions] = part._scales
            placed[positions] = True
        if not placed.all():
            raise ValueError(f"{int((~placed).sum())} of {rows} rows were never placed")
        return cls(values, scales)

    def as_precision(self, precision: str) -> StoredVectors:
        """These vectors at ``precision``: themselves when already there, else re-encoded."""
        if precision == self.precision:
            return self
        if precision not in _DTYPES:
            raise ValueError(f"precision must be one of {EMBEDDING_STORAGES}, got {precision!r}")
        if not len(self):
            return StoredVectors.encode(np.zeros(self.shape, np.float32), precision)
        blocks = [StoredVectors.encode(block, precision) for block in self.chunks()]
        return StoredVectors.concat(blocks, precision)

    def take(self, rows: np.ndarray) -> StoredVectors:
        """These vectors reordered (or subset) by ``rows``, still stored."""
        rows = np.asarray(rows, dtype=np.int64)
        scales = None if self._scales is None else self._scales[rows]
        return StoredVectors(self._values[rows], scales)

    @property
    def shape(self) -> tuple[int, int]:
        return self._values.shape

    @property
    def dim(self) -> int:
        return int(self._values.shape[1])

    def __len__(self) -> int:
        return len(self._values)

    @property
    def nbytes(self) -> int:
        """Bytes held: the values and, for int8, the scales."""
        return int(self._values.nbytes + (0 if self._scales is None else self._scales.nbytes))

    def __getitem__(self, rows) -> np.ndarray:
        """Decoded float32 rows (a fresh array; one int gives one ``(dim,)`` row)."""
        if isinstance(rows, int | np.integer):
            return self[np.asarray([rows], dtype=np.int64)][0]
        values = self._values[rows]
        scales = None if self._scales is None else self._scales[rows]
        if values.dtype == np.float32:
            return np.array(values, dtype=np.float32)  # a copy: callers may not write ours
        return decode(values, scales)

    def chunks(self, rows: int | None = None) -> Iterator[np.ndarray]:
        """The decoded rows, ``rows`` (default ``CHUNK_ROWS``) at a time, in order."""
        rows = rows or CHUNK_ROWS
        for start in range(0, len(self), rows):
            yield self[slice(start, start + rows)]

    def decoded(self) -> np.ndarray:
        """All rows as one float32 matrix: a full copy, for small tables and tests."""
        if not len(self):
            return np.zeros(self.shape, np.float32)
        return np.concatenate(list(self.chunks()))

    def dot(self, queries: np.ndarray) -> np.ndarray:
        """``(Q, N)`` dot products of ``queries`` ``(Q, dim)`` with every row."""
        queries = np.asarray(queries, dtype=np.float32)
        out = np.empty((len(queries), len(self)), np.float32)
        start = 0
        for block in self.chunks():
            out[:, start : start + len(block)] = queries @ block.T
            start += len(block)
        return out

    def map_chunks(self, fn) -> np.ndarray:
        """``fn`` (decoded rows -> rows) over every chunk, the results stacked in row order."""
        return np.concatenate([np.asarray(fn(block)) for block in self.chunks()])
