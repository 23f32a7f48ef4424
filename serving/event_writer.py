"""The click log's I/O: a thread that writes due batches as Parquet files, and the reader.

``EventWriter`` owns an ``EventBatcher`` (``serving.event_log``). Its thread wakes when a batch
is due and writes it whole with ``storage.files.replace_by_rename`` (a hidden temp name, then
one rename), so a reader sees a finished file or none; ``stop`` (the app's lifespan shutdown)
writes everything still waiting. A failed write puts the batch back and is retried. What a 202
means: the event is in memory; it is on disk within ``flush_interval_s`` (or sooner in a full
batch) and lost only if the process dies before that (SIGKILL, OOM, power: files are not
fsynced).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from serving.event_log import (
    EVENT_SCHEMA,
    FILE_PATTERN,
    TEMP_PATTERN,
    Admission,
    EventBatcher,
    EventIn,
    EventLimits,
    budget_from_files,
    event_file_name,
    event_record,
    is_event_file,
    is_temp_file,
    utc_day,
)
from serving.metrics import ServerMetrics
from storage.files import delete_file, file_name, join_uri, open_file, replace_by_rename

logger = logging.getLogger(__name__)

# After a failed write, wait this long (at most the flush interval) before the retry.
_RETRY_S = 5.0


def _listing(folder: str, pattern: str) -> list[tuple[str, int, float]]:
    """(path, size, mtime) of the files in ``folder`` matching ``pattern``, local or gs://.

    storage.files.list_files gives paths only; the caps need sizes and the clean-up ages, which
    Beam's match already returns without reading any file.
    """
    matched = FileSystems.match([join_uri(folder, pattern)])[0].metadata_list
    return sorted((m.path, m.size_in_bytes, m.last_updated_in_seconds) for m in matched)


def event_files(folder: str) -> list[str]:
    """Paths of the finished event files in ``folder``, oldest first (temp files left out)."""
    return [path for path, _, _ in _listing(folder, FILE_PATTERN) if is_event_file(file_name(path))]


def read_events(folder: str) -> pa.Table:
    """Every event in ``folder``'s finished files, in ``EVENT_SCHEMA`` (empty when none)."""
    tables = []
    for path in event_files(folder):
        with open_file(path) as handle:
            tables.append(pq.read_table(handle, schema=EVENT_SCHEMA))
    return pa.concat_tables(tables) if tables else EVENT_SCHEMA.empty_table()


def parquet_bytes(rows: list[dict]) -> bytes:
    """One batch as the bytes of a Parquet file (explicit schema, zstd)."""
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=EVENT_SCHEMA), sink, compression="zstd")
    return sink.getvalue().to_pybytes()


class EventWriter:
    """Accepts events into memory and writes them, batched, under ``folder`` (local or gs://)."""

    def __init__(
        self,
        folder: str,
        limits: EventLimits,
        metrics: ServerMetrics | None = None,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.folder, self.limits, self.metrics = folder.rstrip("/") or folder, limits, metrics
        self._now = now
        self.writer_id = uuid.uuid4().hex[:8]
        self._sequence = 0
        self.batcher = EventBatcher(limits, budget_from_files(limits, [], utc_day(now())), clock)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._write_lock = threading.Lock()  # one write at a time: the thread's or stop's
        self._thread: threading.Thread | None = None
        self._capped = False

    def start(self) -> None:
        """Delete stale temp files, count the existing files against the caps, start writing."""
        wall = time.time()
        for path, _, updated in _listing(self.folder, TEMP_PATTERN):
            if is_temp_file(file_name(path)) and wall - updated >= self.limits.stale_temp_s:
                delete_file(path)
                logger.warning("deleted %s: the temp file of an interrupted event write", path)
        existing = [
            (file_name(path), size) for path, size, _ in _listing(self.folder, FILE_PATTERN)
        ]
        existing = [(name, size) for name, size in existing if is_event_file(name)]
        self.batcher.budget = budget_from_files(self.limits, existing, utc_day(self._now()))
        self._thread = threading.Thread(target=self._run, name="event-writer", daemon=True)
        self._thread.start()
        logger.info(
            "click log: writing to %s (%d files there, %d bytes)",
            self.folder,
            len(existing),
            self.batcher.budget.total_bytes,
        )

    def offer(self, event: EventIn, serving_version: str) -> tuple[Admission, str]:
        """Put one event in the buffer -> (what happened, its event id)."""
        event_id = uuid.uuid4().hex
        received_at = self._now()
        row = event_record(event, event_id, received_at, serving_version)
        admission = self.batcher.offer(row, utc_day(received_at))
        if self.metrics is not None:
            self.metrics.events.labels(result=admission.value).inc()
            self.metrics.events_buffered.set(self.batcher.pending)
        if admission is Admission.ACCEPTED and self.batcher.due():
            self._wake.set()
        if admission is Admission.DISK_CAP and not self._capped:  # once, not per request
            why = self.batcher.budget.refusal(utc_day(received_at))
            logger.warning("click log: refusing events: %s (README, Click log)", why)
        if admission in (Admission.ACCEPTED, Admission.DISK_CAP):
            self._capped = admission is Admission.DISK_CAP
        return admission, event_id

    def flush(self) -> int:
        """Write everything waiting now, in full batches -> files written (tests, shutdown)."""
        files = 0
        while self.batcher.pending:
            if not self._write_batch():
                break
            files += 1
        return files

    def stop(self) -> None:
        """Refuse new events, stop the thread, write what is left (the lifespan shutdown)."""
        self.batcher.close()
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        self.flush()
        if self.batcher.pending:
            logger.error(
                "click log: %d accepted events could not be written to %s before exit",
                self.batcher.pending,
                self.folder,
            )

    def _run(self) -> None:
        while not self._stopping.is_set():
            wait = self.batcher.seconds_until_due()
            self._wake.wait(self.limits.flush_interval_s if wait is None else wait)
            self._wake.clear()
            if self._stopping.is_set():
                return
            if self.batcher.due() and not self._write_batch():
                self._stopping.wait(min(_RETRY_S, self.limits.flush_interval_s))

    def _write_batch(self) -> bool:
        """Write the next batch as one file -> whether it was written (else it is put back)."""
        with self._write_lock:
            rows = self.batcher.take()
            if not rows:
                return True
            written_at = self._now()
            self._sequence += 1
            name = event_file_name(written_at, self.writer_id, self._sequence % 10**6)
            try:
                payload = parquet_bytes(rows)
                replace_by_rename(self.folder, name, payload)
            except Exception:  # a full disk, a GCS error: keep the rows, retry, say so
                self.batcher.failed()
                logger.exception("click log: writing %d events to %s failed", len(rows), name)
                self._count("failed", 0)
                return False
            self.batcher.written(utc_day(written_at), len(payload))
            self._count("written", len(rows))
            logger.debug("click log: wrote %d events to %s", len(rows), name)
            return True

    def _count(self, result: str, rows: int) -> None:
        if self.metrics is None:
            return
        self.metrics.event_files.labels(result=result).inc()
        self.metrics.events_written.inc(rows)
        self.metrics.events_buffered.set(self.batcher.pending)
