"""Live progress of a local index run on a terminal: inputs listed, hashed and encoded.

Beam's metrics of a DirectRunner run are read only once it has finished, so the job's DoFns
also bump these process-wide counters (one locked add per element or batch), and while the run
is in progress the launcher redraws one status line on stderr once a second, only when stderr
is a terminal: logs (Airflow, CI, a pipe) get nothing from here. Workers in other processes
(Dataflow, the DirectRunner's multi_processing mode) count in their own copies; the launcher's
stay at zero and no line is drawn.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

STAGES = ("listed", "hashed", "encoded")

_lock = threading.Lock()
_counts = dict.fromkeys(STAGES, 0)


def bump(stage: str, n: int = 1) -> None:
    """Count ``n`` more elements through ``stage`` (one of ``STAGES``)."""
    with _lock:
        _counts[stage] += n


def counts() -> dict[str, int]:
    with _lock:
        return dict(_counts)


def reset() -> None:
    with _lock:
        _counts.update(dict.fromkeys(STAGES, 0))


def status_line(now: dict[str, int], rate: float | None) -> str:
    """``listed 7091 · hashed 5231 · encoded 3104 · 112 images/s · eta 36s`` (pure).

    ``rate``: images encoded per second, or None before it can be told.
    """
    parts = [f"{stage} {now[stage]}" for stage in STAGES]
    encoded, listed = now["encoded"], now["listed"]
    if rate:
        parts.append(f"{rate:.0f} images/s")
        if listed > encoded:
            parts.append(f"eta {_duration((listed - encoded) / rate)}")
    return " · ".join(parts)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds}s" if seconds < 60 else f"{seconds // 60}m {seconds % 60:02d}s"


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def live_progress(
    stream: TextIO | None = None,
    interval_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[None]:
    """Redraw the status line every ``interval_s`` while the block runs (a terminal only)."""
    stream = stream if stream is not None else sys.stderr
    reset()
    # -q (the job's loggers above INFO) keeps the terminal quiet too.
    if not _is_tty(stream) or not logging.getLogger("pipelines").isEnabledFor(logging.INFO):
        yield
        return
    done = threading.Event()
    first: list[tuple[float, int]] = []  # when encoding was first seen, and its count then

    def draw() -> bool:
        now, at = counts(), clock()
        if not any(now.values()):
            return False  # nothing counted in this process (remote or multi-process workers)
        if now["encoded"] and not first:
            first.append((at, now["encoded"]))
        rate = None
        if first and at > first[0][0]:
            # From the first encoded batch on: the model's start-up is not encoding speed.
            rate = (now["encoded"] - first[0][1]) / (at - first[0][0]) or None
        stream.write("\r\x1b[K" + status_line(now, rate))
        stream.flush()
        return True

    def loop() -> None:
        while not done.wait(interval_s):
            draw()

    def clear_line(record: logging.LogRecord) -> bool:
        # A log line written to the same terminal starts on a cleared line, not after the
        # status; the next tick draws the status again below it.
        stream.write("\r\x1b[K")
        return True

    handlers = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is stream]
    for handler in handlers:
        handler.addFilter(clear_line)
    drawer = threading.Thread(target=loop, name="index-progress", daemon=True)
    drawer.start()
    try:
        yield
    finally:
        done.set()
        drawer.join()
        for handler in handlers:
            handler.removeFilter(clear_line)
        if draw():
            stream.write("\n")
            stream.flush()
