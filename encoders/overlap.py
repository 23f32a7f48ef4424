"""Decode on CPU threads while the model encodes the previous batch.

On a GPU the model is fast enough that decoding (JPEG + resize, on the CPU) becomes the limit;
clip-retrieval's figures are "limited by resizing" for that reason. Running decode in a thread
pool overlaps it with inference: Pillow releases the GIL while it decodes and resizes and
TensorFlow releases it while the graph runs, so threads are enough (no process pool, no pixel
copies between processes). The Beam job gets the same overlap from the SDK harness running
several bundles on threads; this is the loop for a single process (the encode benchmark, bulk
queries), with the same ``decode_image`` and the same encoder as the pipeline.
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np

from encoders.base import ImageEncoder

Item = TypeVar("Item")


def encode_overlapped(
    encoder: ImageEncoder,
    items: Iterable[Item],
    decode: Callable[[Item], np.ndarray],
    *,
    batch_size: int = 64,
    decode_threads: int = 4,
) -> Iterator[tuple[int, np.ndarray | None, Exception | None]]:
    """Yield ``(position, vector, None)`` or ``(position, None, error)`` for each item, in order.

    ``decode`` turns an item into ``(H, W, 3)`` uint8 pixels at the encoder's input size; an
    exception it raises is that item's error (the others go on: bad input is reported, never
    dropped). At most ``2 * batch_size`` items are decoded ahead, so memory stays bounded on an
    endless stream.
    """
    if batch_size <= 0 or decode_threads <= 0:
        raise ValueError(f"batch_size and decode_threads must be positive, got "
                         f"{batch_size} and {decode_threads}")  # fmt: skip
    lookahead = 2 * batch_size
    iterator = enumerate(items)
    with concurrent.futures.ThreadPoolExecutor(decode_threads, "imgsearch-decode") as pool:
        pending: collections.deque = collections.deque()

        def fill() -> None:
            while len(pending) < lookahead:
                try:
                    position, item = next(iterator)
                except StopIteration:
                    return
                pending.append((position, pool.submit(decode, item)))

        fill()
        while pending:
            positions, pixels, failed = [], [], []
            while pending and len(pixels) < batch_size:
                position, future = pending.popleft()
                try:
                    decoded = future.result()
                except Exception as exc:  # reported per item, not raised
                    failed.append((position, exc))
                else:
                    positions.append(position)
                    pixels.append(decoded)
            fill()  # the pool decodes the next batches while the model runs on this one
            vectors = encoder.encode(np.stack(pixels)) if pixels else []
            results = [(p, v, None) for p, v in zip(positions, vectors, strict=True)]
            results += [(p, None, exc) for p, exc in failed]
            yield from sorted(results, key=lambda r: r[0])
