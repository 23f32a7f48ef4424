"""The click log's rules (serving/event_log.py) and its writer on local disk, without a server."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from serving.event_log import (
    EVENT_SCHEMA,
    Admission,
    DiskBudget,
    EventBatcher,
    EventLimits,
    EventRejected,
    budget_from_files,
    event_file_name,
    file_day,
    is_event_file,
    is_temp_file,
    parse_event,
)
from serving.event_writer import EventWriter, event_files, read_events
from serving.metrics import ServerMetrics

CLICK = {"kind": "click", "query": "a dog", "version": "v1", "image_id": "abc123", "rank": 3}
VIEW = {"kind": "view", "query": "a dog", "version": "v1"}
DAY = "20261101"
NOON = dt.datetime(2026, 11, 1, 12, 0, 0, tzinfo=dt.UTC)


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _body(event: dict) -> bytes:
    return json.dumps(event).encode()


def _rejected(body: bytes, max_body: int = 4096) -> tuple[int, str]:
    with pytest.raises(EventRejected) as caught:
        parse_event(body, max_body)
    return caught.value.status, caught.value.message


# -- validation ---------------------------------------------------------------------------------


def test_a_click_and_a_view_parse() -> None:
    click = parse_event(_body({**CLICK, "session": "tab_1-a", "query_kind": "text"}), 4096)
    assert (click.kind, click.image_id, click.rank, click.session) == (
        "click",
        "abc123",
        3,
        "tab_1-a",
    )
    view = parse_event(_body(VIEW), 4096)
    assert view.kind == "view" and view.image_id is None and view.rank is None
    assert view.query_kind == "text"
    similar = parse_event(_body({**VIEW, "query_kind": "similar", "query": "abc123"}), 4096)
    assert similar.query_kind == "similar"


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({**CLICK, "kind": "purchase"}, "kind"),
        ({**CLICK, "query_kind": "sql"}, "query_kind"),
        ({**CLICK, "rank": 0}, "rank"),
        ({**CLICK, "rank": "3"}, "rank"),  # strict: no strings for numbers
        ({**CLICK, "rank": 100_001}, "rank"),
        ({**CLICK, "query": "x" * 501}, "query"),
        ({**CLICK, "version": ""}, "version"),
        ({**CLICK, "version": "v" * 129}, "version"),
        ({**CLICK, "image_id": "i" * 257}, "image_id"),
        ({**CLICK, "image_id": "a\nb"}, "image_id"),
        ({**CLICK, "query": "dog\x00"}, "query"),
        ({**CLICK, "session": "no spaces"}, "session"),
        ({**CLICK, "extra": 1}, "extra"),
        ({k: v for k, v in CLICK.items() if k != "version"}, "version"),
        ({k: v for k, v in CLICK.items() if k != "rank"}, "body"),  # a click names its result
        ({**VIEW, "rank": 1}, "body"),  # a view is of a page, not a result
    ],
)
def test_invalid_events_are_422_naming_the_field(event: dict, field: str) -> None:
    status, message = _rejected(_body(event))
    assert status == 422 and message.startswith(field), message
    assert "\x00" not in message and "xxxx" not in message  # the input is never echoed


def test_not_json_is_400_and_too_large_is_413() -> None:
    assert _rejected(b"{not json")[0] == 400
    assert _rejected(b"")[0] == 400
    assert _rejected(b"[1, 2]")[0] == 422  # JSON, but not an object
    padded = _body({**CLICK, "query": "x" * 400})
    assert _rejected(padded, max_body=256)[0] == 413
    assert parse_event(padded, 4096).query == "x" * 400


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="flush_events"):
        EventLimits(flush_events=20, max_buffer_events=10)
    with pytest.raises(ValueError, match="flush_interval_s"):
        EventLimits(flush_interval_s=0)
    with pytest.raises(ValueError, match="caps"):
        EventLimits(max_total_bytes=0)
    with pytest.raises(ValueError, match="max_body_bytes"):
        EventLimits(max_body_bytes=10**6)


# -- batching -----------------------------------------------------------------------------------


def _batcher(clock: FakeClock, **limits) -> EventBatcher:
    chosen = EventLimits(**limits)
    return EventBatcher(chosen, DiskBudget(chosen, day=DAY), clock)


def test_a_batch_is_due_at_flush_events_or_when_its_oldest_row_is_old() -> None:
    clock = FakeClock()
    batcher = _batcher(clock, flush_interval_s=60, flush_events=3, max_buffer_events=10)
    assert batcher.seconds_until_due() is None and not batcher.due()  # nothing waits
    assert batcher.offer({"n": 1}, DAY) is Admission.ACCEPTED
    clock.now += 20
    batcher.offer({"n": 2}, DAY)
    assert batcher.seconds_until_due() == pytest.approx(40.0)  # the oldest row counts
    clock.now += 40
    assert batcher.due()
    assert batcher.take() == [{"n": 1}, {"n": 2}]
    assert batcher.pending == 2 and batcher.seconds_until_due() is None  # in flight
    batcher.written(DAY, 500)
    assert batcher.pending == 0
    for n in range(3):
        batcher.offer({"n": n}, DAY)
    assert batcher.due()  # full batch, at once


def test_take_is_at_most_one_batch_oldest_first() -> None:
    batcher = _batcher(FakeClock(), flush_events=2, max_buffer_events=10)
    for n in range(5):
        batcher.offer({"n": n}, DAY)
    assert batcher.take() == [{"n": 0}, {"n": 1}]
    with pytest.raises(RuntimeError):
        batcher.take()  # one batch in flight at a time
    batcher.written(DAY, 1)
    assert batcher.take() == [{"n": 2}, {"n": 3}]


def test_a_failed_batch_goes_back_in_front() -> None:
    batcher = _batcher(FakeClock(), flush_events=2, max_buffer_events=10)
    for n in range(3):
        batcher.offer({"n": n}, DAY)
    assert batcher.take() == [{"n": 0}, {"n": 1}]
    batcher.offer({"n": 3}, DAY)
    batcher.failed()
    assert batcher.pending == 4
    assert batcher.take() == [{"n": 0}, {"n": 1}]


# -- limits -------------------------------------------------------------------------------------


def test_a_full_buffer_refuses_counting_the_batch_in_flight() -> None:
    batcher = _batcher(FakeClock(), flush_events=2, max_buffer_events=3)
    assert [batcher.offer({"n": n}, DAY) for n in range(4)] == [Admission.ACCEPTED] * 3 + [
        Admission.BUFFER_FULL
    ]
    batcher.take()  # two rows being written still take their room
    assert batcher.offer({"n": 9}, DAY) is Admission.BUFFER_FULL
    batcher.written(DAY, 100)
    assert batcher.offer({"n": 9}, DAY) is Admission.ACCEPTED
    assert batcher.pending == 2


def test_closed_refuses_but_keeps_what_waits() -> None:
    batcher = _batcher(FakeClock(), flush_events=5)
    batcher.offer({"n": 1}, DAY)
    batcher.close()
    assert batcher.offer({"n": 2}, DAY) is Admission.CLOSED
    assert batcher.take() == [{"n": 1}]


def test_disk_caps_per_day_and_in_all() -> None:
    limits = EventLimits(max_files_per_day=2, max_bytes_per_day=1000, max_total_bytes=5000)
    budget = DiskBudget(limits, day=DAY)
    assert budget.refusal(DAY) is None
    budget.record(DAY, 100)
    budget.record(DAY, 100)
    assert "2 event files written today" in budget.refusal(DAY)
    assert budget.refusal("20261102") is None  # a new UTC day, a new daily budget
    budget.record("20261102", 1000)
    assert "1000 event bytes written today" in budget.refusal("20261102")
    for day in ("20261103", "20261104", "20261105"):
        budget.record(day, 900)
    assert budget.total_bytes == 3900 and budget.refusal("20261105") is None
    budget.record("20261105", 900)
    assert "2 event files written today" in budget.refusal("20261105")
    assert budget.refusal("20261106") is None  # 4800 bytes in all: under 5000
    budget.record("20261106", 300)
    assert budget.refusal("20261107") == "the event folder holds 5100 bytes (cap 5000)"


def test_the_batcher_refuses_at_the_disk_cap() -> None:
    limits = EventLimits(max_files_per_day=1, flush_events=1)
    batcher = EventBatcher(limits, DiskBudget(limits, day=DAY), FakeClock())
    assert batcher.offer({"n": 1}, DAY) is Admission.ACCEPTED
    batcher.take()
    batcher.written(DAY, 10)
    assert batcher.offer({"n": 2}, DAY) is Admission.DISK_CAP
    assert batcher.offer({"n": 2}, "20261102") is Admission.ACCEPTED


def test_the_budget_counts_existing_files() -> None:
    yesterday = event_file_name(NOON - dt.timedelta(days=1), "0000000a", 1)
    today = [event_file_name(NOON, "0000000a", n) for n in (2, 3)]
    budget = budget_from_files(
        EventLimits(), [(yesterday, 700), (today[0], 100), (today[1], 50)], DAY
    )
    assert (budget.total_bytes, budget.day_files, budget.day_bytes) == (850, 2, 150)


# -- file names ---------------------------------------------------------------------------------


def test_file_names_sort_by_time_and_temp_files_are_not_event_files() -> None:
    name = event_file_name(NOON, "1a2b3c4d", 7)
    assert name == "events-20261101T120000Z-1a2b3c4d-000007.parquet"
    assert is_event_file(name) and file_day(name) == DAY
    later = event_file_name(NOON + dt.timedelta(seconds=1), "00000000", 1)
    assert sorted([later, name]) == [name, later]
    temp = f".{name}.tmp-0123abcd"  # as storage.files.replace_by_rename names it
    assert not is_event_file(temp) and is_temp_file(temp) and file_day(temp) is None
    assert not is_event_file("events-latest.parquet") and not is_temp_file(name)
    with pytest.raises(ValueError):
        event_file_name(NOON, "XYZ", 1)


# -- the writer on local disk -------------------------------------------------------------------


def _event(n: int):
    return parse_event(_body({**CLICK, "rank": n}), 4096)


def test_the_writer_writes_batches_and_everything_at_stop(tmp_path: Path) -> None:
    metrics = ServerMetrics()
    limits = EventLimits(flush_interval_s=3600, flush_events=4, max_buffer_events=100)
    writer = EventWriter(str(tmp_path / "log"), limits, metrics)
    writer.start()
    ids = [writer.offer(_event(n), "v1")[1] for n in range(1, 11)]
    deadline = time.monotonic() + 10
    while len(event_files(str(tmp_path / "log"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)  # two full batches of 4 go at once; the last 2 wait for the interval
    assert len(event_files(str(tmp_path / "log"))) == 2
    writer.stop()
    files = event_files(str(tmp_path / "log"))
    assert len(files) == 3
    assert pq.read_schema(files[0]).remove_metadata() == EVENT_SCHEMA
    table = read_events(str(tmp_path / "log"))
    assert table.column("event_id").to_pylist() == ids
    assert table.column("rank").to_pylist() == list(range(1, 11))
    assert set(table.column("serving_version").to_pylist()) == {"v1"}
    assert writer.offer(_event(1), "v1")[0] is Admission.CLOSED
    assert metrics.events_written._value.get() == 10
    assert metrics.events.labels(result="accepted")._value.get() == 10
    assert metrics.events.labels(result="closed")._value.get() == 1


def test_the_writer_flushes_on_the_interval(tmp_path: Path) -> None:
    writer = EventWriter(str(tmp_path), EventLimits(flush_interval_s=0.2, flush_events=100))
    writer.start()
    writer.offer(_event(1), "v1")
    deadline = time.monotonic() + 10
    while not event_files(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(read_events(str(tmp_path))) == 1
    writer.stop()


def test_a_failed_write_is_retried_not_dropped(tmp_path: Path, monkeypatch) -> None:
    import serving.event_writer as event_writer

    metrics = ServerMetrics()
    writer = EventWriter(str(tmp_path), EventLimits(flush_events=2), metrics)
    real = event_writer.replace_by_rename
    calls = []

    def flaky(folder, name, payload):
        calls.append(name)
        if len(calls) == 1:
            raise OSError("No space left on device")
        real(folder, name, payload)

    monkeypatch.setattr(event_writer, "replace_by_rename", flaky)
    for n in (1, 2, 3):
        writer.offer(_event(n), "v1")
    assert writer.flush() == 0 and writer.batcher.pending == 3  # kept, in order
    assert writer.flush() == 2
    assert read_events(str(tmp_path)).column("rank").to_pylist() == [1, 2, 3]
    assert metrics.event_files.labels(result="failed")._value.get() == 1


def test_the_writer_refuses_at_the_cap_of_existing_files(tmp_path: Path) -> None:
    limits = EventLimits(max_total_bytes=2000, flush_events=1)
    first = EventWriter(str(tmp_path), limits)
    for n in range(1, 4):
        first.offer(_event(n), "v1")
        first.flush()
    used = sum(os.path.getsize(p) for p in event_files(str(tmp_path)))
    assert used >= 2000
    assert first.offer(_event(4), "v1")[0] is Admission.DISK_CAP
    # A restarted server counts what is already there.
    second = EventWriter(str(tmp_path), limits)
    second.start()
    assert second.offer(_event(5), "v1")[0] is Admission.DISK_CAP
    second.stop()


def test_stale_temp_files_are_ignored_and_deleted_at_start(tmp_path: Path) -> None:
    name = event_file_name(NOON, "1a2b3c4d", 1)
    stale = tmp_path / f".{name}.tmp-deadbeef"
    stale.write_bytes(b"PAR1 half a file")
    fresh = tmp_path / f".{name}.tmp-cafe0000"  # maybe another server's write in progress
    fresh.write_bytes(b"PAR1")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert event_files(str(tmp_path)) == [] and len(read_events(str(tmp_path))) == 0
    writer = EventWriter(str(tmp_path), EventLimits(stale_temp_s=600))
    writer.start()
    writer.stop()
    assert not stale.exists() and fresh.exists()
