"""Search from Python: ``open_index(...)`` -> an ``ImageIndex`` with the server's four queries.

Built on what ``imgsearch serve`` loads (``serving.state``): the publish root or folder is
resolved the same way (``index.publish.resolve_index``), the models are ``QueryModels.load``
and the version is one ``load_bundle``, so a query here ranks exactly as the HTTP API does. The
results are serving's own dataclasses; ``imgsearch.client.Client`` returns the same ones from a
running server.

Result shapes (all frozen dataclasses):

* ``SearchHit(image_id, uri, score)``: ``score`` is the cosine of the query and the image, in
  the space the search ran in; lists are best first.
* ``serving.fused_search.FusedHit(image_id, uri, score, parts, caption, tags, matched_tags)``:
  text search on an index opened with ``fused=True``; ``parts`` holds each method's own score.
* ``ImageInfo``: one indexed image's row of the table (below).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from index.hash_codes import DEFAULT_RERANK
from index.manifest import MANIFEST_NAME
from index.publish import read_pointer, resolve_index, version_dir
from serving.paging import PageRequest
from serving.searcher import SearchHit
from serving.state import IndexBundle, QueryModels, load_bundle
from storage.files import exists, join_path

if TYPE_CHECKING:
    # Only fused search makes them, and its module costs a second of imports (SciPy).
    from serving.fused_search import FusedHit

__all__ = ["ImageIndex", "ImageInfo", "SearchHit", "UnknownImageError", "open_index"]


class UnknownImageError(KeyError):
    """An image id the index version does not hold (a ``KeyError``, with a readable message)."""

    def __str__(self) -> str:  # KeyError's own would print the message in quotes
        return str(self.args[0]) if self.args else ""


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What the index version's table says about one image (``details``).

    Fields the table has no column for (older tables, or no captioning / tagging stage) are
    ``None``, ``[]`` or ``{}``; ``source_metadata`` is the corpus row's extra fields.
    """

    image_id: str
    uri: str
    version: str  # the index version it was read from
    width: int | None = None
    height: int | None = None
    num_bytes: int | None = None
    sha256: str | None = None
    duplicate_uris: list[str] | None = None  # other uris with the same bytes (deduplicated)
    source_metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The typed metadata columns (``--metadata_columns``), timestamps as ISO-8601 strings.
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    caption: str | None = None
    caption_score: float | None = None
    # Every distinct caption of its beam search, best first ({text, score}; the first is
    # ``caption``); an older table's one caption.
    captions: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    tags: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # {label, score}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageInfo:
        """From ``ImageDetails.describe`` plus ``version``, or the server's details answer.

        Keys this class does not know (the server's ``links``, a column added later) are left
        out, so a newer server does not break an older client.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def check_k(k: int) -> int:
    """``k`` as an int >= 1, or ValueError (a bool or a float is refused, not truncated)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return k


def resolve_location(index: str, version: str | None = None) -> tuple[str, str | None]:
    """``(index_dir, version)`` of what ``open_index`` was given.

    Without ``version``: as ``imgsearch serve --index`` reads it (a publish root's
    ``latest.json``, else an index output folder). With it: ``ROOT/versions/<version>`` of a
    publish root, which must be complete (have its manifest).
    """
    if version is None:
        return resolve_index(index)
    folder = version_dir(index, version)
    if not exists(join_path(folder, MANIFEST_NAME)):
        hint = (
            "`imgsearch versions --root ROOT` lists the complete ones"
            if read_pointer(index) is not None
            else f"{index} has no latest.json either: open an index output folder without version="
        )
        raise FileNotFoundError(
            f"{folder} has no {MANIFEST_NAME}: version {version!r} is missing or still being "
            f"written ({hint})"
        )
    return folder, version


