"""Hot reload under load: versions swap while requests run, with zero failed requests."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from index.publish import write_pointer
from serving.app import create_app
from serving.config import ServeConfig
from serving.server import BackgroundServer
from tests.serving.conftest import publish, swap_then_refuse_under_load, wait_for


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
        hammer = swap_then_refuse_under_load(
            server.url, image_ids, publish_root, built_versions, health
        )
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
        wait_for(lambda: health()["serving"]["version"] == "v1")


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
