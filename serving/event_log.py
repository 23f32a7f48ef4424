"""The click log's rules, without I/O: what an event is, when a batch is due, what is refused.

``POST /api/events`` (``serving.event_routes``) parses a body with ``parse_event`` into an
``EventIn``, turns it into one row (``event_record``, columns ``EVENT_SCHEMA``) and offers it to
an ``EventBatcher``. The batcher holds rows in memory until a batch is due (``flush_events``
rows, or the oldest row is ``flush_interval_s`` old); ``serving.event_writer`` writes each due
batch as one Parquet file named by ``event_file_name``. Limits (``EventLimits``) bound every
part: the body, each string, the rows held in memory (``buffer_full``) and what the files may
take per UTC day and in all (``disk_cap``, kept by ``DiskBudget``). A refusal is a 503 and a
counted metric, never a silent drop.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import enum
import re
import threading
import time
from collections.abc import Callable
from typing import Annotated, Literal

import pyarrow as pa
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

EVENT_KINDS = ("view", "click")
QUERY_KINDS = ("text", "similar", "image")
MAX_QUERY_CHARS = 500  # as ServeConfig.max_query_chars: the longest query the page can send
MAX_RANK = 100_000

# One row per accepted event. ``event_id``, ``received_at`` and ``serving_version`` are the
# server's; the rest is what the page sent. A view (a results page shown) has no image or rank.
EVENT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("received_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("query_kind", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("version", pa.string(), nullable=False),
        pa.field("serving_version", pa.string(), nullable=False),
        pa.field("image_id", pa.string()),
        pa.field("rank", pa.int32()),
        pa.field("session", pa.string()),
    ]
)

# events-20261101T120000Z-1a2b3c4d-000001.parquet: the UTC time of the write, the writing
# process (two servers may share a folder), its file sequence. Names sort by time.
_FILE_NAME = re.compile(r"^events-(\d{8})T(\d{6})Z-([0-9a-f]{8})-(\d{6})\.parquet$")
FILE_PATTERN = "events-*.parquet"
# ``storage.files.replace_by_rename`` writes ``.<name>.tmp-<hex>`` and then renames it.
TEMP_PATTERN = ".events-*.parquet.tmp-*"


def _printable(text: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError("must not contain control characters")
    return text


Printable = AfterValidator(_printable)


class EventIn(BaseModel):
    """The JSON body of ``POST /api/events``: one view of a results page, or one click."""

    model_config = ConfigDict(extra="forbid", strict=True)

    kind: Literal["view", "click"] = Field(
        description="view: a results page was shown; click: a result on it was clicked"
    )
    query_kind: Literal["text", "similar", "image"] = Field(
        "text", description="text: `query` is the text typed; similar: the reference image id"
    )
    query: Annotated[str, Field(max_length=MAX_QUERY_CHARS), Printable] = ""
    version: Annotated[str, Field(min_length=1, max_length=128), Printable] = Field(
        description="the index version the page showed"
    )
    image_id: Annotated[str, Field(min_length=1, max_length=256), Printable] | None = Field(
        None, description="the clicked result (clicks only)"
    )
    rank: Annotated[int, Field(ge=1, le=MAX_RANK)] | None = Field(
        None, description="the clicked result's rank, 1 = first, offset included (clicks only)"
    )
    session: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = Field(
        None, description="an opaque id the page keeps per browser tab"
    )

    @model_validator(mode="after")
    def _click_names_a_result(self) -> EventIn:
        if self.kind == "click" and (self.image_id is None or self.rank is None):
            raise ValueError("a click needs image_id and rank")
        if self.kind == "view" and (self.image_id is not None or self.rank is not None):
            raise ValueError("a view is of a results page: no image_id or rank")
        return self


class EventRejected(ValueError):
    """A body that is not one valid event; ``status`` is the HTTP status it maps to."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def parse_event(body: bytes, max_body_bytes: int) -> EventIn:
    """One event from a request body: 413 too large, 400 not JSON, 422 not a valid event."""
    if len(body) > max_body_bytes:
        raise EventRejected(413, f"event body larger than {max_body_bytes} bytes")
    try:
        return EventIn.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        if first["type"] == "json_invalid":
            raise EventRejected(400, "the body is not JSON") from None
        where = ".".join(str(part) for part in first["loc"]) or "body"
        # The message names the field and the rule, never echoes the (untrusted) input.
        raise EventRejected(422, f"{where}: {first['msg']}"[:300]) from None