class ImageIndex:
    """One loaded index version and the models that query it; read-only, thread-safe.

    Made by ``open_index``. The version stays what it was at opening (no hot reload: open
    again to follow a publish root's pointer).
    """

    def __init__(self, bundle: IndexBundle, location: str) -> None:
        self._bundle, self._location = bundle, location
        self._text_off = (
            f"this query needs a joint model: open the index with models_dir=DIR "
            f"(open_index({location!r}, models_dir=...))"
        )

    @property
    def version(self) -> str:
        return self._bundle.version

    @property
    def index_dir(self) -> str:
        return self._bundle.index_dir

    @property
    def text_enabled(self) -> bool:
        return self._bundle.text is not None

    @property
    def fused(self) -> bool:
        return self._bundle.fused is not None

    def __len__(self) -> int:
        return len(self._bundle.images)

    def __repr__(self) -> str:
        return f"ImageIndex(version={self.version!r}, images={len(self)}, at {self.index_dir!r})"

    def summary(self) -> dict[str, Any]:
        """What ``/health`` reports as ``serving``: version, images, encoder, shards, ..."""
        return self._bundle.summary()

    def search_text(
        self,
        query: str,
        k: int = 10,
        *,
        filter: str | None = None,
        offset: int = 0,
        min_score: float | None = None,
        dedupe: bool = False,
        hybrid: bool = False,
        hybrid_weight: float | None = None,
    ) -> list[SearchHit] | list[FusedHit]:
        """Text -> up to ``k`` images, best first (``FusedHit`` when opened with ``fused=True``).

        The keywords make it a page as ``GET /api/search`` cuts it (then plain ``SearchHit``):
        ``filter`` (the filter language: ``'site = "flickr" AND width >= 800'``), ``offset``,
        ``min_score``, ``dedupe`` (one hit per near-duplicate group), ``hybrid`` (BM25 over
        each image's text fused with the joint cosine, ``hybrid_weight`` the keyword share;
        works without ``models_dir``: keywords alone). ValueError when the index was opened
        without ``models_dir`` (and no ``hybrid``), for an empty query, one with no word the
        text encoder knows, or a bad filter.
        """
        k = check_k(k)
        if not isinstance(query, str):
            raise ValueError(f"a text query is a str, got {type(query).__name__}")
        bundle = self._bundle
        if filter is not None or offset or min_score is not None or dedupe or hybrid:
            return self._text_page(
                query, PageRequest(k, offset, min_score, filter, dedupe), hybrid, hybrid_weight
            )
        if hybrid_weight is not None:
            raise ValueError("hybrid_weight goes with hybrid=True")
        if bundle.text is None:
            raise ValueError(
                "text search needs a joint model: open the index with models_dir=DIR "
                f"(open_index({self._location!r}, models_dir=...); `imgsearch train joint` "
                "writes one)"
            )
        if bundle.fused is not None:
            return bundle.fused.search(query, k)
        return bundle.text.search(query, k)

    def _text_page(
        self, query: str, page: PageRequest, hybrid: bool, weight: float | None
    ) -> list[SearchHit]:
        from serving import queries

        if not hybrid and self._bundle.text is None:
            raise ValueError(
                "text search needs a joint model: open the index with models_dir=DIR "
                f"(open_index({self._location!r}, models_dir=...)), or pass hybrid=True"
            )
        if isinstance(page.offset, bool) or not isinstance(page.offset, int) or page.offset < 0:
            raise ValueError(f"offset must be an integer >= 0, got {page.offset!r}")
        try:
            answer = queries.text_query(
                self._bundle, query, page, self._text_off, "hybrid" if hybrid else None, weight
            )
        except queries.QueryError as exc:
            raise ValueError(exc.message) from None
        return [SearchHit(r["image_id"], r["uri"], r["score"]) for r in answer["results"]]

    def search_image(self, image: str | os.PathLike | bytes, k: int = 10) -> list[SearchHit]:
        """An image -- a file path (local or gs://) or its encoded bytes -> up to ``k`` hits.

        Decoded and encoded as the index job did, so an indexed photo finds itself first with
        score ~1. FileNotFoundError for a missing file; ``encoders.imaging.ImageRejected`` (a
        ValueError) for bytes that are not a usable image.
        """
        k = check_k(k)
        images = self._bundle.images
        if isinstance(image, bytes | bytearray | memoryview):
            return images.search_image_bytes(bytes(image), k)
        if isinstance(image, str | os.PathLike):
            return images.search_image_path(os.fspath(image), k)
        raise TypeError(f"search_image takes a path or bytes, got {type(image).__name__}")

    def search_mixed(
        self,
        text: str = "",
        *,
        image: str | os.PathLike | bytes | None = None,
        image_id: str | None = None,
        image_weight: float = 1.0,
        k: int = 10,
    ) -> list[SearchHit]:
        """An image (a file, its bytes, or an indexed ``image_id``) and/or text in the query
        syntax (``"2:golden retriever" + beach - snow``), as one query in the joint space.

        The same ranking as ``POST /api/search/mixed``. ValueError for neither, both an image
        and an image_id, or malformed syntax; UnknownImageError for an unknown image_id.
        """
        from serving import mixed_search
        from storage.files import read_bytes

        upload = None
        if isinstance(image, bytes | bytearray | memoryview):
            upload = bytes(image)
        elif image is not None:
            upload = read_bytes(os.fspath(image))
        return self._combined(
            lambda bundle, n, off: mixed_search.mixed(
                bundle, text, n, off, upload=upload, image_id=image_id, image_weight=image_weight
            ),
            k,
        )

    def search_feedback(
        self,
        text: str = "",
        relevant: Sequence[str] = (),
        not_relevant: Sequence[str] = (),
        k: int = 10,
    ) -> list[SearchHit]:
        """``text`` (may be empty) moved toward the ``relevant`` images and away from the
        ``not_relevant`` ones: Rocchio in the joint space, as ``POST /api/feedback/search``."""
        from serving import mixed_search

        return self._combined(
            lambda bundle, n, off: mixed_search.feedback(
                bundle, text, list(relevant), list(not_relevant), n, off
            ),
            k,
        )

    def _combined(self, search, k: int) -> list[SearchHit]:
        from serving.query_error import QueryError

        k = check_k(k)
        try:
            return search(self._bundle, k, self._text_off).hits
        except QueryError as exc:
            if exc.status == 404:
                raise UnknownImageError(exc.message) from None
            raise ValueError(exc.message) from None

    def similar(self, image_id: str, k: int = 10) -> list[SearchHit]:
        """The ``k`` indexed images nearest to indexed image ``image_id`` (itself left out)."""
        k = check_k(k)
        try:
            return self._bundle.images.similar_to_image_id(image_id, k)
        except KeyError:
            raise UnknownImageError(self._unknown(image_id)) from None

    def details(self, image_id: str) -> ImageInfo:
        """The table's row for ``image_id``; UnknownImageError when it is not indexed."""
        described = self._bundle.details.describe(image_id)
        if described is None:
            raise UnknownImageError(self._unknown(image_id))
        return ImageInfo.from_json({**described, "version": self.version})

    def _unknown(self, image_id: str) -> str:
        return (
            f"image {image_id!r} is not in index version {self.version} ({len(self)} images); "
            "ids come from search results or the table's image_id column"
        )


