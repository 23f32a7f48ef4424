"""Issue 24's hostile uploads against a real app: tiny files that are expensive to decode and
forms that are expensive to parse are refused or bounded, and the server keeps answering.

The payloads are generated in the test (``tests.hostile_uploads``); decoding runs in the app's
real worker processes (``encoders.decode_pool``).
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from pathlib import Path

import pytest

from serving import uploads
from tests import hostile_uploads as hostile


@pytest.fixture(scope="module")
def client(v2_client):
    return v2_client


def _upload(client, data: bytes, content_type: str = "image/png"):
    return client.post("/api/search/image", content=data, headers={"content-type": content_type})


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            line = next(line for line in status if line.startswith("VmRSS:"))
    except (FileNotFoundError, ProcessLookupError, StopIteration):
        return 0
    return int(line.split()[1]) * 1024


def _rss_with_workers() -> int:
    """This process's RSS plus its decode workers'. Only children running the worker count: a
    child between fork and exec still reports its parent's pages."""
    total = _rss_bytes(os.getpid())
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:  # the thread ended since the listing
            continue
        for child in children:
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if b"encoders.decode_pool" in command:
                total += _rss_bytes(int(child))
    return total


@pytest.mark.parametrize(
    "make, content_type, reason",
    [
        (hostile.float_tiff, "image/tiff", "needs about 492 MiB to decode"),
        (hostile.lossless_webp, "image/webp", "needs about 606 MiB to decode"),
        (hostile.rgba_png, "image/png", "needs about 481 MiB to decode"),
        (hostile.repeated_scans_jpeg, "image/jpeg", "JPEG with 1010 scans > limit 100"),
    ],
)  # fmt: skip
def test_eight_concurrent_hostile_uploads_are_refused_in_bounded_memory(
    client, make, content_type, reason, serve_photos
) -> None:
    """The probe's attack: 8 at once. Each is answered 422 with its reason within 15 s, /ready
    answers within 1 s throughout, and the server and its decode workers grow by < 1 GiB."""
    data = make()
    assert len(data) < 1_000_000  # tiny on the wire
    assert _upload(client, serve_photos[0].read_bytes(), "image/jpeg").status_code == 200
    peak, baseline, sampling = [0], _rss_with_workers(), threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak[0] = max(peak[0], _rss_with_workers())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(9) as pool:

            def timed_upload():
                started = time.monotonic()
                return _upload(client, data, content_type), time.monotonic() - started

            answers = [pool.submit(timed_upload) for _ in range(8)]
            while not all(a.done() for a in answers):
                started = time.monotonic()
                assert client.get("/ready").status_code == 200
                assert time.monotonic() - started < 1.0
                time.sleep(0.05)
            for answer in answers:
                response, seconds = answer.result()
                assert response.status_code == 422, response.text
                assert reason in response.json()["detail"]
                assert seconds < 15
    finally:
        sampling.set()
        sampler.join()
    assert peak[0] - baseline < 2**30


def test_a_slow_png_takes_a_decode_worker_not_the_server(client, serve_photos) -> None:
    """873k empty chunks: seconds of parsing in a worker process; meanwhile an ordinary image
    query is answered by the other worker (nothing in the server holds a lock meanwhile)."""
    chunky = hostile.chunky_png()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(_upload, client, chunky)
        time.sleep(0.3)
        started = time.monotonic()
        ordinary = _upload(client, serve_photos[0].read_bytes(), "image/jpeg")
        assert ordinary.status_code == 200 and time.monotonic() - started < 2.0
        assert not slow.done()  # the chunky file was really being decoded meanwhile
        assert slow.result().status_code in (200, 422)


def test_a_form_of_many_parts_is_refused_at_once_and_parsed_off_the_event_loop(
    client, monkeypatch
) -> None:
    body, content_type = hostile.many_part_form()
    threads = []
    parse = uploads.multipart_parts

    def recording(*args):
        threads.append(threading.current_thread())
        return parse(*args)

    monkeypatch.setattr(uploads, "multipart_parts", recording)
    started = time.monotonic()
    for path in ("/api/search/image", "/api/search/mixed"):
        response = client.post(path, content=body[: 2**20], headers={"content-type": content_type})
        assert response.status_code in (400, 413), response.text
    response = client.post(
        "/api/search/image", content=body[:500_000], headers={"content-type": content_type}
    )
    assert response.status_code == 400
    assert "at most 16 parts" in response.json()["detail"]
    assert time.monotonic() - started < 2.0
    assert threads and all(t is not threading.main_thread() for t in threads)
    # The event loop runs in the TestClient's portal thread: parsing never happened there.
    loop_thread = client.portal.call(threading.current_thread)
    assert all(t is not loop_thread for t in threads)


def test_every_decoder_busy_is_429_with_retry_after(v2_root, serve_models) -> None:
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.config import ServeConfig

    config = ServeConfig(
        index=str(v2_root), models_dir=str(serve_models), poll_interval_s=0,
        decode_workers=1, decode_timeout_s=3.0, decode_wait_s=0.0,
    )  # fmt: skip
    with TestClient(create_app(config)) as busy_client:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(_upload, busy_client, hostile.chunky_png())
            time.sleep(0.3)
            refused = _upload(busy_client, hostile.chunky_png(64))
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"] == "3"
            assert "busy" in refused.json()["detail"]
            slow.result()
