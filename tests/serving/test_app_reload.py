"""Hot reload under load: versions swap while requests run, with zero failed requests."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from pipelines.publish import write_pointer
from serving.app import create_app
from serving.config import ServeConfig
from serving.server import BackgroundServer
from tests.serving.conftest import publish


class Hammer:
    """Threads sending a mix of queries until stopped; every non-200 answer is kept."""

    def __init__(self, url: str, image_ids: list[str], threads: int = 4) -> None:
        self.url, self.image_ids = url, image_ids
        self.ok = 0
        self.failures: list[str] = []
        self.versions: set[str] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, seed: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = seed
            while not self._stop.is_set():
                i += 1
                try:
                    if i % 3:
                        response = client.get("/api/search", params={"q": "a dog on grass", "k": 5})
                    else:
                        image_id = self.image_ids[i % len(self.image_ids)]
                        response = client.get(f"/api/similar/{image_id}", params={"k": 3})
                    ok = response.status_code == 200
                    detail = f"{response.status_code} {response.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, detail = False, repr(exc)
                with self._lock:
                    if ok:
                        self.ok += 1
                        self.versions.add(response.json()["version"])
                    else:
                        self.failures.append(detail)

    def __enter__(self) -> Hammer:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def _wait_for(predicate, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _corrupt_a_table_file(version: Path) -> None:
    table_file = sorted((version / "table").glob("*.parquet"))[0]
    data = bytearray(table_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    table_file.write_bytes(bytes(data))


@pytest.mark.slow
def test_swap_under_load_then_refuse_a_broken_version(
    publish_root: Path, built_versions, serve_models: Path
) -> None:
    config = ServeConfig(index=str(publish_root), models_dir=str(serve_models), poll_interval_s=0.1)
    app = create_app(config)
    # Images present in both versions (v2 is a superset), so "similar" queries stay valid.
    image_ids = list(app.state.holder.current.details.image_ids())
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url) as client:
        health = lambda: client.get("/health").json()  # noqa: E731
        with Hammer(server.url, image_ids) as hammer:
            _wait_for(lambda: hammer.ok >= 20)
            publish(publish_root, built_versions["v2"], "v2")
            _wait_for(lambda: health()["serving"]["version"] == "v2")
            swapped_at = hammer.ok
            _wait_for(lambda: hammer.ok >= swapped_at + 20)

            # v3: a complete-looking version with a damaged file; the manifest check refuses it.
            broken = publish_root / "versions" / "v3"
            shutil.copytree(publish_root / "versions" / "v2", broken)
            _corrupt_a_table_file(broken)
            write_pointer(str(publish_root), "v3")
            _wait_for(lambda: "v3" in health()["reload"]["refused"])
            refused_at = hammer.ok
            _wait_for(lambda: hammer.ok >= refused_at + 20)

        assert hammer.failures == [], hammer.failures[:5]
        assert hammer.versions == {"v1", "v2"}
        status = health()
        assert status["serving"]["version"] == "v2" and status["serving"]["images"] == 8
        assert "ManifestVerificationError" in status["reload"]["refused"]["v3"]
        assert status["reload"]["reloads"] == 1
        assert client.get("/api/search", params={"q": "dog"}).json()["version"] == "v2"
        metrics = client.get("/metrics").text
        assert 'imgsearch_index_reloads_total{result="swapped"} 1.0' in metrics
        assert 'imgsearch_index_reloads_total{result="refused"} 1.0' in metrics
        assert 'imgsearch_index_version_info{version="v2"} 1.0' in metrics

        # Publishing a good version again after the refusal is picked up as usual.
        write_pointer(str(publish_root), "v1")
        _wait_for(lambda: health()["serving"]["version"] == "v1")


def test_in_flight_requests_keep_their_version(publish_root: Path, built_versions) -> None:
    """A request holding the old bundle finishes on it after the swap (no shared mutation)."""
    from serving.state import QueryModels

    app = create_app(ServeConfig(index=str(publish_root), poll_interval_s=0), QueryModels())
    holder, reloader = app.state.holder, app.state.reloader
    old = holder.current
    publish(publish_root, built_versions["v2"], "v2")
    assert reloader.check_once() == "swapped"
    assert holder.current.version == "v2" and len(holder.current.images) == 8
    # The old bundle is untouched and still answers.
    assert old.version == "v1" and len(old.images) == 6
    image_id = old.details.image_ids()[0]
    assert len(old.images.similar_to_image_id(image_id, 3)) == 3
    assert reloader.check_once() == "unchanged"


def test_unreadable_pointer_keeps_serving(publish_root: Path) -> None:
    from serving.state import QueryModels

    app = create_app(ServeConfig(index=str(publish_root), poll_interval_s=0), QueryModels())
    (publish_root / "latest.json").write_text("{not json")
    assert app.state.reloader.check_once() == "pointer-error"
    (publish_root / "latest.json").unlink()
    assert app.state.reloader.check_once() == "pointer-error"
    assert app.state.holder.current.version == "v1"