def open_index(
    index: str | os.PathLike,
    *,
    version: str | None = None,
    models_dir: str | os.PathLike | None = None,
    model: str | None = None,
    fused: bool = False,
    verify: bool = True,
    image_search: str = "scann",
    hamming_rerank: int = DEFAULT_RERANK,
    vector_precision: str | None = None,
) -> ImageIndex:
    """Load an index version for searching from Python.

    ``index``: a publish root (``latest.json`` says which version), or an index output folder
    (``imgsearch index --out``); a local path or gs://. ``version`` picks another version of a
    publish root. ``models_dir`` (with ``model``, default ``default_joint_model``: a dual
    encoder, else Word2VisualVec) turns on text search; ``fused`` ranks text queries by the
    joint model, generated captions and tags together (``imgsearch train fusion`` weights in
    ``models_dir``, else reciprocal rank fusion). ``verify`` checks every file's SHA-256
    against the manifest first, as the server does. ``image_search="hamming"`` answers image
    queries from the version's semantic-hashing codes (indexed with ``--hash_model``): the
    ``hamming_rerank`` Hamming-nearest rows re-ranked exactly. ``vector_precision``
    ``"float16"``/``"int8"`` holds the index's vectors in memory at 2 / 1 bytes a dimension
    (default: as the table stores them).

    Raises FileNotFoundError for a path that is neither, or a missing version or model;
    ``index.manifest.ManifestVerificationError`` for a damaged file;
    ``models.query_model.EncoderMismatchError`` when the model cannot query this index.
    """
    location = os.fspath(index)
    if (model or fused) and not models_dir:
        raise ValueError(
            f"{'fused=True' if fused else 'model='} needs models_dir=DIR (the folder of "
            "`imgsearch train joint` models)"
        )
    models_path = os.fspath(models_dir) if models_dir else None
    index_dir, resolved_version = resolve_location(location, version)
    models = QueryModels.load(models_path, model)
    bundle = load_bundle(
        index_dir,
        models,
        resolved_version,
        verify,
        models_path if fused else None,
        image_search=image_search,
        hamming_rerank=hamming_rerank,
        vector_precision=vector_precision,
    )
    return ImageIndex(bundle, location)
