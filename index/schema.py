"""The embedding table's columns: the contract between the index job, serving and training.

The index job writes these Parquet columns (``embedding_table_schema``); ``index.table`` reads
them back for the ScaNN build, serving and the trainers. Compact storages (float16, int8 with a
per-row scale) are converted here in both directions, so every reader gets float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from index.metadata_columns import ATTRIBUTES, MetadataColumn, attributes_type, columns_spec

JOINT_EMBEDDING = "joint_embedding"

JOINT_MODEL = "joint_model"

EMBEDDING_SCALE = "embedding_scale"

# How the table stores ``embedding`` (``--embedding_storage``); readers always get float32:
# - float32: 4 bytes a dimension, exact.
# - float16: 2 bytes a dimension; unit-vector components lose at most 2**-11 relative (~5e-4).
# - int8: 1 byte a dimension + a float32 ``embedding_scale`` per row (max |component| / 127);
#   each component is off by at most scale / 2. Per row, not per column: rows of one encoder
#   differ in their largest component, and one shared scale would waste bits on most rows.
EMBEDDING_STORAGES = ("float32", "float16", "int8")

# The Arrow element type of each storage of ``embedding``.
STORAGE_TYPES = {"float32": pa.float32(), "float16": pa.float16(), "int8": pa.int8()}


def quantize_int8(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(N, dim)`` floats -> ``(codes int8 (N, dim), scales float32 (N,))``, per-row scale."""
    vectors = np.asarray(vectors, dtype=np.float32)
    largest = np.abs(vectors).max(axis=1) if vectors.size else np.zeros(len(vectors), np.float32)
    # An all-zero row keeps scale 1 (its codes are all 0) instead of dividing by zero.
    scales = np.where(largest > 0, largest / 127.0, 1.0).astype(np.float32)
    codes = np.clip(np.rint(vectors / scales[:, None]), -127, 127).astype(np.int8)
    return codes, scales