def event_record(
    event: EventIn, event_id: str, received_at: dt.datetime, serving_version: str
) -> dict:
    """The row of ``EVENT_SCHEMA`` for one accepted event."""
    return {
        "event_id": event_id,
        "received_at": received_at,
        "serving_version": serving_version,
        **event.model_dump(),
    }


@dataclasses.dataclass(frozen=True)
class EventLimits:
    """How much the click log may hold and write (README, "Click log").

    A batch is written when it has ``flush_events`` rows or its oldest row is
    ``flush_interval_s`` old. At most ``max_buffer_events`` rows wait in memory (the batch being
    written included); past that new events get 503. Once the files written today (UTC) reach
    ``max_files_per_day`` or ``max_bytes_per_day``, or all event files in the folder reach
    ``max_total_bytes``, new events get 503 until the next day (or until files are moved away);
    rows already accepted are still written, so a cap is passed by at most one buffer.
    Temp files of a killed write older than ``stale_temp_s`` are deleted at start.
    """

    max_body_bytes: int = 4096
    flush_interval_s: float = 60.0
    flush_events: int = 1000
    max_buffer_events: int = 10_000
    max_files_per_day: int = 5000
    max_bytes_per_day: int = 256 * 2**20
    max_total_bytes: int = 2 * 2**30
    stale_temp_s: float = 600.0

    def __post_init__(self) -> None:
        if not 256 <= self.max_body_bytes <= 64 * 1024:
            raise ValueError(f"max_body_bytes must be in [256, 65536], got {self.max_body_bytes}")
        if not 0 < self.flush_interval_s <= 3600:
            raise ValueError(f"flush_interval_s must be in (0, 3600], got {self.flush_interval_s}")
        if not 1 <= self.flush_events <= self.max_buffer_events:
            raise ValueError(
                f"flush_events must be in [1, max_buffer_events={self.max_buffer_events}], "
                f"got {self.flush_events}"
            )
        if min(self.max_files_per_day, self.max_bytes_per_day, self.max_total_bytes) < 1:
            raise ValueError("the click log's file and byte caps must be positive")
        if self.stale_temp_s < 0:
            raise ValueError(f"stale_temp_s must be >= 0, got {self.stale_temp_s}")


class Admission(enum.Enum):
    """What happened to an offered event; everything but ACCEPTED is a 503."""

    ACCEPTED = "accepted"
    BUFFER_FULL = "buffer_full"
    DISK_CAP = "disk_cap"
    CLOSED = "closed"  # the server is shutting down: the last flush has run


