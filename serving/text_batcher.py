"""Concurrent text queries encoded together: dynamic batching and an LRU of recent texts.

The server answers each request on a thread of its pool, and every text query calls the text
encoder once (the query and its words together, ``serving.explain.embed_with_terms``). A call of
MiniLM costs a fixed few milliseconds (tokenisation op, graph dispatch) before any per-text
work, so under load the two cores spend much of their time on per-call overhead and on threads
competing inside TensorFlow. ``BatchingTextEncoder`` wraps the encoder with the same interface:

* ``workers`` threads (two by default) make every call of the wrapped encoder. A request waits
  in a queue; a worker takes everything queued, waits up to ``max_wait_s`` for more (TF
  Serving's and Triton's batching window) when another call is running or more is queued,
  and encodes the distinct texts of all of them in one call. A lone query (nothing running,
  nothing queued) is encoded at once, without the window;
* texts seen recently (query words repeat across queries: "dog", "grass") are answered from an
  LRU of feature rows and never reach the encoder.

A batch's vectors equal the same texts encoded alone up to float32 rounding: the wrapped
encoders pad by length bucket (``encoders.minilm.length_chunks``) and mask the padding, so the
batch a text lands in changes only the summation order (measured: at most 1e-6 on MiniLM).

Requests with more than ``max_batch`` texts (the word vocabulary of ``/api/words`` at start-up,
the batch route) are encoded directly and not cached: they are their own batch already.

A caller waits at most ``stall_s`` for a worker, then encodes its texts itself (counted as a
stall, logged): once, on a CI VM, a worker's timed queue wait never returned, and the request it
held hung its caller, and with it a thread of the server's pool, for good.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Sequence

import numpy as np

from encoders.base import TextEncoder
from serving.lru import LRU

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TextBatching:
    """How the server batches and caches text encoding (``ServeConfig``)."""

    # How long the worker waits for more requests after the first one of a batch.
    max_wait_s: float = 0.002
    # Texts per encoder call at most; a larger request goes to the encoder directly.
    max_batch: int = 64
    # Threads calling the encoder, each on its own batch: TensorFlow runs two calls side by
    # side on two cores better than one larger call (benchmarks/results/text_batching.md).
    workers: int = 2
    # Memory for the feature rows of recent texts (0: no cache). Bounded in bytes, not entries:
    # a minilm_tfidf row is 4,967 floats (19 KiB), a MiniLM one 384. 256 MiB holds ~13k
    # minilm_tfidf rows, enough for the words of a caption vocabulary: at real dimensions
    # (bench_serving.py, 200k images, 16 connections) 112 q/s against 78 with 32 MiB.
    cache_mib: float = 256.0
    # How long a caller waits for a worker before it encodes its texts itself. Far above any
    # real wait (a queue holds at most the server pool's requests, a batch takes ~0.1 s), so
    # it only fires on a worker that stopped.
    stall_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {self.max_wait_s}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.cache_mib < 0:
            raise ValueError(f"cache_mib must be >= 0, got {self.cache_mib}")
        if self.stall_s <= 0:
            raise ValueError(f"stall_s must be positive, got {self.stall_s}")

    def cache_entries(self, dim: int) -> int:
        """How many ``dim``-d float32 rows the cache holds."""
        return int(self.cache_mib * 2**20 // (4 * max(dim, 1)))


class _Request:
    __slots__ = ("done", "error", "rows", "texts")

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.rows: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()


@dataclasses.dataclass
class BatchingStats:
    """Counters since start: what /metrics and the benchmark report."""

    requests: int = 0
    encoder_calls: int = 0
    encoded_texts: int = 0
    cache_hits: int = 0
    direct_calls: int = 0
    stalls: int = 0


class BatchingTextEncoder(TextEncoder):
    """``inner`` behind a batching queue and an LRU; the same ``encoder_id`` and vectors."""

    def __init__(self, inner: TextEncoder, batching: TextBatching | None = None) -> None:
        self.inner = inner
        self.batching = batching or TextBatching()
        self.name, self.version, self.dim = inner.name, inner.version, inner.dim
        self.stats = BatchingStats()
        self._cache: LRU[np.ndarray] = LRU(self.batching.cache_entries(inner.dim))
        self._queue: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._stats_lock = threading.Lock()
        self._busy, self._busy_lock = 0, threading.Lock()  # workers between a get and a reply
        self._workers = [
            threading.Thread(target=self._serve, name=f"text-batcher-{i}", daemon=True)
            for i in range(self.batching.workers)
        ]
        for worker in self._workers:
            worker.start()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if len(texts) > self.batching.max_batch:
            self._count(requests=1, direct_calls=1, encoded_texts=len(texts))
            return self.inner.encode(texts)
        rows: list[np.ndarray | None] = [self._cache.get(t) for t in texts]
        missing = list(dict.fromkeys(t for t, row in zip(texts, rows, strict=True) if row is None))
        self._count(requests=1, cache_hits=len(texts) - sum(row is None for row in rows))
        if missing:
            request = _Request(missing)
            self._queue.put(request)
            if not request.done.wait(self.batching.stall_s):
                # The worker holding the request may yet answer it; nobody reads that answer.
                logger.warning(
                    "text batcher: no answer in %.1f s for %d texts; encoding them directly",
                    self.batching.stall_s,
                    len(missing),
                )
                self._count(stalls=1, direct_calls=1, encoded_texts=len(texts))
                return self.inner.encode(texts)
            if request.error is not None:
                raise request.error
            found = dict(zip(missing, request.rows, strict=True))
            rows = [found[t] if row is None else row for t, row in zip(texts, rows, strict=True)]
        if not rows:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack(rows)

    def _serve(self) -> None:
        while True:
            batch = [self._queue.get()]
            size = len(batch[0].texts)
            # The window only pays under load: with no other call running and nothing queued
            # the request is alone, and waiting would add the window to its latency.
            with self._busy_lock:
                loaded = self._busy > 0 or not self._queue.empty()
                self._busy += 1
            deadline = time.monotonic() + (self.batching.max_wait_s if loaded else 0.0)
            while size < self.batching.max_batch:
                try:
                    wait = deadline - time.monotonic()
                    request = (
                        self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                batch.append(request)
                size += len(request.texts)
            try:
                self._encode(batch)
            finally:
                with self._busy_lock:
                    self._busy -= 1

    def _encode(self, batch: list[_Request]) -> None:
        texts = list(dict.fromkeys(t for request in batch for t in request.texts))
        try:
            features = np.asarray(self.inner.encode(texts), dtype=np.float32)
        except Exception as exc:  # every waiting caller gets it; the worker goes on
            for request in batch:
                request.error = exc
                request.done.set()
            return
        for text, row in zip(texts, features, strict=True):
            self._cache.put(text, row.copy())  # not a view keeping the whole batch alive
        self._count(encoder_calls=1, encoded_texts=len(texts))
        position = {t: i for i, t in enumerate(texts)}
        for request in batch:
            request.rows = features[[position[t] for t in request.texts]]
            request.done.set()

    def _count(self, **increments: int) -> None:
        with self._stats_lock:
            for key, value in increments.items():
                setattr(self.stats, key, getattr(self.stats, key) + value)

    def __repr__(self) -> str:
        return f"BatchingTextEncoder({self.inner!r}, {self.batching})"
