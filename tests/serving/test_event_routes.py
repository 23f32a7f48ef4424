"""``POST /api/events`` in the real app over a served index version, and the page's snippet."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import status_code_conformance

from serving.app import create_app
from serving.config import ServeConfig
from serving.event_log import EventLimits, is_temp_file
from serving.event_routes import OFF_MESSAGE
from serving.event_writer import event_files, read_events

CLICK = {"kind": "click", "query": "a dog", "version": "v1", "image_id": "abc123", "rank": 2}
VIEW = {"kind": "view", "query": "a dog", "version": "v1", "session": "tab1"}
# A long interval: in these tests files are written by the lifespan shutdown or a flush call.
REPO = Path(__file__).resolve().parents[2]
SLOW = EventLimits(flush_interval_s=3600, flush_events=1000, max_buffer_events=2000)


def _config(root: Path, models: Path, events: Path | None, limits: EventLimits = SLOW):
    return ServeConfig(
        index=str(root),
        models_dir=str(models),
        poll_interval_s=0,
        events_dir=str(events) if events is not None else None,
        event_limits=limits,
    )


def _post(client: TestClient, event, content_type: str = "application/json"):
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    return client.post("/api/events", content=body, headers={"content-type": content_type})


def _counter(client: TestClient, result: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'imgsearch_events_total{{result="{result}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_logging_off_is_503_and_out_of_the_schema(publish_root: Path, serve_models: Path) -> None:
    with TestClient(create_app(_config(publish_root, serve_models, None))) as client:
        response = _post(client, CLICK)
        assert response.status_code == 503 and response.json() == {"detail": OFF_MESSAGE}
        assert "/api/events" not in client.get("/openapi.json").json()["paths"]
        page = client.get("/", params={"q": "a dog"})
        assert page.status_code == 200 and "/api/events" not in page.text
        assert _counter(client, "off") == 1


def test_events_are_accepted_and_reach_parquet_at_shutdown(
    publish_root: Path, serve_models: Path, tmp_path: Path
) -> None:
    events = tmp_path / "events"
    with TestClient(create_app(_config(publish_root, serve_models, events))) as client:
        clicked = _post(client, CLICK)
        assert clicked.status_code == 202, clicked.text
        assert clicked.json()["accepted"] is True
        viewed = _post(client, VIEW, "application/json; charset=utf-8")
        assert viewed.status_code == 202
        assert event_files(str(events)) == []  # in the buffer until the interval or shutdown
        assert _counter(client, "accepted") == 2
        assert "/api/events" in client.get("/openapi.json").json()["paths"]
    rows = read_events(str(events)).to_pylist()
    assert [r["event_id"] for r in rows] == [clicked.json()["event_id"], viewed.json()["event_id"]]
    click, view = rows
    assert {k: click[k] for k in CLICK} == CLICK
    assert click["serving_version"] == "v1" and click["query_kind"] == "text"
    assert click["session"] is None and click["received_at"].tzinfo is not None
    assert view["kind"] == "view" and view["image_id"] is None and view["session"] == "tab1"


def test_flush_writes_what_was_accepted(
    publish_root: Path, serve_models: Path, tmp_path: Path
) -> None:
    events = tmp_path / "events"
    app = create_app(_config(publish_root, serve_models, events))
    with TestClient(app) as client:
        ids = [_post(client, {**CLICK, "rank": n}).json()["event_id"] for n in range(1, 6)]
        assert app.state.event_writer.flush() == 1
        assert read_events(str(events)).column("event_id").to_pylist() == ids
        assert "imgsearch_events_written_total 5.0" in client.get("/metrics").text


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b"{not json", "application/json", 400),
        (json.dumps(CLICK).encode(), "text/plain;charset=UTF-8", 415),  # a cross-site beacon
        (json.dumps(CLICK).encode(), "application/x-www-form-urlencoded", 415),
        (json.dumps({**CLICK, "kind": "buy"}).encode(), "application/json", 422),
        (json.dumps({**CLICK, "rank": -1}).encode(), "application/json", 422),
        (json.dumps({**CLICK, "image_id": None}).encode(), "application/json", 422),
        (json.dumps({**CLICK, "query": "q" * 600}).encode(), "application/json", 422),
        (json.dumps({**CLICK, "query": "q" * 5000}).encode(), "application/json", 413),
        (b"[]", "application/json", 422),
    ],
)
def test_bad_events_are_4xx_and_counted(
    events_client: TestClient, body: bytes, content_type: str, status: int
) -> None:
    before = _counter(events_client, "invalid")
    response = _post(events_client, body, content_type)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"detail"} and "q" * 50 not in response.text
    assert _counter(events_client, "invalid") == before + 1


def test_a_streamed_body_is_cut_at_the_limit(events_client: TestClient) -> None:
    def chunks():  # no Content-Length: the server counts as it reads
        yield b'{"kind": "click", "query": "'
        for _ in range(100):
            yield b"x" * 1000

    response = events_client.post(
        "/api/events", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


def test_other_methods_are_405(events_client: TestClient) -> None:
    assert events_client.get("/api/events").status_code == 405


@pytest.fixture(scope="module")
def events_root(tmp_path_factory, built_versions) -> Path:
    from tests.serving.conftest import publish

    root = tmp_path_factory.mktemp("events-root")
    publish(root, built_versions["v1"], "v1")
    return root


@pytest.fixture(scope="module")
def events_app(events_root: Path, serve_models: Path, tmp_path_factory):
    return create_app(_config(events_root, serve_models, tmp_path_factory.mktemp("events-log")))


@pytest.fixture(scope="module")
def events_client(events_app):
    with TestClient(events_app, raise_server_exceptions=False) as client:
        yield client


def test_a_full_buffer_is_503_and_counted(
    events_root: Path, serve_models: Path, tmp_path: Path
) -> None:
    limits = EventLimits(flush_interval_s=3600, flush_events=2, max_buffer_events=3)
    app = create_app(_config(events_root, serve_models, tmp_path / "ev", limits))
    client = TestClient(app)  # no lifespan: no writer thread, so the buffer only fills
    statuses = [_post(client, {**CLICK, "rank": n}).status_code for n in range(1, 5)]
    assert statuses == [202, 202, 202, 503]
    refused = _post(client, CLICK)
    assert refused.status_code == 503 and "buffer is full" in refused.json()["detail"]
    assert refused.headers["retry-after"] == "60"
    assert _counter(client, "buffer_full") == 2 and _counter(client, "accepted") == 3
    app.state.event_writer.flush()  # room again once written
    assert _post(client, CLICK).status_code == 202


def test_the_disk_cap_is_503_and_counted(
    events_root: Path, serve_models: Path, tmp_path: Path
) -> None:
    limits = EventLimits(flush_interval_s=3600, flush_events=1, max_files_per_day=2)
    app = create_app(_config(events_root, serve_models, tmp_path / "ev", limits))
    with TestClient(app) as client:
        writer = app.state.event_writer
        for n in (1, 2):
            assert _post(client, {**CLICK, "rank": n}).status_code == 202
            writer.flush()
        refused = _post(client, CLICK)
        assert refused.status_code == 503 and "disk cap" in refused.json()["detail"]
        assert _counter(client, "disk_cap") == 1
    assert len(event_files(str(tmp_path / "ev"))) == 2


def test_the_page_carries_the_snippet_only_with_logging_on(events_client: TestClient) -> None:
    page = events_client.get("/", params={"q": "a dog"})
    assert page.status_code == 200
    assert 'id="click-log"' in page.text and "/api/events" in page.text
    assert '{"version": "v1"}' in page.text
    assert page.text.index('id="click-log"') < page.text.index("</body>")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzzed_events_never_get_a_5xx(events_app, mode) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", events_app)
    calls = []

    @given(case=schema.include(path="/api/events").as_strategy(mode))
    @settings(
        max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def check(case) -> None:
        response = case.call()
        calls.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error, status_code_conformance])

    check()
    assert calls and (202 in calls if mode == GenerationMode.POSITIVE else max(calls) < 500)


def test_the_config_carries_the_limits() -> None:
    config = ServeConfig(index="x", events_dir="gs://bucket/log")
    assert config.event_limits == EventLimits()
    assert dataclasses.replace(config, events_dir=None).events_dir is None


@pytest.mark.slow
def test_a_killed_server_keeps_every_flushed_event_and_no_partial_file(
    publish_root: Path, tmp_path: Path
) -> None:
    """`imgsearch serve --events DIR`, SIGKILLed while events arrive and files are written.

    What was acknowledged (202) and written before the kill is all there; what was only in the
    buffer may be lost (README, "Click log"); no file is half written, and a temp file a killed
    write left is never read and is deleted at the next start once stale.
    """
    events = tmp_path / "events"
    events.mkdir()
    leftover = events / ".events-20260101T000000Z-0000dead-000001.parquet.tmp-0123abcd"
    leftover.write_bytes(b"PAR1 a write killed half way")
    os.utime(leftover, (time.time() - 3600, time.time() - 3600))
    log = tmp_path / "serve.log"
    # --reload-in thread: one process, so the SIGKILL hits the event writer itself.
    command = [sys.executable, "-m", "imgsearch.cli", "serve", "--index", str(publish_root),
               "--port", "0", "--events", str(events), "--events-flush-seconds", "0.2",
               "--events-batch", "5", "--reload-in", "thread"]  # fmt: skip
    with log.open("w") as stderr:
        process = subprocess.Popen(
            command, cwd=REPO, stderr=stderr, stdout=subprocess.DEVNULL,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )  # fmt: skip
    try:
        url, deadline = None, time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            assert process.poll() is None, "imgsearch serve exited early: " + log.read_text()
            match = re.search(r"Uvicorn running on (http://\S+)", log.read_text())
            url = match.group(1) if match else None
            time.sleep(0.1)
        assert url, "the server never said where it listens"
        assert not leftover.exists()  # a stale temp file is deleted at start
        with httpx.Client(base_url=url, timeout=10) as client:

            def post(rank: int) -> str:
                response = client.post("/api/events", json={**CLICK, "rank": rank})
                assert response.status_code == 202, response.text
                return response.json()["event_id"]

            flushed = [post(rank) for rank in range(1, 33)]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                written = set(read_events(str(events)).column("event_id").to_pylist())
                if written >= set(flushed):
                    break
                time.sleep(0.1)
            assert written >= set(flushed), "acknowledged events were not written in time"
            # Keep posting while the writer writes a file every 5 events, and kill mid-stream.
            late = [post(rank) for rank in range(33, 80)]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    files = event_files(str(events))
    for path in files:  # every finished file is whole: it parses with the schema
        pq.read_table(path)
    rows = read_events(str(events)).column("event_id").to_pylist()
    assert set(flushed) <= set(rows)
    assert set(rows) <= set(flushed) | set(late) and len(rows) == len(set(rows))
    temps = [p for p in events.iterdir() if p.name.startswith(".")]
    assert all(is_temp_file(p.name) for p in temps)  # a killed write: left, never read
