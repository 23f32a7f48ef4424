"""BatchingTextEncoder: concurrent texts encoded in one call, recent ones cached, same vectors.

Real encoders (TF-IDF fitted on Flickr8k captions, MiniLM from its package); the only wrapper
is one that counts and times the real encoder's calls.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from encoders.base import TextEncoder
from encoders.bow import TfidfEncoder
from serving.text_batcher import BatchingTextEncoder, TextBatching


class Counting(TextEncoder):
    """A real encoder whose calls are counted; ``gate`` (if set) holds the first call until it
    is released, so requests pile up behind it as they would behind a slow batch."""

    def __init__(self, inner: TextEncoder, gate: threading.Event | None = None) -> None:
        self.inner, self.gate = inner, gate
        self.name, self.version, self.dim = inner.name, inner.version, inner.dim
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        if self.gate is not None and len(self.calls) == 1:
            self.gate.wait(10)
        return self.inner.encode(texts)


@pytest.fixture(scope="module")
def captions(flickr_caption_rows) -> list[str]:
    return [caption for _, caption in flickr_caption_rows]


@pytest.fixture(scope="module")
def tfidf(captions) -> TfidfEncoder:
    return TfidfEncoder.fit(captions)


@pytest.fixture(scope="module")
def minilm_encoder():
    from encoders.minilm import MiniLMEncoder
    from encoders.minilm_files import locate_minilm

    try:
        return MiniLMEncoder(locate_minilm("auto"))
    except FileNotFoundError as error:
        pytest.skip(str(error))


def _concurrently(encode, requests: list[list[str]]) -> list[np.ndarray]:
    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(encode, requests))


def test_concurrent_requests_share_encoder_calls_and_get_their_own_vectors(tfidf, captions):
    gate = threading.Event()
    counting = Counting(tfidf, gate)
    batching = TextBatching(max_wait_s=0.05, cache_mib=0, workers=1)
    batcher = BatchingTextEncoder(counting, batching)
    requests = [[captions[i], captions[i + 1]] for i in range(0, 32, 2)]
    first = threading.Thread(target=batcher.encode, args=(["a dog on the grass"],))
    first.start()  # the worker is now held inside the encoder: the rest queue up
    while not counting.calls:
        threading.Event().wait(0.001)
    results = {}

    def send(request):
        results[tuple(request)] = batcher.encode(request)

    senders = [threading.Thread(target=send, args=(r,)) for r in requests]
    for sender in senders:
        sender.start()
    threading.Event().wait(0.2)
    gate.set()
    for thread in [first, *senders]:
        thread.join(10)
    # 16 requests of 2 texts behind the first, at most 64 texts a call: one more call.
    assert len(counting.calls) == 2
    assert sorted(counting.calls[1]) == sorted(t for r in requests for t in r)
    for request in requests:
        np.testing.assert_array_equal(results[tuple(request)], tfidf.encode(request))
    assert batcher.stats.encoder_calls == 2 and batcher.stats.requests == 17


def test_a_lone_request_does_not_wait_for_the_window(tfidf):
    """With nothing running and nothing queued there is nobody to batch with."""
    import time

    batcher = BatchingTextEncoder(tfidf, TextBatching(max_wait_s=5.0, cache_mib=0))
    started = time.monotonic()
    batcher.encode(["a dog on the grass"])
    assert time.monotonic() - started < 2.5


def test_batched_and_single_minilm_vectors_agree(minilm_encoder, captions):
    """Texts of many lengths, batched by the worker, against each encoded alone."""
    texts = [*captions[:24], "dog", "a dog running on the grass with a red frisbee"]
    batcher = BatchingTextEncoder(minilm_encoder, TextBatching(max_wait_s=0.01, cache_mib=0))
    batched = _concurrently(lambda t: batcher.encode([t])[0], texts)
    assert batcher.stats.encoder_calls < len(texts)
    for text, vector in zip(texts, batched, strict=True):
        np.testing.assert_allclose(vector, minilm_encoder.encode([text])[0], atol=2e-6)


def test_recent_texts_come_from_the_cache_and_the_oldest_leave_it(tfidf, captions):
    counting = Counting(tfidf)
    # Room for exactly three rows.
    batching = TextBatching(max_wait_s=0.0, cache_mib=(3 * 4 * tfidf.dim + 1) / 2**20)
    assert batching.cache_entries(tfidf.dim) == 3
    batcher = BatchingTextEncoder(counting, batching)
    a, b, c, d = captions[:4]
    first = batcher.encode([a, b, a])  # a duplicate in one request is encoded once
    assert counting.calls == [[a, b]]
    np.testing.assert_array_equal(first, tfidf.encode([a, b, a]))
    np.testing.assert_array_equal(batcher.encode([b, a]), tfidf.encode([b, a]))
    assert len(counting.calls) == 1 and batcher.stats.cache_hits == 2
    batcher.encode([c])  # a b c cached, a most recently used before c
    batcher.encode([d])  # evicts b, the least recently used
    assert counting.calls[-1] == [d]
    batcher.encode([a, c, d])
    assert len(counting.calls) == 3
    batcher.encode([b])
    assert counting.calls[-1] == [b]


def test_a_failing_call_fails_its_requests_and_the_worker_goes_on(tfidf):
    class Failing(TextEncoder):
        name, version, dim = tfidf.name, tfidf.version, tfidf.dim

        def __init__(self) -> None:
            self.fail = True

        def encode(self, texts):
            if self.fail:
                self.fail = False
                raise RuntimeError("tokenizer exploded")
            return tfidf.encode(texts)

    batcher = BatchingTextEncoder(Failing(), TextBatching(cache_mib=0))
    with pytest.raises(RuntimeError, match="tokenizer exploded"):
        batcher.encode(["a dog"])
    np.testing.assert_array_equal(batcher.encode(["a dog"]), tfidf.encode(["a dog"]))


def test_large_requests_and_empty_ones_bypass_the_queue(tfidf, captions):
    counting = Counting(tfidf)
    batcher = BatchingTextEncoder(counting, TextBatching(max_batch=8))
    np.testing.assert_array_equal(batcher.encode(captions[:20]), tfidf.encode(captions[:20]))
    assert batcher.stats.direct_calls == 1
    batcher.encode(captions[:2])  # the direct call cached nothing
    assert counting.calls[-1] == captions[:2]
    assert batcher.encode([]).shape == (0, tfidf.dim)
    assert batcher.encoder_id == tfidf.encoder_id


def test_a_caller_whose_worker_never_answers_encodes_its_texts_itself(tfidf, captions, caplog):
    """A stalled worker (held here inside the encoder) costs its caller ``stall_s``, not a
    thread for good; the worker serves again once it comes back."""
    import time

    gate = threading.Event()
    counting = Counting(tfidf, gate)
    batcher = BatchingTextEncoder(counting, TextBatching(workers=1, stall_s=0.3, cache_mib=0))
    started = time.monotonic()
    try:
        rows = batcher.encode(captions[:3])
    finally:
        gate.set()
    assert time.monotonic() - started >= 0.3
    np.testing.assert_array_equal(rows, tfidf.encode(captions[:3]))
    assert batcher.stats.stalls == 1 and batcher.stats.direct_calls == 1
    assert "no answer in 0.3 s for 3 texts" in caplog.text
    np.testing.assert_array_equal(batcher.encode(captions[3:5]), tfidf.encode(captions[3:5]))
    assert counting.calls[-1] == captions[3:5] and batcher.stats.stalls == 1


def test_settings_are_checked():
    with pytest.raises(ValueError, match="max_wait_s"):
        TextBatching(max_wait_s=-1)
    with pytest.raises(ValueError, match="max_batch"):
        TextBatching(max_batch=0)
    with pytest.raises(ValueError, match="cache_mib"):
        TextBatching(cache_mib=-1)
    with pytest.raises(ValueError, match="stall_s"):
        TextBatching(stall_s=0)