def utc_day(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y%m%d")


@dataclasses.dataclass
class DiskBudget:
    """Bytes and files the click log has written: today's (UTC ``day``) and in all."""

    limits: EventLimits
    total_bytes: int = 0
    day: str = ""
    day_files: int = 0
    day_bytes: int = 0

    def record(self, day: str, num_bytes: int) -> None:
        """One more file of ``num_bytes`` written on ``day``."""
        self._roll(day)
        self.day_files += 1
        self.day_bytes += num_bytes
        self.total_bytes += num_bytes

    def refusal(self, day: str) -> str | None:
        """Why no more events may be accepted on ``day``, or None while under every cap."""
        self._roll(day)
        if self.total_bytes >= self.limits.max_total_bytes:
            return (
                f"the event folder holds {self.total_bytes} bytes "
                f"(cap {self.limits.max_total_bytes})"
            )
        if self.day_files >= self.limits.max_files_per_day:
            return (
                f"{self.day_files} event files written today (cap {self.limits.max_files_per_day})"
            )
        if self.day_bytes >= self.limits.max_bytes_per_day:
            return (
                f"{self.day_bytes} event bytes written today (cap {self.limits.max_bytes_per_day})"
            )
        return None

    def _roll(self, day: str) -> None:
        if day != self.day:
            self.day, self.day_files, self.day_bytes = day, 0, 0


def budget_from_files(limits: EventLimits, files: list[tuple[str, int]], today: str) -> DiskBudget:
    """The budget already used by existing event files (``(name, size)``), e.g. at start."""
    budget = DiskBudget(limits, day=today)
    for name, size in files:
        budget.total_bytes += size
        if file_day(name) == today:
            budget.day_files += 1
            budget.day_bytes += size
    return budget


class EventBatcher:
    """Accepted rows in arrival order, the batch being written, and the disk budget.

    Thread-safe: request handlers ``offer``; the writer thread ``take``s a due batch, writes it,
    then calls ``written`` (or ``failed``, which puts the rows back in front for a retry).
    ``clock`` is monotonic seconds (a fake in tests).
    """

    def __init__(
        self, limits: EventLimits, budget: DiskBudget, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits, self.budget, self._clock = limits, budget, clock
        self._rows: collections.deque[tuple[float, dict]] = collections.deque()
        self._in_flight: list[tuple[float, dict]] = []
        self._closed = False
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Rows accepted and not yet written (waiting, or in the batch being written)."""
        with self._lock:
            return len(self._rows) + len(self._in_flight)

    def offer(self, row: dict, day: str) -> Admission:
        with self._lock:
            if self._closed:
                return Admission.CLOSED
            if len(self._rows) + len(self._in_flight) >= self.limits.max_buffer_events:
                return Admission.BUFFER_FULL
            if self.budget.refusal(day) is not None:
                return Admission.DISK_CAP
            self._rows.append((self._clock(), row))
            return Admission.ACCEPTED

    def due(self) -> bool:
        return self.seconds_until_due() == 0.0

    def seconds_until_due(self) -> float | None:
        """0 when a batch is due now; None when nothing waits (or a batch is being written)."""
        with self._lock:
            if not self._rows or self._in_flight:
                return None
            if len(self._rows) >= self.limits.flush_events:
                return 0.0
            age = self._clock() - self._rows[0][0]
            return max(0.0, self.limits.flush_interval_s - age)

    def take(self) -> list[dict]:
        """The next batch (oldest first, at most ``flush_events`` rows), now in flight."""
        with self._lock:
            if self._in_flight:
                raise RuntimeError("a batch is already being written")
            count = min(len(self._rows), self.limits.flush_events)
            self._in_flight = [self._rows.popleft() for _ in range(count)]
            return [row for _, row in self._in_flight]

    def written(self, day: str, num_bytes: int) -> None:
        """The batch in flight is in a file of ``num_bytes`` written on ``day``."""
        with self._lock:
            self._in_flight = []
            self.budget.record(day, num_bytes)

    def failed(self) -> None:
        """The batch in flight was not written: back in front, to be retried."""
        with self._lock:
            self._rows.extendleft(reversed(self._in_flight))
            self._in_flight = []

    def close(self) -> None:
        """Refuse new events from now on (``Admission.CLOSED``); what waits can still be taken."""
        with self._lock:
            self._closed = True


def event_file_name(written_at: dt.datetime, writer_id: str, sequence: int) -> str:
    """``events-YYYYMMDDTHHMMSSZ-<writer>-<sequence>.parquet``, written at ``written_at``."""
    if not re.fullmatch(r"[0-9a-f]{8}", writer_id) or not 0 <= sequence < 10**6:
        raise ValueError(f"writer_id is 8 hex digits and sequence < 1e6: {writer_id!r} {sequence}")
    stamp = written_at.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"events-{stamp}-{writer_id}-{sequence:06d}.parquet"


def is_event_file(name: str) -> bool:
    """Whether ``name`` is a finished event file (a temp file of an unfinished write is not)."""
    return _FILE_NAME.match(name) is not None


def file_day(name: str) -> str | None:
    """The UTC day (``YYYYMMDD``) an event file was written on; None for other names."""
    match = _FILE_NAME.match(name)
    return match.group(1) if match else None


def is_temp_file(name: str) -> bool:
    """Whether ``name`` is the temp file of an event file write (finished or killed)."""
    return name.startswith(".events-") and ".parquet.tmp-" in name
