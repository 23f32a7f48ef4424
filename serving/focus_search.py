"""Focused image queries over a served index: "like this photo, but only its cat".

The query image (an upload, or an indexed image re-read from its uri: the index keeps pooled
vectors, not feature maps) goes through the index's own encoder once more, keeping the spatial
map; ``encoders.focus`` pools that map towards the focus classes of the ImageNet head, and the
unit vector searches the unchanged image index. HTTP-free, like ``serving.queries``: refusals are
``QueryError`` (400 unknown focus or an index whose encoder cannot focus, 404 unknown image,
422 bad upload). ``focused_search`` is the same for the CLI, from an index path.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from encoders.base import EncoderSpec
from encoders.decode_pool import BoundDecoder, bound_decoder
from encoders.focus import (
    DEFAULT_METHOD,
    FOCUS_METHODS,
    FocusTarget,
    FocusVocabulary,
    focused_vector,
)
from encoders.imaging import DecodeLimits, ImageRejected
from encoders.tags import TagHead, resolve_tag_head
from serving import queries
from serving.mixed_search import Found
from serving.paging import PageRequest
from serving.query_error import QueryError
from serving.searcher import ImageSearcher, SearchHit
from serving.sources import SourceUnavailable, read_source
from serving.state import IndexBundle
from serving.uploads import decode_upload
from storage.files import open_file

_INDEXED_LIMITS = DecodeLimits()  # the indexing defaults: the photo passed them once already


class FocusService:
    """What focused queries share in one process: the classifier head and the vocabulary.

    ``glove``: "auto" (the installed package), a path, or "none" (labels, synonyms and head
    nouns only); loaded on the first focused query. ``head``: "auto" (the assets' ImageNet
    head) or an .npz path. Thread-safe; nothing is loaded at construction.
    """

    def __init__(self, glove: str = "auto", head: str = "auto", method: str = DEFAULT_METHOD):
        if method not in FOCUS_METHODS:
            raise ValueError(f"focus method must be one of {FOCUS_METHODS}, got {method!r}")
        self.glove, self.head_source, self.method = glove, head, method
        self._lock = threading.Lock()
        self._head: TagHead | None = None
        self._vocabulary: FocusVocabulary | None = None
        self._off: dict[str, str | None] = {}  # encoder_id -> why it cannot focus (None: it can)

    def off_reason(self, searcher: ImageSearcher) -> str | None:
        """Why the index's encoder cannot give focused queries, or None when it can."""
        with self._lock:
            if searcher.encoder_id not in self._off:
                self._off[searcher.encoder_id] = self._check(searcher)
            return self._off[searcher.encoder_id]

    def _check(self, searcher: ImageSearcher) -> str | None:
        from models.image_encoder import fitting_tag_head

        spec = EncoderSpec.from_json(searcher.manifest.encoder_spec)
        why = "focused search needs a CNN encoder with a spatial feature map and an ImageNet head"
        try:
            path = fitting_tag_head(self.head_source, spec)
        except (FileNotFoundError, ValueError) as exc:
            return f"{why}: {exc}"
        if not hasattr(searcher.image_encoder(), "encode_with_features"):
            return f"{why}: {searcher.encoder_id} gives no spatial map"
        self._head = self._head or TagHead.load(path)
        return None

    def vocabulary(self) -> FocusVocabulary:
        """The head's focus vocabulary (GloVe loaded once, on first use)."""
        with self._lock:
            if self._vocabulary is None:
                head = self._head or TagHead.load(resolve_tag_head(self.head_source))
                self._head = head
                vectors = None
                if self.glove != "none":
                    from encoders.glove import load_glove

                    try:
                        vectors = load_glove(self.glove)
                    except FileNotFoundError:
                        vectors = None  # labels, synonyms and head nouns still resolve
                self._vocabulary = FocusVocabulary(head.synonyms, vectors)
            return self._vocabulary

    def target(self, focus: str) -> FocusTarget:
        """``focus`` -> its head classes; QueryError 400 with the nearest labels when none."""
        try:
            return self.vocabulary().resolve(focus)
        except ValueError as exc:  # UnknownFocus carries the hint in its message
            raise queries.QueryError(400, str(exc)) from exc

    def query_vector(self, searcher: ImageSearcher, pixels: np.ndarray, target: FocusTarget):
        """One image's ``(H, W, 3)`` uint8 pixels -> its unit focused query vector."""
        from encoders.keras_backbones import architecture_for

        encoder = searcher.image_encoder()
        views = pixels[np.newaxis]
        if architecture_for(encoder.name).flip_average:  # indexed vectors average the mirror
            views = np.stack([pixels, pixels[:, ::-1]])
        _, _, spatial = encoder.encode_with_features(np.ascontiguousarray(views))
        # A word's classes mixed uniformly: the image-probability mix measured no better.
        return focused_vector(spatial, self._head.kernel, target.classes, self.method)


def _check_service(service: FocusService, bundle: IndexBundle) -> None:
    reason = service.off_reason(bundle.images)
    if reason is not None:
        # 400, not 503: nothing is down, this index cannot answer a focused query at all.
        raise queries.QueryError(400, reason)


