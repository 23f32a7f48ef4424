"""Similar words, analogies and words nearest to an image: the ``/api/words`` routes.

``add_word_routes(app, holder, models, config)`` puts a ``WordService`` on ``app.state.words``
and adds the routes; the search page asks ``word_suggestions`` for related words under its
search box. The logic is ``encoders.word_neighbours``; this module loads it, caches it and
maps its answers and errors to HTTP.

Loading, in a background thread started when the app is created (so start-up is as fast as
before; a request arriving earlier waits for it): GloVe (400k x 50, 0.4-1.8 s) plus the
spelling index and ScaNN's brute-force scorer (~0.6 s); the words are cached per process by
GloVe source (apps in one process, tests or a demo, share one copy: 80 MB of unit vectors,
ScaNN's 80 MB copy, the word table). When a joint model is loaded, the same thread then embeds
its vocabulary (the ``config.word_vocabulary`` most frequent content words its text encoder
knows, ``encoders.word_neighbours.embed_vocabulary``), cached per process by model version:
everything was ready 1.7 s after ``create_app`` returned with a bag-of-words encoder (4,284
known words among 200k GloVe rows scanned); MiniLM's 20k words take 10-16 s on 2 CPU cores
(``benchmarks/results/words.md``). Loading at the first request instead would make that
request pay it; loading before ``create_app`` returns would delay every start (and every
test app).

Errors: an unknown word is a 404 whose ``detail`` is ``{"message", "word", "hints"}``; a blank
word 422; words off (``glove="none"``, GloVe not installed, image words without a joint
model) 503 with the reason.
"""

# No `from __future__ import annotations`: FastAPI must see the real Annotated query types of
# the handlers defined inside add_word_routes (their bounds come from the config).

import logging
import threading
import time
from collections.abc import Callable
from typing import Annotated

import numpy as np
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import Response

from encoders.glove import GloveSource, load_glove, locate_glove
from encoders.word_neighbours import (
    STOP_WORDS,
    TopK,
    UnknownWordError,
    WordNeighbours,
    WordScore,
    WordSpace,
    embed_vocabulary,
    normalise_word,
)
from serving.config import ServeConfig
from serving.explain import image_vectors, query_terms
from serving.reloader import VersionHolder
from serving.responses import json_response
from serving.state import IndexBundle, QueryModels
from serving.vocabulary_cache import cached_word_space

logger = logging.getLogger(__name__)

GLOVE_OFF = "none"
MAX_WORD_CHARS = 100
DEFAULT_K = 10
SUGGESTIONS_PER_WORD = 3
MAX_SUGGESTIONS = 8
# ScaNN's brute-force scorer is built for this many neighbours; a search may ask for more.
_SCANN_NEIGHBOURS = 128

_ERRORS = {
    400: "A query past the server's length limit",
    404: "Unknown word (detail: message, word, spelling hints) or image",
    422: "Invalid parameter (blank word, k out of range)",
    503: "Not available on this server (words off, GloVe missing, no joint model)",
}


def _errors(*codes: int) -> dict:
    return {code: {"description": _ERRORS[code]} for code in codes}


