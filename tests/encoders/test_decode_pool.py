"""The decode pool: the same pixels as decoding in-process, and a file that runs over its time or
memory, or kills its worker, is a rejected image while the pool carries on.

Pure PIL + NumPy in worker processes (``python -m encoders.decode_pool``); no TensorFlow.
"""

from __future__ import annotations

import fcntl
import io
import os
import pickle
import signal
import threading
import time

import numpy as np
import pytest
from PIL import Image

from encoders.decode_pool import (
    PIPE_BYTES,
    DecodeBudget,
    DecodeBusy,
    DecodePool,
    GuardedDecoder,
    bound_decoder,
    bound_thumbnailer,
)
from encoders.imaging import DecodeLimits, ImageRejected, decode_image, thumbnail_jpeg
from tests.hostile_uploads import encoded, repeated_scans_jpeg

# Every header check off, so only the pool's own guards can stop these files.
_NO_HEADER_LIMITS = DecodeLimits(
    max_pixels=80_000_000, max_decode_bytes=2**40, max_jpeg_scans=10**9
)


# Far longer than any deadline below on any CPU (12 s here, a 2-core Xeon): the pool must stop
# it, not a fast machine finish it first (1,000 repeats, 2.4 s here, once beat a 2 s deadline
# in CI).
_SLOW_JPEG = repeated_scans_jpeg(2000, 5000)


@pytest.fixture(scope="module")
def pool():
    started = DecodePool(DecodeBudget(workers=1, memory_bytes=96 * 2**20, timeout_s=1.0))
    yield started
    started.close()


def test_pixels_are_those_of_an_in_process_decode(pool, coco_photos) -> None:
    for path in coco_photos[:3]:
        data = path.read_bytes()
        got = pool.decode(data, (224, 224), DecodeLimits())
        want = decode_image(data, (224, 224))
        assert got[1:] == want[1:]
        np.testing.assert_array_equal(got[0], want[0])
    with pytest.raises(ImageRejected, match="cannot identify format"):
        pool.decode(b"not an image at all", (224, 224), DecodeLimits())


@pytest.mark.skipif(not hasattr(fcntl, "F_GETPIPE_SZ"), reason="pipe sizes are Linux's")
def test_a_whole_answer_fits_in_the_pipes(pool, coco_photos) -> None:
    """224 px pixels (150 KB) cross in one write, not a 64 KiB pipe's three
    (benchmarks/bench_decode_pool.py measures what that saves)."""
    pool.decode(coco_photos[0].read_bytes(), (224, 224), DecodeLimits())  # started and used
    (worker,) = pool._all
    for pipe in (worker.process.stdin, worker.process.stdout):
        assert fcntl.fcntl(pipe.fileno(), fcntl.F_GETPIPE_SZ) >= PIPE_BYTES > 224 * 224 * 3


def test_a_decode_past_its_deadline_is_stopped_and_the_worker_replaced(pool, coco_photos) -> None:
    started = time.monotonic()
    with pytest.raises(ImageRejected, match=r"decoding took longer than 1 s \(stopped\)"):
        pool.decode(_SLOW_JPEG, (224, 224), _NO_HEADER_LIMITS)
    assert time.monotonic() - started < 2.5
    data = coco_photos[0].read_bytes()  # the replacement worker answers
    assert pool.decode(data, (64, 64), DecodeLimits())[1:] == decode_image(data, (64, 64))[1:]


def test_a_decode_past_its_memory_is_rejected_and_the_worker_lives_on(pool, coco_photos) -> None:
    # 4000x4000 RGBA: about 200 MB to composite onto white, over the worker's 96 MiB.
    big = encoded(Image.new("RGBA", (4000, 4000), (10, 20, 30, 128)), "PNG")
    with pytest.raises(ImageRejected, match="needs more than 96 MiB of memory to decode"):
        pool.decode(big, (224, 224), _NO_HEADER_LIMITS)
    pid = pool._all[0].process.pid
    pool.decode(coco_photos[0].read_bytes(), (64, 64), DecodeLimits())
    assert pool._all[0].process.pid == pid  # the same worker: a MemoryError is survivable


