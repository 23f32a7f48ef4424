"""Data contracts between pipeline stages, and the pyarrow schemas of what the jobs write.

Nothing here imports Beam or TensorFlow: serving and tests read these types too.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import numpy as np
import pyarrow as pa

# Stages named in dead-letter records: where in the pipeline an input was given up on.
STAGE_READ = "read"  # the corpus listing or a manifest row was unusable

STAGE_FETCH = "fetch"  # the bytes could not be read or downloaded

STAGE_DECODE = "decode"  # the bytes are not a usable image

STAGE_ENCODE = "encode"  # the model failed on the image

STAGES = (STAGE_READ, STAGE_FETCH, STAGE_DECODE, STAGE_ENCODE)


def image_id_for_uri(uri: str) -> str:
    """A stable id for an image named only by its uri: the same uri gives the same id every run."""
    return hashlib.sha256(uri.encode("utf-8")).hexdigest()[:20]


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """One input of the corpus, before any byte of it is read."""

    uri: str
    image_id: str
    metadata_json: str = ""  # JSON object of a manifest's extra columns; "" when none
    # What the listing saw of the file, "size:modified" (``index.sources.file_stamp``); "" when
    # it saw nothing (manifest rows). An incremental run reuses the stored content hash of a
    # uri whose stamp is unchanged instead of reading its bytes (``pipelines.sources``). Not
    # part of the ref's identity: the same input listed twice is the same input.
    stamp: str = dataclasses.field(default="", compare=False)


@dataclasses.dataclass(frozen=True)
class HashedImage:
    """An input whose bytes were read once and hashed (the bytes themselves are not kept)."""

    ref: ImageRef
    sha256: str
    num_bytes: int


@dataclasses.dataclass(frozen=True)
class UniqueImage:
    """The one input kept for a content hash, with the uris of every other input of that content."""

    ref: ImageRef
    sha256: str
    num_bytes: int
    duplicate_uris: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, eq=False)
class DecodedImage:
    """A validated image, resized and cropped to the encoder's input size.

    ``width``/``height`` are the original dimensions after EXIF orientation; ``pixels`` is an
    ``(H, W, 3)`` uint8 RGB array at the encoder's input size.
    """

    image: UniqueImage
    width: int
    height: int
    pixels: np.ndarray


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """An input the pipeline gave up on, and why."""

    uri: str
    stage: str
    reason: str
    image_id: str = ""

    def to_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DuplicateRecord:
    """An input whose content is already in the table under another uri."""

    uri: str
    image_id: str
    sha256: str
    kept_uri: str
    kept_image_id: str

    def to_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
    ]
)

DUPLICATE_SCHEMA = pa.schema(
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("kept_uri", pa.string(), nullable=False),
        pa.field("kept_image_id", pa.string(), nullable=False),
    ]
)


def embedding_row(image: DecodedImage, embedding: np.ndarray, encoder_id: str) -> dict[str, Any]:
    """One row of the embedding table (a dict keyed like ``embedding_table_schema``)."""
    unique = image.image
    return {
        "image_id": unique.ref.image_id,
        "uri": unique.ref.uri,
        "duplicate_uris": list(unique.duplicate_uris),
        "sha256": unique.sha256,
        "num_bytes": unique.num_bytes,
        "width": int(image.width),
        "height": int(image.height),
        "embedding": np.asarray(embedding, dtype=np.float32).tolist(),
        "encoder": encoder_id,
        "metadata": unique.ref.metadata_json,
    }