class WordsUnavailable(Exception):
    """Words cannot be answered on this server; ``reason`` says why (HTTP 503)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def scann_search(unit: np.ndarray) -> TopK:
    """Exact top-k through ScaNN's brute-force float32 scorer (``index.scann_index``): the same
    ranking as ``exact_search``, ~3x faster on 400k x 50 (``encoders.word_neighbours``)."""
    from index.scann_index import ScannParams, build_searcher, search_batched

    params = ScannParams("brute_force", num_neighbors=_SCANN_NEIGHBOURS)
    searcher = build_searcher(unit, params)

    def top_k(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return search_batched(searcher, queries, k, params)

    return top_k


# Process-wide: what was built (or why it failed) per key, and one lock per key so a request
# arriving while the background thread builds waits for that build instead of starting another.
_BUILT: dict[tuple, object] = {}
_BUILD_LOCKS: dict[tuple, threading.Lock] = {}
_GUARD = threading.Lock()


def _once(key: tuple, build: Callable[[], object]) -> object:
    with _GUARD:
        lock = _BUILD_LOCKS.setdefault(key, threading.Lock())
    with lock:
        if key not in _BUILT:
            try:
                _BUILT[key] = build()
            except (OSError, ValueError) as exc:  # unreadable or malformed files: say so
                logger.exception("could not build %s", key[0])
                _BUILT[key] = WordsUnavailable(f"{key[0]} could not be loaded: {exc}")
        built = _BUILT[key]
    if isinstance(built, WordsUnavailable):
        raise built
    return built


def _scores(found: list[WordScore]) -> list[dict]:
    return [score.to_json() for score in found]


class WordService:
    """GloVe neighbours, analogies, page suggestions and image words for one app.

    ``glove`` is ``"auto"`` (the installed package; words are off with a reason when it is
    missing), a path (missing: FileNotFoundError now, at start-up) or ``"none"`` (off).
    """

    def __init__(
        self, glove: str, models: QueryModels, vocabulary_size: int, cache_dir: str | None = None
    ) -> None:
        if vocabulary_size < 1:
            raise ValueError(f"word_vocabulary must be >= 1, got {vocabulary_size}")
        self.models, self.vocabulary_size = models, vocabulary_size
        self.cache_dir = cache_dir  # the embedded vocabulary between processes (None: off)
        self.source: GloveSource | None = None
        self.off_reason: str | None = None
        self._loading: threading.Thread | None = None
        if glove == GLOVE_OFF:
            self.off_reason = "words are off on this server (started with glove 'none')"
        else:
            try:
                self.source = locate_glove(glove)
            except FileNotFoundError as exc:
                if glove != "auto":
                    raise
                self.off_reason = str(exc).splitlines()[0]
                logger.warning("words are off: %s", self.off_reason)

    def start(self) -> None:
        """Load the words (and a joint model's vocabulary) in a daemon thread."""
        if self.source is None:
            return
        self._loading = threading.Thread(target=self._warm_up, name="words-load", daemon=True)
        self._loading.start()

    def wait_loaded(self, timeout_s: float | None = None) -> None:
        """Wait for the background load (a reload's new worker finishes it before it takes
        over, so its first seconds of serving do not share the cores with it)."""
        if self._loading is not None:
            self._loading.join(timeout_s)

    def _warm_up(self) -> None:
        try:
            self.neighbours()
            if self.models.joint is not None:
                self.vocabulary()
        except WordsUnavailable as exc:  # logged where it failed; requests get the reason
            logger.warning("words: %s", exc.reason)

    def neighbours(self) -> WordNeighbours:
        """The GloVe neighbours (waits for the background load); WordsUnavailable when off."""
        if self.source is None:
            raise WordsUnavailable(self.off_reason or "words are off on this server")
        source = self.source

        def build() -> WordNeighbours:
            return WordNeighbours(load_glove(source.path), make_search=scann_search)

        return _once(("GloVe " + source.label,), build)

    def vocabulary(self) -> WordSpace:
        """The joint model's embedded vocabulary (built once per process and model)."""
        joint, text_encoder = self.models.joint, self.models.text_encoder
        if joint is None or text_encoder is None:
            raise WordsUnavailable(
                self.models.text_off_reason or "words of an image need a joint model"
            )
        words = self.neighbours().words
        model = self.models.model_version or (joint.kind, str(id(joint)))
        key = ("the joint vocabulary", self.source.label, *model, text_encoder.encoder_id,
               self.vocabulary_size)  # fmt: skip
        # On disk only for a trained model's version (an id() means nothing to the next process).
        disk_key = key if self.models.model_version else None

        def build() -> WordSpace:
            return cached_word_space(
                self.cache_dir,
                disk_key,
                lambda: embed_vocabulary(words, text_encoder, joint, self.vocabulary_size),
            )

        return _once(key, build)

    def word(self, word: str, k: int) -> dict:
        started = time.perf_counter()
        cleaned = normalise_word(word)
        found = self.neighbours().neighbours(cleaned, k)
        return {"word": cleaned, "neighbours": _scores(found), "took_ms": _ms(started)}

    def analogy(self, a: str, b: str, c: str, k: int) -> dict:
        started = time.perf_counter()
        a, b, c = normalise_word(a), normalise_word(b), normalise_word(c)
        found = self.neighbours().analogy(a, b, c, k)
        return {"a": a, "b": b, "c": c, "neighbours": _scores(found), "took_ms": _ms(started)}

    def image_words(self, bundle: IndexBundle, image_id: str, k: int) -> dict:
        """The vocabulary words nearest to an indexed image in the joint space.

        The image's vector is the one text queries score it with (``serving.explain
        .image_vectors``: the dual model's image tower over the stored embedding, which is the
        table's ``joint_embedding`` when the index has the model's joint shard). KeyError for
        an id not in ``bundle``; WordsUnavailable without a joint model or words.
        """
        started = time.perf_counter()
        if bundle.text is None:
            raise WordsUnavailable(
                self.models.text_off_reason or "words of an image need a joint model"
            )
        row = bundle.searcher_row(image_id)  # KeyError: not in this version
        vocabulary = self.vocabulary()
        vector = image_vectors(bundle.text, [row])
        found = vocabulary.nearest(vector, min(k, len(vocabulary)))[0]
        model = "/".join(self.models.model_version) if self.models.model_version else None
        return {
            "image_id": image_id,
            "version": bundle.version,
            "model": model,
            "vocabulary": len(vocabulary),
            "neighbours": _scores(found),
            "took_ms": _ms(started),
        }

    def suggestions(self, query: str) -> list[str]:
        """Related words for a text query: the nearest GloVe words of its content words that
        the joint model's text encoder knows (so each link finds images), best first.

        ``[]`` when words or text search are off, or the query has no known content word.
        """
        if not query.strip() or self.models.joint is None or self.source is None:
            return []
        try:
            neighbours, known = self.neighbours(), self.vocabulary()
        except WordsUnavailable:
            return []
        terms = [t for t in query_terms(query) if t in neighbours and t not in STOP_WORDS]
        if not terms:
            return []
        allowed = set(known.words)
        chosen: list[str] = []
        for found in neighbours.neighbours_many(terms, 4 * SUGGESTIONS_PER_WORD):
            taken = {*terms, *chosen}
            fresh = [s.word for s in found if s.word in allowed and s.word not in taken]
            chosen.extend(fresh[:SUGGESTIONS_PER_WORD])
        return chosen[:MAX_SUGGESTIONS]


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def word_suggestions(app: FastAPI, query: str) -> list[str]:
    """The page's related words for ``query`` (``[]`` on an app without word routes)."""
    service = getattr(app.state, "words", None)
    return service.suggestions(query) if service is not None else []


def _answer(compute: Callable[[], dict]) -> Response:
    """Run a word query, mapping its errors to HTTP (never a 500 for a user's word)."""
    try:
        return json_response(compute())
    except UnknownWordError as exc:
        detail = {"message": str(exc), "word": exc.word, "hints": exc.hints}
        raise HTTPException(404, detail) from exc
    except WordsUnavailable as exc:
        raise HTTPException(503, exc.reason) from exc
    except ValueError as exc:  # a blank word
        raise HTTPException(422, str(exc)) from exc


def add_word_routes(
    app: FastAPI, holder: VersionHolder, models: QueryModels, config: ServeConfig
) -> WordService:
    """Add the word routes to ``app`` and start loading the words (see the module doc)."""
    service = WordService(config.glove, models, config.word_vocabulary, config.cache_dir)
    app.state.words = service
    service.start()

    K = Annotated[int, Query(ge=1, le=config.max_k, description="words to return")]
    Word = Annotated[str, Query(min_length=1, max_length=MAX_WORD_CHARS, description="a word")]

    @app.get(
        "/api/words",
        tags=["words"],
        summary="Words nearest to a word (GloVe cosine)",
        responses=_errors(404, 422, 503),
    )
    def similar_words(word: Word, k: K = DEFAULT_K) -> Response:
        return _answer(lambda: service.word(word, k))

    @app.get(
        "/api/words/analogy",
        tags=["words"],
        summary="a is to b as c is to ? (3CosAdd over GloVe)",
        responses=_errors(404, 422, 503),
    )
    def analogy(a: Word, b: Word, c: Word, k: K = DEFAULT_K) -> Response:
        return _answer(lambda: service.analogy(a, b, c, k))

    @app.get(
        "/api/words/suggestions",
        tags=["words"],
        summary="Related words for a text query (the search page's suggestions)",
        responses=_errors(400, 422),
    )
    def suggestions(
        q: Annotated[str, Query(max_length=config.max_query_chars, description="a text query")],
    ) -> Response:
        return json_response({"q": q, "suggestions": service.suggestions(q)})

    @app.get(
        "/api/images/{image_id:path}/words",
        tags=["words"],
        summary="Words nearest to an indexed image in the joint model's space",
        responses=_errors(404, 422, 503),
    )
    def image_words(image_id: str, k: K = DEFAULT_K) -> Response:
        bundle = holder.current
        try:
            return _answer(lambda: service.image_words(bundle, image_id, k))
        except KeyError as exc:
            message = f"image {image_id!r} is not in index version {bundle.version}"
            raise HTTPException(404, message) from exc

    return service
