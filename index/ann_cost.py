"""What ScaNN searchers and the plain storage options cost in memory, in bytes per vector.

Pure arithmetic over the dimension and ``ScannParams``, kept apart from the tuner
(``index.ann_tuning``) because capacity planning and the storage benchmarks use it without
building or timing any searcher; the tuner only asks it what each candidate costs.
"""

from __future__ import annotations

import math

from index.scann_index import DIMS_PER_BLOCK, ScannParams

# In-memory storage model (bytes per vector), see memory_per_million.
_FLOAT32_BYTES = 4

_AH_BITS_PER_BLOCK = 4  # LUT16: 16 centres per block

_LEAF_INDEX_BYTES = 4  # each datapoint is listed in its leaf as an int32


def ah_code_bytes(dim: int, dims_per_block: int = DIMS_PER_BLOCK) -> float:
    """Bytes of one vector's AH code: ceil(dim / dims_per_block) blocks of 4 bits (LUT16)."""
    return math.ceil(dim / dims_per_block) * _AH_BITS_PER_BLOCK / 8


def memory_per_million(dim: int, dims_per_block: int = DIMS_PER_BLOCK) -> dict[str, float]:
    """Bytes that one million ``dim``-d vectors cost in memory, per storage option.

    - ``float32``: 4 bytes a dimension, what the embedding table and ScaNN's exact reorder hold.
    - ``float16`` / ``bfloat16``: 2 bytes a dimension. float16 keeps 10 mantissa bits, plenty for
      unit vectors (components in [-1, 1]); bfloat16 (ScaNN's reorder option) keeps 7.
    - ``int8``: 1 byte a dimension with one float scale per dimension shared by all vectors
      (ScaNN's fixed-point scheme); the 4 * dim bytes of scales are not per vector.
    - ``scann_ah_codes``: asymmetric-hashing codes, ``dims_per_block`` dims per block and 16
      centres (4 bits) per block: dim / 4 bytes at 2 dims per block. On disk ScaNN stores one
      byte per block (``hashed_dataset.npy``); in memory LUT16 packs two blocks a byte.
    - ``scann_tree_ah_*``: a searcher as built by ``build_searcher``: AH codes + a 4-byte leaf
      index per vector + the reorder copy (``float32`` today; ``int8``/``bfloat16`` are ScaNN
      reorder options not yet exposed by ``ScannParams``; ``no_reorder`` has none). Leaf centres
      (num_leaves * dim * 4 bytes in all) are left out: at ~sqrt(N) leaves that is 4 * dim /
      sqrt(N) bytes per vector, 0.1% of the float32 copy at a million vectors.

    Example, dim 1280: float32 4.77 GiB, float16 2.38 GiB, int8 1.19 GiB, AH codes 305 MiB,
    tree-AH with float32 reorder 5.08 GiB per million vectors.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if (
        isinstance(dims_per_block, bool)
        or not isinstance(dims_per_block, int)
        or dims_per_block < 1
    ):
        raise ValueError(f"dims_per_block must be a positive integer, got {dims_per_block!r}")
    per_vector = {
        "float32": 4.0 * dim,
        "float16": 2.0 * dim,
        "bfloat16": 2.0 * dim,
        "int8": 1.0 * dim,
        "scann_ah_codes": ah_code_bytes(dim, dims_per_block),
    }
    tree = per_vector["scann_ah_codes"] + _LEAF_INDEX_BYTES
    per_vector["scann_tree_ah_no_reorder"] = tree
    per_vector["scann_tree_ah_int8_reorder"] = tree + per_vector["int8"]
    per_vector["scann_tree_ah_bfloat16_reorder"] = tree + per_vector["bfloat16"]
    per_vector["scann_tree_ah_float32_reorder"] = tree + per_vector["float32"]
    return {name: value * 1_000_000 for name, value in per_vector.items()}


def bytes_per_vector(params: ScannParams, dim: int, num_vectors: int) -> float:
    """In-memory bytes per vector of the searcher ``build_searcher(params)`` makes.

    Brute force holds the float32 vectors; tree-AH adds AH codes, a leaf index and its share of
    the leaf centres to the float32 reorder copy (see ``memory_per_million``).
    """
    if params.kind == "brute_force":
        return float(_FLOAT32_BYTES * dim)
    centres = params.num_leaves * dim * _FLOAT32_BYTES / max(1, num_vectors)
    return (
        _FLOAT32_BYTES * dim
        + ah_code_bytes(dim, params.dims_per_block)
        + _LEAF_INDEX_BYTES
        + centres
    )
