"""Reloads in a new worker process (serving.supervisor), for real: spawned workers on one socket,
a version swapped and a broken one refused under load, a killed worker replaced."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from serving.config import ServeConfig
from serving.supervisor import Supervisor, is_publish_root
from tests.serving.conftest import swap_then_refuse_under_load, wait_for

# A worker loads for seconds (a fresh interpreter importing TensorFlow, the models, the
# version); a request that had to wait for a load would take about that long. Requests answered
# by the old worker meanwhile take milliseconds, tens of them on a busy CI machine.
SLOWEST_REQUEST_S = 2.0


def _wait_for(predicate, timeout_s: float = 120.0) -> None:
    wait_for(predicate, timeout_s)  # workers take seconds to start on a busy CI machine


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/ready", timeout=30).status_code == 200
    except httpx.HTTPError:  # the connection to the killed worker
        return False


def test_is_publish_root(publish_root: Path, built_versions) -> None:
    assert is_publish_root(str(publish_root))
    assert not is_publish_root(str(built_versions["v1"]))  # an index folder
    (publish_root / "latest.json").write_text("{not json")
    assert is_publish_root(str(publish_root))  # unreadable: still the reloader's case


@pytest.mark.slow
def test_reload_in_a_new_worker_under_load(
    publish_root: Path, built_versions, serve_models: Path
) -> None:
    config = ServeConfig(
        index=str(publish_root),
        models_dir=str(serve_models),
        port=0,
        poll_interval_s=0.2,
        glove="none",
        decode_workers=0,
    )
    supervisor = Supervisor(config)
    supervisor.start()
    watcher = threading.Thread(target=supervisor.watch, daemon=True)
    watcher.start()
    host, port = supervisor.address
    url = f"http://{host}:{port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            health = lambda: client.get("/health").json()  # noqa: E731
            first = supervisor.holder.current
            assert health()["serving"]["version"] == "v1"
            answer = client.get("/api/search", params={"q": "dog", "k": 8}).json()
            image_ids = [hit["image_id"] for hit in answer["results"]]  # v1's: all in v2 too

            def old_worker_ended() -> None:  # drained and ended on its own, reaped
                assert first.wait_ended(60) and first.process.exitcode == 0

            hammer = swap_then_refuse_under_load(
                url, image_ids, publish_root, built_versions, health, old_worker_ended, 120.0
            )
            assert hammer.failures == [], hammer.failures[:5]
            assert hammer.versions == {"v1", "v2"}
            assert hammer.slowest_s < SLOWEST_REQUEST_S, hammer.slowest_s
            status = health()
            assert status["serving"]["version"] == "v2" and status["serving"]["images"] == 8
            assert status["reload"]["refused"]["v3"].startswith("ManifestVerificationError")
            assert status["reload"]["reloads"] == 1 and status["reload"]["published"] == "v3"
            metrics = client.get("/metrics").text
            assert 'imgsearch_index_reloads_total{result="swapped"} 1.0' in metrics
            assert 'imgsearch_index_reloads_total{result="refused"} 1.0' in metrics
            assert "imgsearch_index_refused_versions 1.0" in metrics

            # A worker killed while serving is replaced, on the version it served.
            victim = supervisor.holder.current
            os.kill(victim.process.pid, signal.SIGKILL)
            _wait_for(lambda: supervisor.holder.current is not victim)
            _wait_for(lambda: _ready(url))
            assert httpx.get(url + "/api/search", params={"q": "dog"}).json()["version"] == "v2"
    finally:
        supervisor.request_stop()
        watcher.join(120)
    last = supervisor.holder.current
    assert not watcher.is_alive()
    assert last.wait_ended(60) and last.process.exitcode == 0  # drained at the stop, not killed


def test_close_when_draining_marks_responses_once_draining() -> None:
    import asyncio

    from serving.worker_process import CloseWhenDraining

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"a", b"1")]})
        await send({"type": "http.response.body", "body": b"ok"})

    def headers_sent(draining: threading.Event) -> list[list[tuple[bytes, bytes]]]:
        sent = []

        async def send(message):
            if message["type"] == "http.response.start":
                sent.append(message["headers"])

        asyncio.run(CloseWhenDraining(app, draining)({"type": "http"}, None, send))
        return sent

    draining = threading.Event()
    assert headers_sent(draining) == [[(b"a", b"1")]]
    draining.set()
    assert headers_sent(draining) == [[(b"a", b"1"), (b"connection", b"close")]]


def test_reload_view_shows_the_pushed_status() -> None:
    from serving.reloader import ReloadStatus, ReloadView

    view = ReloadView(ReloadStatus("root", None, {}, 0, "v1", None, None, None))
    assert view.behind_s() is None
    told = []
    view.subscribe(told.append)
    view.update(ReloadStatus("root", 5.0, {"v3": "bad"}, 1, "v3", None, 100.0, None))
    view.told("refused")
    assert view.behind_s(now=130.0) == 30.0 and view.status().refused == {"v3": "bad"}
    assert told == ["refused"]


@pytest.mark.slow
def test_workers_of_a_killed_supervisor_drain_and_exit(
    publish_root: Path, tmp_path: Path, serve_models: Path
) -> None:
    """`imgsearch serve` SIGKILLed (no chance to stop its worker): the worker sees the pipe
    close, drains and exits, and the port is free again -- no orphan keeps serving."""
    import re
    import subprocess
    import sys

    import psutil

    repo = Path(__file__).resolve().parents[2]
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "imgsearch.cli", "serve", "--index", str(publish_root),
               "--port", "0", "--models", str(serve_models), "--glove", "none",
               "--decode-workers", "0", "--cache-dir", "none"]  # fmt: skip
    with log.open("w") as stderr:
        server = subprocess.Popen(command, cwd=repo, stderr=stderr, stdout=subprocess.DEVNULL,
                                  env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})  # fmt: skip
    worker = None
    try:
        found = None
        deadline = time.monotonic() + 120
        while found is None and time.monotonic() < deadline:
            assert server.poll() is None, log.read_text()[-3000:]
            found = re.search(r"serving v1 on (http://\S+) \(worker pid (\d+)", log.read_text())
            time.sleep(0.1)
        assert found, "the supervisor never said where it listens"
        url, worker = found.group(1), psutil.Process(int(found.group(2)))
        assert httpx.get(url + "/ready", timeout=30).json()["version"] == "v1"
        server.send_signal(signal.SIGKILL)
        server.wait(30)
        worker.wait(60)  # psutil.TimeoutExpired if it kept serving
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/ready", timeout=5)
        assert "the supervisor is gone: draining and exiting" in log.read_text()
    finally:
        if server.poll() is None:
            server.kill()
        if worker is not None and worker.is_running():  # a failed test leaves no orphan
            worker.kill()
