"""Progress of long local work (training epochs, feature caching, evaluation loops).

Not for Beam jobs, which report through their runner. ``progress(iterable, ...)`` yields the
items of ``iterable`` and shows how far it got:

* on a terminal (the stream, stderr by default, is a TTY): a ``tqdm`` bar; while it is drawn,
  log lines are routed through ``tqdm.write`` so they do not tear it;
* otherwise (Airflow task logs, CI, a pipe): a plain log line now and then, at most every
  ``min_interval_s`` (5 s), when another tenth of the total is done, or after ``interval_s``
  (30 s) without one: ``"encoding captions: 120/1000 (12%), 3.4 caption/s, eta 4m 19s"``; a
  loop done within ``min_interval_s`` stays silent.

Both are on only while this module's logger (``training.progress``) is enabled for INFO, as
the CLI's ``logging.basicConfig(level=INFO)`` makes it: set that logger to WARNING (or pass
``disable=True``) for quiet. ``note(message)`` is the one-line counterpart for the steps'
news ("epoch 3/8: loss ..."), under the same switch.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

INTERVAL_S = 30.0
MIN_INTERVAL_S = 5.0
FRACTION = 0.1


def enabled() -> bool:
    """Whether progress is shown at all: this module's logger is enabled for INFO."""
    return logger.isEnabledFor(logging.INFO)


def note(message: str) -> None:
    """One line of news from a long step (logged at INFO on ``training.progress``)."""
    logger.info("%s", message)


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def format_duration(seconds: float) -> str:
    """``"45s"``, ``"4m 19s"``, ``"2h 05m"``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def _rate(done: float, seconds: float, unit: str) -> str:
    if done <= 0 or seconds <= 0:
        return f"- {unit}/s"
    per_second = done / seconds
    if per_second >= 1:
        return f"{per_second:.1f} {unit}/s"
    return f"{seconds / done:.1f} s/{unit}"


class Progress(Generic[T]):
    """Progress over ``iterable`` (iterate it) or over work counted by hand (``update(n)``,
    then ``close()``, or use it as a context manager).

    ``total`` defaults to ``len(iterable)`` when it has one. ``stream`` decides bar or lines
    (``sys.stderr`` when None); ``clock`` (seconds, monotonic) is injectable for tests.
    """

    def __init__(
        self,
        iterable: Iterable[T] | None = None,
        total: int | None = None,
        *,
        desc: str,
        unit: str = "it",
        disable: bool | None = None,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval_s: float = INTERVAL_S,
        min_interval_s: float = MIN_INTERVAL_S,
        leave: bool = True,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = 0
        self.postfix = ""
        self.disabled = not enabled() if disable is None else disable
        self._stream = sys.stderr if stream is None else stream
        self._clock, self._interval, self._min_interval = clock, interval_s, min_interval_s
        self._leave = leave
        self._bar: Any = None
        self._redirect: contextlib.ExitStack | None = None
        self._started: float | None = None
        self._last_line = 0.0
        self._last_tenth = 0
        self._lines = 0
        self._closed = False

    # -- counting ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("Progress without an iterable: call update(n) instead")
        self._start()
        try:
            for item in self.iterable:
                try:
                    yield item
                finally:  # the caller is done with ``item``: it asked for the next or left
                    self.update()
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        if self.disabled or self._closed:
            return
        self._start()
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = self._clock()
        since = now - self._last_line
        tenth = int(self.n / self.total / FRACTION) if self.total else 0
        if since >= self._interval or (tenth > self._last_tenth and since >= self._min_interval):
            self._emit(self.line(now))
            self._last_line, self._last_tenth = now, tenth

    def set_postfix(self, text: str) -> None:
        """Figures shown after the counts (``"loss 0.512, R@5 0.310"``)."""
        self.postfix = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        """End the bar; in line mode a last line, if any line was written."""
        if self._closed:
            return
        self._closed = True
        if self.disabled or self._started is None:
            return
        if self._bar is not None:
            self._bar.close()
            if self._redirect is not None:
                self._redirect.close()
            return
        if self._lines:
            elapsed = self._clock() - self._started
            done = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
            tail = f", {self.postfix}" if self.postfix else ""
            self._emit(
                f"{self.desc}: {done} done in {format_duration(elapsed)} "
                f"({_rate(self.n, elapsed, self.unit)}){tail}"
            )

    def __enter__(self) -> Progress[T]:
        self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- showing ----------------------------------------------------------------------------

    def line(self, now: float) -> str:
        """The plain line for the count so far (line mode)."""
        elapsed = now - (self._started if self._started is not None else now)
        if self.total:
            parts = [f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)"]
        else:
            parts = [f"{self.n} {self.unit}"]
        parts.append(_rate(self.n, elapsed, self.unit))
        if self.total and self.n:
            parts.append(f"eta {format_duration(elapsed / self.n * (self.total - self.n))}")
        else:
            parts.append(f"{format_duration(elapsed)} so far")
        if self.postfix:
            parts.append(self.postfix)
        return f"{self.desc}: {', '.join(parts)}"

    def _start(self) -> None:
        if self._started is not None or self.disabled:
            return
        self._started = self._last_line = self._clock()
        if not _is_tty(self._stream):
            return
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self._redirect = contextlib.ExitStack()
        self._redirect.enter_context(logging_redirect_tqdm(tqdm_class=tqdm))
        self._bar = tqdm(
            total=self.total,
            desc=self.desc,
            unit=self.unit,
            file=self._stream,
            leave=self._leave,
            dynamic_ncols=True,
        )

    def _emit(self, text: str) -> None:
        self._lines += 1
        logger.info("%s", text)


def progress(
    iterable: Iterable[T],
    total: int | None = None,
    *,
    desc: str,
    unit: str = "it",
    **options: Any,
) -> Progress[T]:
    """``Progress(iterable, total, desc=..., unit=...)``: iterate it like ``iterable``."""
    return Progress(iterable, total, desc=desc, unit=unit, **options)