def image_hits(
    service: FocusService,
    bundle: IndexBundle,
    data: bytes,
    focus: str,
    n: int,
    decode: BoundDecoder,
) -> tuple[list[SearchHit], FocusTarget, dict]:
    """An encoded image's ``n`` nearest indexed images focused on ``focus``, the target, and
    the image's echo (bytes, width, height)."""  # fmt: skip
    vector, target, echo = focused_image_vector(service, bundle, data, focus, decode)
    return bundle.images.search_vector(vector, n), target, echo


def focused_image_vector(
    service: FocusService, bundle: IndexBundle, data: bytes, focus: str, decode: BoundDecoder
) -> tuple[np.ndarray, FocusTarget, dict]:
    """An encoded image's query vector pooled towards ``focus``, the target and its echo."""
    _check_service(service, bundle)
    target = service.target(focus)
    pixels, echo = decode_upload(data, decode, bundle.images.image_encoder().input_size)
    return service.query_vector(bundle.images, pixels, target), target, echo


def _why(bundle: IndexBundle, target: FocusTarget, method: str, **extra) -> dict:
    return {"match": "focused", **extra, "encoder": bundle.images.encoder_id, "method": method,
            "focus": target.to_json()}  # fmt: skip


def similar_hits(
    service: FocusService,
    bundle: IndexBundle,
    image_id: str,
    focus: str,
    n: int,
    decode: BoundDecoder,
) -> tuple[list[SearchHit], FocusTarget]:
    """The ``n`` indexed images nearest to an indexed image focused on ``focus`` (itself out);
    its source is read again (``serving.sources``) and decoded by ``decode``."""
    _check_service(service, bundle)
    uri = bundle.details.uri_of(image_id)
    if uri is None:
        raise queries.QueryError(
            404, f"image {image_id!r} is not in index version {bundle.version}"
        )
    target = service.target(focus)
    try:
        pixels, _, _ = decode(read_source(uri), bundle.images.image_encoder().input_size)
    except (SourceUnavailable, ImageRejected) as exc:  # moved, or changed since indexed
        raise queries.QueryError(404, f"image {image_id!r}: {exc}") from exc
    vector = service.query_vector(bundle.images, pixels, target)
    hits = bundle.images.search_vector(vector, min(n + 1, len(bundle.images)))
    return [hit for hit in hits if hit.image_id != image_id][:n], target


def focused_similar_page(
    service: FocusService,
    bundle: IndexBundle,
    image_id: str,
    focus: str,
    page: PageRequest,
    decode: BoundDecoder,
) -> dict:
    """``GET /api/similar/{image_id}?focus=...``: the page ``queries.similar_query`` gives."""
    started = time.perf_counter()
    _no_filter(page)

    def search(n: int) -> Found:
        hits, target = similar_hits(service, bundle, image_id, focus, n, decode)
        why = _why(bundle, target, service.method, to=image_id)
        return Found({"similar_to": image_id, "focus": focus}, hits, [why] * len(hits))

    return queries.combined_query(search, bundle, page, started)


def _no_filter(page: PageRequest) -> None:
    if page.filter:
        raise QueryError(400, "a focused search takes no filter")


def focused_image_page(
    service: FocusService,
    bundle: IndexBundle,
    data: bytes,
    focus: str,
    page: PageRequest,
    decode: BoundDecoder,
) -> dict:
    """``POST /api/search/image?focus=...``: the page ``queries.image_query`` gives."""
    started = time.perf_counter()
    _no_filter(page)
    # Decoded and encoded once, however deep the page makes the search go.
    vector, target, echo = focused_image_vector(service, bundle, data, focus, decode)
    why = _why(bundle, target, service.method)

    def search(n: int) -> Found:
        hits = bundle.images.search_vector(vector, n)
        return Found({"image": echo, "focus": focus}, hits, [why] * len(hits))

    return queries.combined_query(search, bundle, page, started)


def focused_search(
    index: str,
    image: str | None = None,
    image_id: str | None = None,
    focus: str = "",
    k: int = 10,
    method: str = DEFAULT_METHOD,
    glove: str = "auto",
) -> list[SearchHit]:
    """``imgsearch search --index DIR (--image P | --image-id ID) --focus LABEL``.

    ``index`` is an index folder or a publish root; exactly one of ``image`` (a path or gs://
    uri) and ``image_id`` (an indexed image). ValueError for a bad argument or an unknown focus
    (its message lists the nearest labels), KeyError for an unknown image id, RuntimeError when
    the index's encoder cannot focus.
    """
    from index.publish import resolve_index
    from serving.state import QueryModels, load_bundle

    if (image is None) == (image_id is None):
        raise ValueError("give exactly one of --image and --image-id with --focus")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    index_dir, version = resolve_index(index)
    bundle = load_bundle(index_dir, QueryModels(), version, verify=False)
    service = FocusService(glove=glove, method=method)
    try:
        if image_id is not None:
            return similar_hits(service, bundle, image_id, focus, k, bound_decoder(DecodeLimits()))[
                0
            ]
        with open_file(image) as f:
            data = f.read()
        return image_hits(service, bundle, data, focus, k, bound_decoder(DecodeLimits()))[0]
    except queries.QueryError as exc:
        raise exc.as_user_error() from exc