def dequantize_int8(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The float32 vectors that ``quantize_int8`` codes stand for."""
    return codes.astype(np.float32) * np.asarray(scales, np.float32)[:, None]


def compact_row(row: dict[str, Any], storage: str) -> dict[str, Any]:
    """A table row (float32 ``embedding``) as ``storage`` stores it: same keys, + scale for int8."""
    if storage not in EMBEDDING_STORAGES:
        raise ValueError(f"embedding storage must be one of {EMBEDDING_STORAGES}, got {storage!r}")
    if storage == "float32":
        return row
    vector = np.asarray(row["embedding"], dtype=np.float32)
    if storage == "float16":
        return {**row, "embedding": vector.astype(np.float16).astype(np.float32).tolist()}
    codes, scales = quantize_int8(vector[np.newaxis])
    return {**row, "embedding": codes[0].tolist(), EMBEDDING_SCALE: float(scales[0])}


def expanded_row(row: dict[str, Any]) -> dict[str, Any]:
    """A stored table row back in the float32 form ``compact_row`` takes (no scale column).

    Rows reused from an earlier version go through the writer's ``compact_row`` again, so they
    must re-enter as float32: an int8 row re-quantizes to the same codes (its largest code is
    127, so only the scale moves, by the renormalisation), and a change of
    ``--embedding_storage`` between runs converts reused rows instead of writing int8 codes
    into a float column.
    """
    if EMBEDDING_SCALE not in row:
        return row
    row = dict(row)
    scale = row.pop(EMBEDDING_SCALE)
    if scale is None:  # a float row of a table that mixes storages
        return row
    codes = np.asarray(row["embedding"], dtype=np.int8)[np.newaxis]
    vector = dequantize_int8(codes, np.asarray([scale]))[0]
    # Unit length, as the table reader decodes it (rounding moves an int8 row's norm by ~1e-3).
    norm = float(np.linalg.norm(vector))
    row["embedding"] = (vector / norm if norm > 0 else vector).tolist()
    return row


TAGS = "tags"

TAG_MODEL = "tag_model"

CAPTION = "caption"

CAPTION_SCORE = "caption_score"

CAPTION_MODEL = "caption_model"

# Every distinct caption of the row's beam search, best first (the first is ``caption``):
# text matching scores an image by its best-matching caption, which finds more of the photos a
# query describes than the top beam alone (``encoders.text_match``).
CAPTIONS = "captions"

CAPTIONS_TYPE = pa.list_(pa.struct([("text", pa.string()), ("score", pa.float32())]))


def caption_list(row: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A row's ``captions`` (``[{"text", "score"}]``, best first); for a row of a table written
    before that column, its one ``caption``; None for a row without captions."""
    if row.get(CAPTIONS) is not None:
        return row[CAPTIONS]
    if row.get(CAPTION) is None:
        return None
    return [{"text": row[CAPTION], "score": row.get(CAPTION_SCORE)}]


# Semantic-hashing codes of ``embedding`` (``--hash_model``, ``index.hash_codes``): the packed
# bits (``index.hamming.pack_bits``, bits / 8 bytes) and the hashing model's ``name/version``.
HASH_CODE = "hash_code"

HASH_MODEL = "hash_model"

TAG_TYPE = pa.list_(pa.struct([("label", pa.string()), ("score", pa.float32())]))


def embedding_table_schema(
    dim: int,
    joint_dim: int | None = None,
    storage: str = "float32",
    *,
    tags: bool = False,
    captions: bool = False,
    attributes: Sequence[MetadataColumn] = (),
    hash_bits: int | None = None,
) -> pa.Schema:
    """The Parquet embedding table: one row per unique image content.

    ``embedding`` is a fixed-size float32 list so DuckDB/BigQuery/pandas see a proper array and
    readers can reshape a column to an ``(N, dim)`` matrix without copying row by row;
    ``storage`` (``EMBEDDING_STORAGES``) picks its element type, int8 adding ``embedding_scale``
    (``index.table.read_embedding_table`` decodes every storage to float32). With
    ``joint_dim``, each row also holds ``joint_embedding`` (the image in a dual joint model's
    space) and ``joint_model`` (that model's ``name/version``); without it the schema has
    neither column. ``tags`` adds ``tags`` (classifier tags, best first:
    ``list<struct<label, score>>``) and ``tag_model`` (the head's version); ``captions`` adds
    ``caption`` (a generated description), ``caption_score`` (its mean log-probability per
    token), ``caption_model`` (the captioner's ``name/version``) and ``captions`` (every
    distinct caption of the beam search, best first, as ``list<struct<text, score>>``; tables
    written before it have only ``caption``, ``caption_list`` reads both). ``attributes`` adds the
    typed metadata columns as one struct column (``index.metadata_columns``). ``hash_bits``
    adds ``hash_code`` (the embedding's semantic-hashing code, ``hash_bits / 8`` bytes) and
    ``hash_model`` (the hashing model's ``name/version``). All are optional
    columns after the others, so readers of older tables are unaffected.
    """
    if dim <= 0:
        raise ValueError(f"embedding dimension must be positive, got {dim}")
    if storage not in EMBEDDING_STORAGES:
        raise ValueError(f"embedding storage must be one of {EMBEDDING_STORAGES}, got {storage!r}")
    if joint_dim is not None and joint_dim <= 0:
        raise ValueError(f"joint embedding dimension must be positive, got {joint_dim}")
    joint_fields = []
    metadata = {b"imgsearch.table": b"embeddings", b"imgsearch.dim": str(dim).encode()}
    scale_fields = []
    if storage != "float32":  # float32 tables keep the schema they always had
        metadata[b"imgsearch.embedding_storage"] = storage.encode()
    if storage == "int8":
        scale_fields = [pa.field(EMBEDDING_SCALE, pa.float32(), nullable=False)]
    if joint_dim is not None:
        joint_fields = [
            pa.field(JOINT_EMBEDDING, pa.list_(pa.float32(), joint_dim), nullable=False),
            pa.field(JOINT_MODEL, pa.string(), nullable=False),
        ]
        metadata[b"imgsearch.joint_dim"] = str(joint_dim).encode()
    if tags:
        joint_fields += [
            pa.field(TAGS, TAG_TYPE, nullable=False),
            pa.field(TAG_MODEL, pa.string(), nullable=False),
        ]
    if captions:
        joint_fields += [
            pa.field(CAPTION, pa.string(), nullable=False),
            pa.field(CAPTION_SCORE, pa.float32(), nullable=False),
            pa.field(CAPTION_MODEL, pa.string(), nullable=False),
            pa.field(CAPTIONS, CAPTIONS_TYPE, nullable=False),
        ]
    if attributes:
        joint_fields.append(pa.field(ATTRIBUTES, attributes_type(attributes), nullable=False))
        metadata[b"imgsearch.metadata_columns"] = columns_spec(attributes).encode()
    if hash_bits is not None:
        if hash_bits <= 0 or hash_bits % 8:
            raise ValueError(f"hash code length must be a positive multiple of 8, got {hash_bits}")
        joint_fields += [
            pa.field(HASH_CODE, pa.binary(hash_bits // 8), nullable=False),
            pa.field(HASH_MODEL, pa.string(), nullable=False),
        ]
        metadata[b"imgsearch.hash_bits"] = str(hash_bits).encode()
    return pa.schema(
        [
            pa.field("image_id", pa.string(), nullable=False),
            pa.field("uri", pa.string(), nullable=False),
            pa.field("duplicate_uris", pa.list_(pa.string()), nullable=False),
            pa.field("sha256", pa.string(), nullable=False),
            pa.field("num_bytes", pa.int64(), nullable=False),
            pa.field("width", pa.int32(), nullable=False),
            pa.field("height", pa.int32(), nullable=False),
            pa.field("embedding", pa.list_(STORAGE_TYPES[storage], dim), nullable=False),
            *scale_fields,
            pa.field("encoder", pa.string(), nullable=False),
            pa.field("metadata", pa.string(), nullable=False),
            *joint_fields,
        ],
        metadata=metadata,
    )