def test_a_worker_that_dies_mid_decode_is_a_rejection_and_is_replaced(pool, coco_photos) -> None:
    pid = pool._all[0].process.pid
    threading.Timer(0.3, os.kill, (pid, signal.SIGKILL)).start()
    with pytest.raises(ImageRejected, match="decoder process died on this file"):
        pool.decode(_SLOW_JPEG, (224, 224), _NO_HEADER_LIMITS)
    assert pool._all[0].process.pid != pid
    pool.decode(coco_photos[0].read_bytes(), (64, 64), DecodeLimits())


def test_a_caller_that_finds_every_worker_busy_is_told_when_to_retry(coco_photos) -> None:
    busy = DecodePool(DecodeBudget(workers=1, timeout_s=2.0, wait_s=0.1))
    try:
        outcome = []

        def decode_slowly() -> None:
            try:
                busy.decode(_SLOW_JPEG, (64, 64), _NO_HEADER_LIMITS)
            except ImageRejected as exc:
                outcome.append(exc.reason)

        slow = threading.Thread(target=decode_slowly)
        slow.start()
        time.sleep(0.2)
        with pytest.raises(DecodeBusy) as refused:
            busy.decode(coco_photos[0].read_bytes(), (64, 64), DecodeLimits())
        assert refused.value.retry_after_s == 2
        slow.join()
        assert outcome == ["decoding took longer than 2 s (stopped)"]
    finally:
        busy.close()


def test_the_guarded_decoder_pickles_as_its_budget_and_shares_a_pool(coco_photos) -> None:
    decoder = GuardedDecoder(DecodeBudget(workers=1))
    copy = pickle.loads(pickle.dumps(decoder))
    data = coco_photos[1].read_bytes()
    assert copy == decoder
    assert copy(data, (32, 32), DecodeLimits())[1:] == decoder(data, (32, 32), DecodeLimits())[1:]
    query = bound_decoder(DecodeLimits(max_pixels=100), DecodeBudget(workers=1))
    with pytest.raises(ImageRejected, match="decompression bomb"):
        query(data, (32, 32))
    with pytest.raises(ImageRejected, match="empty file"):
        decoder(b"", (32, 32), DecodeLimits())


@pytest.mark.parametrize(
    "kwargs", [{"workers": 0}, {"memory_bytes": 2**20}, {"timeout_s": 0}, {"wait_s": -1}]
)
def test_the_budget_is_checked(kwargs) -> None:
    with pytest.raises(ValueError, match="decode"):
        DecodeBudget(**kwargs)


def test_a_decoder_bug_in_a_worker_reaches_the_caller_as_an_error(pool, coco_photos) -> None:
    """Not a rejected image: the index job's unexpected-error handling dead-letters it and logs."""
    with pytest.raises(RuntimeError, match="decode worker error: ValueError: output size"):
        pool.decode(coco_photos[0].read_bytes(), (0, 0), DecodeLimits())
    pool.decode(coco_photos[0].read_bytes(), (64, 64), DecodeLimits())  # the worker carries on


def test_thumbnails_come_from_the_workers_under_the_same_guards(pool, coco_photos) -> None:
    """A thumbnail is made in a worker (a source may have changed since it was indexed): the
    bytes of an in-process ``thumbnail_jpeg``, and a pathological source is stopped."""
    data = coco_photos[0].read_bytes()
    jpeg = pool.thumbnail(data, 96, DecodeLimits())
    assert jpeg == thumbnail_jpeg(data, 96)
    with Image.open(io.BytesIO(jpeg)) as thumb, Image.open(coco_photos[0]) as photo:
        assert max(thumb.size) == 96 and thumb.format == "JPEG"
        assert abs(thumb.width / thumb.height - photo.width / photo.height) < 0.05
    with pytest.raises(ImageRejected, match=r"took longer than 1 s \(stopped\)"):
        pool.thumbnail(_SLOW_JPEG, 96, _NO_HEADER_LIMITS)
    with pytest.raises(ImageRejected, match="scans"):
        pool.thumbnail(repeated_scans_jpeg(2000, 1000), 96, DecodeLimits())
    assert bound_thumbnailer(DecodeLimits())(data, 96) == jpeg  # in-process, same bytes
