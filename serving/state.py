"""What one served index version is made of, and the models every version shares.

``QueryModels`` is loaded once at start-up (the joint model, its text encoder, and the image
encoder of the first version); ``load_bundle`` turns an index version into an immutable
``IndexBundle`` using them. A request takes the current bundle once and uses only that, so a hot
reload (``serving.reloader``) swaps one reference and never changes what a running request sees.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from encoders.base import EncoderSpec, ImageEncoder, TextEncoder
from encoders.joint import JointModel
from index.hash_codes import DEFAULT_RERANK
from index.manifest import manifest_location, read_manifest
from index.near_duplicates import read_groups
from serving.details import ImageDetails
from serving.hybrid_search import LazyHybridIndex
from serving.query_error import QueryError
from serving.row_filters import RowFilters
from serving.searcher import ImageSearcher
from serving.text_batcher import BatchingTextEncoder, TextBatching
from serving.text_search import TextSearcher

if TYPE_CHECKING:
    from serving.fused_search import FusedSearcher

logger = logging.getLogger(__name__)


class QueryModels:
    """Models shared by every index version the process serves (loaded once).

    Text search is on when a joint model was loaded; ``text_off_reason`` says why it is not.
    Image encoders are kept by ``encoder_id``: a new version made by the same encoder reuses the
    loaded one, a version made by another encoder builds its own while it loads (in the
    background, before it may serve).
    """

    def __init__(
        self,
        joint: JointModel | None = None,
        text_encoder: TextEncoder | None = None,
        model_version: tuple[str, str] | None = None,
        text_off_reason: str = "text search needs a joint model: start with --models DIR",
    ) -> None:
        self.joint, self.text_encoder, self.model_version = joint, text_encoder, model_version
        self.text_off_reason = None if joint is not None else text_off_reason
        self._image_encoders: dict[str, ImageEncoder] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls, models_dir: str | None, model: str | None = None,
        batching: TextBatching | None = None,
    ) -> QueryModels:  # fmt: skip
        """``batching``: the server's (``serving.text_batcher``) -- concurrent requests share
        text-encoder calls and recent texts are cached; None encodes each call directly (the
        CLI's one-shot queries)."""
        if not models_dir:
            return cls()
        from models.query_model import load_query_model

        query = load_query_model(models_dir, model)
        # Trace the encoder's TensorFlow functions now, not in the first user's request.
        query.text_encoder.encode(["warm up"])
        text_encoder = query.text_encoder
        if batching is not None:
            text_encoder = BatchingTextEncoder(text_encoder, batching)
        return cls(query.joint, text_encoder, query.model_version)

    def add_image_encoder(self, encoder: ImageEncoder) -> None:
        with self._lock:
            self._image_encoders[encoder.encoder_id] = encoder

    def image_encoder(self, spec_json: dict, encoder_id: str) -> ImageEncoder:
        """The loaded encoder with ``encoder_id``, building it from the manifest's spec once."""
        with self._lock:
            encoder = self._image_encoders.get(encoder_id)
            if encoder is None:
                from encoders.registry import create_image_encoder

                encoder = create_image_encoder(EncoderSpec.from_json(spec_json))
                self._image_encoders[encoder_id] = encoder
            return encoder


@dataclasses.dataclass(frozen=True)
class IndexBundle:
    """One loaded index version: everything a query needs, never mutated after loading."""

    version: str
    index_dir: str
    images: ImageSearcher
    text: TextSearcher | None
    details: ImageDetails
    loaded_at: float  # time.time()
    # details row -> ImageSearcher row, or None when both order rows alike (see ImageDetails).
    searcher_rows: np.ndarray | None = None
    fused: FusedSearcher | None = None  # --fused: joint + caption + tag scores in one ranking
    # image id -> its near-duplicate group (index job's near_duplicates/); ungrouped ids absent.
    near_duplicates: Mapping[str, str] | None = None
    filters: RowFilters | None = None  # metadata filters over this version's rows
    keywords: LazyHybridIndex | None = None  # BM25 over the rows' text, for mode=hybrid
    # Answers show local paths in full (the library, the CLIs); the server shows file names
    # unless --expose-uris (serving.redaction: credentials in URLs are stripped either way).
    expose_uris: bool = True

    def group_of(self, image_id: str) -> str | None:
        return self.near_duplicates.get(image_id) if self.near_duplicates else None

    def allowed_rows(self, filter_text: str | None) -> np.ndarray | None:
        """The searcher rows a metadata filter keeps (None: no filter); QueryError 400 if bad."""
        if not filter_text or not filter_text.strip():
            return None
        if self.filters is None:
            raise QueryError(400, f"index version {self.version} has no filterable columns")
        return self.filters.allowed(filter_text)

    def searcher_row(self, image_id: str) -> int:
        row = self.details.row_of(image_id)
        if row is None:
            raise KeyError(image_id)
        return row if self.searcher_rows is None else int(self.searcher_rows[row])

    @property
    def text_enabled(self) -> bool:
        return self.text is not None

    def summary(self) -> dict:
        manifest = self.images.manifest
        return {
            "version": self.version,
            "index_dir": self.index_dir,
            "images": len(self.images),
            "encoder": manifest.encoder_id,
            "shards": len(manifest.shards),
            "joint_index": (manifest.joint_index or {}).get("model"),
            "image_search": (
                {
                    "kind": "hamming",
                    **self.images.hamming.describe(),
                    "rerank": self.images.hamming_rerank,
                }
                if self.images.hamming is not None
                else {"kind": "scann"}
            ),
            # How the table's vectors are held (--vectors-in-memory) and what they take.
            "vectors": {
                "precision": self.images.vectors.precision,
                "bytes": self.images.vectors.nbytes,
            },
            "text_search": self.text is not None,
            "fused_search": self.fused.methods if self.fused is not None else None,
            "loaded_at": self.loaded_at,
        }


def load_bundle(
    index_dir: str,
    models: QueryModels,
    version: str | None = None,
    verify: bool = True,
    fused_models_dir: str | None = None,
    candidates: int = 0,
    image_search: str = "scann",
    hamming_rerank: int = DEFAULT_RERANK,
    expose_uris: bool = True,
    vector_precision: str | None = None,
) -> IndexBundle:
    """Load (and by default verify) one index version into a bundle.

    Raises whatever ``ImageSearcher.load`` raises for a missing or damaged version, and
    ``EncoderMismatchError`` when the loaded joint model cannot query it: a version that would
    lose text search is refused rather than served half-working. ``candidates``: how deep
    the server pages (``ImageSearcher``), so every page is cut from one ranking.
    ``image_search``/``hamming_rerank``: how image-space queries find candidates (ScaNN or
    the version's hash codes; ``ImageSearcher.load``). ``vector_precision``: how the stored
    vectors are held in memory (``ImageSearcher.load``'s ``precision``; default as stored).
    """
    started = time.perf_counter()
    out_dir, manifest_path = manifest_location(index_dir)
    manifest = read_manifest(manifest_path)
    encoder = models.image_encoder(manifest.encoder_spec, manifest.encoder_id)
    images = ImageSearcher.load(
        manifest_path,
        encoder=encoder,
        verify=verify,
        candidates=candidates,
        image_search=image_search,
        hamming_rerank=hamming_rerank,
        precision=vector_precision,
    )
    text = None
    if models.joint is not None:
        text = TextSearcher(images, models.joint, models.text_encoder, models.model_version)
    details = ImageDetails.load(out_dir, images.manifest)
    if len(details) != len(images):
        raise ValueError(
            f"the table of {images.manifest.version} holds {len(details)} images, "
            f"its index {len(images)}"
        )
    searcher_rows = details.searcher_rows(lambda row: images.hit_for_row(row, 0.0).image_id)
    # None when the version has no groups (the index job ran with --near_duplicates off).
    near_duplicates = read_groups(out_dir, images.manifest)
    filters = RowFilters.from_details(details, searcher_rows, near_duplicates)
    fused = None
    if fused_models_dir:
        from serving.fused_search import FusedSearcher

        # Reads this version's caption and tag columns once; its joint parts are the models
        # the fusion weights name (built with the version, in the background on a reload).
        fused = FusedSearcher.load(images, out_dir, fused_models_dir, models.model_version[0]
                                   if models.model_version else None)  # fmt: skip
    logger.info(
        "index version %s ready in %.1f s (%d images, text search %s)",
        version or manifest.version,
        time.perf_counter() - started,
        len(images),
        "on" if text is not None else "off",
    )
    return IndexBundle(
        version=version or manifest.version,
        index_dir=out_dir,
        images=images,
        text=text,
        details=details,
        loaded_at=time.time(),
        searcher_rows=searcher_rows,
        fused=fused,
        filters=filters,
        near_duplicates=near_duplicates,
        keywords=LazyHybridIndex(details, searcher_rows),
        expose_uris=expose_uris,
    )
