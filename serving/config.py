"""``ServeConfig``: everything the search server needs, built once and passed down.

``imgsearch serve`` fills it from flags; tests and the benchmark build it directly. Nothing in
``serving/`` reads the environment or module globals for these values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from encoders.decode_pool import BoundDecoder, DecodeBudget, bound_decoder, bound_thumbnailer
from encoders.imaging import DecodeLimits
from index.hash_codes import DEFAULT_RERANK
from index.schema import EMBEDDING_STORAGES
from serving.event_log import EventLimits
from serving.searcher import IMAGE_SEARCHES
from serving.text_batcher import TextBatching

# Content types an upload may declare. The decoder checks the bytes themselves
# (``encoders.imaging.ACCEPTED_FORMATS``); this only refuses obvious non-images early.
UPLOAD_CONTENT_TYPES = (
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/webp",
    "image/bmp",
    "image/tiff",
)

# How a new version is loaded (ServeConfig.reload_in).
RELOAD_MODES = ("process", "thread")

# A multipart form's boundaries, part headers and text fields, beyond the upload itself.
FORM_OVERHEAD = 64 * 1024

# Uploaded queries: the indexing limits, with lower caps (a query is one photo, not a scan): at
# most 384 MiB to decode (a 40 MP RGB photo needs about 200 MiB, a 40 MP float TIFF 500 MiB).
_QUERY_LIMITS = DecodeLimits(max_pixels=40_000_000, max_decode_bytes=384 * 2**20)


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    """How long a client may take and how much it may hold (``serving.connection_guard``,
    ``serving.http_hygiene.BodyBudget``).

    A request's line and headers must arrive within ``head_timeout_s`` of the connection opening
    (or of the previous response) and be at most ``max_head_bytes``; its body must keep coming:
    no pause longer than ``body_idle_s``, and from ``body_idle_s`` on at least
    ``min_body_bytes_per_s`` on average (a slow uplink passes, a drip does not; a deadline on
    the whole body would cut honest slow uploads). A keep-alive connection idle
    ``keep_alive_s`` after a response is closed. Past ``max_connections`` the connection idle
    for longest is closed for a newcomer. Request bodies the server holds at once total at most
    ``max_buffered_bytes`` (beyond, 429 with Retry-After); one body is at most
    ``ServeConfig.max_body_bytes``.
    """

    head_timeout_s: float = 10.0
    body_idle_s: float = 10.0
    min_body_bytes_per_s: int = 8 * 1024
    keep_alive_s: int = 5
    max_head_bytes: int = 32 * 1024
    max_connections: int = 512
    max_buffered_bytes: int = 256 * 2**20

    def __post_init__(self) -> None:
        for name in ("head_timeout_s", "body_idle_s", "min_body_bytes_per_s", "keep_alive_s",
                     "max_head_bytes",
                     "max_connections", "max_buffered_bytes"):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """What to serve and the bounds every request is held to.

    ``index`` is an index output folder (``manifest.json``) or a publish root (``latest.json``,
    see ``index.publish``); only a publish root is hot-reloaded. ``models_dir`` (with
    ``joint_model``) enables text queries; without it image queries still work.
    """

    index: str
    models_dir: str | None = None
    joint_model: str | None = None
    # Text queries rank by the fused score of joint model(s), generated captions and tags
    # (``imgsearch train fusion`` weights in models_dir, else reciprocal rank fusion).
    fused: bool = False
    host: str = "127.0.0.1"
    port: int = 8080
    # Hot reload: how often the publish pointer is read; 0 turns polling off. /ready turns red
    # (503) when the published version has not been served for ready_grace_s (refused, or an
    # unreadable pointer): long enough to load the largest version.
    poll_interval_s: float = 5.0
    ready_grace_s: float = 600.0
    # How ``serve`` loads a new version of a publish root: "process", in a new worker process
    # that takes over once it listens (serving.supervisor: no stall, two workers' memory
    # during the load), or "thread", in this process beside the serving version (requests
    # stall while ScaNN's load holds the GIL, seconds per shard).
    reload_in: str = "process"
    # Check every file's SHA-256 against the manifest before a version may serve.
    verify: bool = True
    # Image-space queries (similar, upload): ScaNN, or "hamming": a scan of the version's
    # semantic-hashing codes (indexed with --hash_model), top hamming_rerank re-ranked exactly.
    image_search: str = "scann"
    hamming_rerank: int = DEFAULT_RERANK
    # How the table's vectors (similar-to-id, exact filtered scores, re-ranking) are held in
    # memory: None as the table stores them, or "float16" / "int8" (2 / 1 bytes a dimension
    # instead of a float32 table's 4; scores move by ~1e-4 / ~1e-3). index.stored_vectors.
    vector_precision: str | None = None
    # Request bounds: k per page, how deep pagination may go, the largest upload.
    default_k: int = 20
    max_k: int = 100
    max_offset: int = 1000
    max_query_chars: int = 500
    max_upload_bytes: int = 10 * 2**20
    decode_limits: DecodeLimits = _QUERY_LIMITS
    # Decoding (uploads, explanations) runs in this many worker processes, each allowed
    # decode_memory_bytes beyond its idle size and decode_timeout_s per file; a request that
    # waits decode_wait_s for a free one is answered 429. 0 workers decodes in the server.
    decode_workers: int = 2
    decode_memory_bytes: int = 448 * 2**20
    decode_timeout_s: float = 5.0
    decode_wait_s: float = 2.0
    # Answers show a local source path as its file name, and never a URL's userinfo or signing
    # parameters (serving.redaction); True shows local paths in full (a trusted network, or the
    # library's client, which opens the files).
    expose_uris: bool = False
    # A file of API keys (one per line): every route but /health, /ready and /metrics then
    # needs one (serving.http_hygiene.ApiKeyAuth). None: open, as behind an authenticating proxy.
    api_key_file: str | None = None
    # Thumbnails: the longest side served and how many are kept in memory.
    thumbnail_max_side: int = 256
    thumbnail_cache_entries: int = 2048
    # Text encoding: concurrent queries batched into one encoder call, recent texts cached
    # (serving.text_batcher); None encodes every request on its own.
    text_batching: TextBatching | None = dataclasses.field(default_factory=TextBatching)
    # Similar words, analogies and image words (serving.word_routes): GloVe "auto" (the
    # installed package; off when missing), a path, or "none"; and how many of the most
    # frequent words a joint model's text encoder knows are embedded for image words.
    glove: str = "auto"
    word_vocabulary: int = 20_000
    # A local folder where the embedded vocabulary is kept for the next process (restarts,
    # reloads in a new worker: serving.vocabulary_cache); None embeds it in every process.
    cache_dir: str | None = None
    # The click log (POST /api/events, serving/event_log.py): a folder or gs:// prefix for its
    # Parquet files; None turns it off (the route answers 503). Its bounds: EventLimits.
    events_dir: str | None = None
    event_limits: EventLimits = dataclasses.field(default_factory=EventLimits)
    # Timeouts and caps on connections and request bodies (see ConnectionLimits).
    connection_limits: ConnectionLimits = dataclasses.field(default_factory=ConnectionLimits)

    def _decode_budget(self) -> DecodeBudget | None:
        if not self.decode_workers:
            return None
        return DecodeBudget(self.decode_workers, self.decode_memory_bytes,
                            self.decode_timeout_s, self.decode_wait_s)  # fmt: skip

    def query_decoder(self) -> BoundDecoder:
        """How the server decodes an image: ``decode_limits`` and, unless ``decode_workers``
        is 0, the worker processes (shared by every app in the process with this budget)."""
        return bound_decoder(self.decode_limits, self._decode_budget())

    def thumbnailer(self) -> Callable[[bytes, int], bytes]:
        """How the server makes a thumbnail of a source: as ``query_decoder`` decodes."""
        return bound_thumbnailer(self.decode_limits, self._decode_budget())

    @property
    def max_body_bytes(self) -> int:
        """The largest request body of any route: an upload and its form around it."""
        return self.max_upload_bytes + FORM_OVERHEAD

    @property
    def page_depth(self) -> int:
        """The deepest result a page may reach (+1 to settle a tie at its end): every search
        rescores this many ANN candidates, so all pages of a query come from one ranking."""
        return self.max_offset + self.max_k + 1

    def __post_init__(self) -> None:
        if not self.index:
            raise ValueError("--index is required (an index output folder or a publish root)")
        if self.fused and not self.models_dir:
            raise ValueError("--fused needs --models (the joint models and fusion weights)")
        if not 1 <= self.default_k <= self.max_k:
            raise ValueError(f"default_k must be in [1, max_k={self.max_k}], got {self.default_k}")
        if self.max_offset < 0 or self.max_upload_bytes < 1 or self.max_query_chars < 1:
            raise ValueError("max_offset, max_upload_bytes and max_query_chars must be positive")
        if self.reload_in not in RELOAD_MODES:
            raise ValueError(f"reload_in must be one of {RELOAD_MODES}, got {self.reload_in!r}")
        if self.image_search not in IMAGE_SEARCHES:
            raise ValueError(
                f"image_search must be one of {IMAGE_SEARCHES}, got {self.image_search!r}"
            )
        if self.hamming_rerank < 1:
            raise ValueError(f"hamming_rerank must be >= 1, got {self.hamming_rerank}")
        if self.vector_precision not in (None, *EMBEDDING_STORAGES):
            raise ValueError(
                f"vector_precision must be one of {EMBEDDING_STORAGES} or None (as stored), "
                f"got {self.vector_precision!r}"
            )
        if self.poll_interval_s < 0:
            raise ValueError(f"poll_interval_s must be >= 0, got {self.poll_interval_s}")
        if self.ready_grace_s < 0:
            raise ValueError(f"ready_grace_s must be >= 0, got {self.ready_grace_s}")
        if not 16 <= self.thumbnail_max_side <= 1024:
            raise ValueError(
                f"thumbnail_max_side must be in [16, 1024], got {self.thumbnail_max_side}"
            )
        if self.decode_workers < 0:
            raise ValueError(f"decode_workers must be >= 0, got {self.decode_workers}")
        if self.decode_workers:
            self.query_decoder()  # DecodeBudget checks the rest
        if self.thumbnail_cache_entries < 0:
            raise ValueError("thumbnail_cache_entries must be >= 0")
        if self.connection_limits.max_buffered_bytes < self.max_body_bytes:
            raise ValueError(
                f"connection_limits.max_buffered_bytes "
                f"({self.connection_limits.max_buffered_bytes}) cannot hold one upload form of "
                f"{self.max_body_bytes} bytes"
            )
