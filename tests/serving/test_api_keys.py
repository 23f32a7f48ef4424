"""``--api-key-file``: every route but the probes needs a key; probes stay open."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.config import ServeConfig
from serving.http_hygiene import read_api_keys
from serving.state import QueryModels

KEY = "k3y-0123456789abcdef"


@pytest.fixture(scope="module")
def client(v2_root: Path, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "api-keys"
    keys.write_text(f"# rotated monthly\n\n{KEY}\nsecond-key-fedcba9876543210\n")
    config = ServeConfig(index=str(v2_root), poll_interval_s=0, api_key_file=str(keys))
    with TestClient(create_app(config, QueryModels())) as test_client:
        yield test_client


def test_routes_need_a_key_and_probes_do_not(client: TestClient) -> None:
    for path in ("/api/similar/x", "/api/images/x", "/thumbnails/x", "/", "/docs", "/openapi.json"):
        refused = client.get(path)
        assert refused.status_code == 401, path
        assert refused.headers["www-authenticate"] == "Bearer"
    big = client.post(
        "/api/search/image", content=b"x" * 100, headers={"content-type": "image/png"}
    )
    assert big.status_code == 401
    for path in ("/health", "/ready", "/metrics"):
        assert client.get(path).status_code == 200, path
    assert (
        client.get("/api/images/x", headers={"Authorization": f"Bearer {KEY}"}).status_code == 404
    )
    assert client.get("/api/images/x", headers={"X-API-Key": KEY}).status_code == 404
    other = {"Authorization": "Bearer second-key-fedcba9876543210"}
    assert client.get("/openapi.json", headers=other).status_code == 200
    for wrong in ({"X-API-Key": KEY[:-1]}, {"Authorization": f"Basic {KEY}"}, {"X-API-Key": ""}):
        assert client.get("/api/images/x", headers=wrong).status_code == 401, wrong
    assert 'status="401"' in client.get("/metrics").text


def test_a_key_file_must_hold_real_keys(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(ValueError, match="holds no API key"):
        read_api_keys(str(empty))
    short = tmp_path / "short"
    short.write_text("secret\n")
    with pytest.raises(ValueError, match="at least 16 characters"):
        read_api_keys(str(short))
