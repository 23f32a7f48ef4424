"""The server with the real MobileNetV2 encoder, and `imgsearch serve` as a user starts it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from pipelines import index_job
from serving.app import create_app
from serving.config import ServeConfig
from serving.state import QueryModels

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_real_mobilenet_upload_finds_the_same_photo(
    tmp_path: Path, serve_photos, mobilenet_weights
):
    out = tmp_path / "index"
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for photo in serve_photos[:5]:
        (corpus / photo.name).write_bytes(photo.read_bytes())
    head = mobilenet_weights.parent / "mobilenet_v2_1.0_224_imagenet1001_head.npz"
    index_job.run(
        ["--corpus", str(corpus), "--out", str(out), "--weights", str(mobilenet_weights),
         "--tag_head", str(head)]
    )  # fmt: skip
    with TestClient(create_app(ServeConfig(index=str(out)), QueryModels())) as client:
        for photo in sorted(corpus.iterdir())[:2]:
            response = client.post(
                "/api/search/image?k=3",
                content=photo.read_bytes(),
                headers={"content-type": "image/jpeg"},
            )
            assert response.status_code == 200, response.text
            hits = response.json()["results"]
            assert hits[0]["uri"] == photo.name
            assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
            assert hits[0]["why"]["encoder"].startswith("mobilenet_v2/")
            assert hits[1]["score"] < 0.95
            # The table's classifier tags reach every result and the details, best first.
            tags = hits[0]["tags"]
            assert len(tags) == 5 and all(set(t) == {"label", "score"} for t in tags)
            assert [t["score"] for t in tags] == sorted((t["score"] for t in tags), reverse=True)
            details = client.get(f"/api/images/{hits[0]['image_id']}").json()
            assert details["tags"] == tags


@pytest.mark.slow
def test_cli_serve(built_versions, serve_models: Path, tmp_path: Path) -> None:
    """`imgsearch serve --index ROOT --port 0` starts, answers, and stops on SIGTERM."""
    from tests.serving.conftest import publish

    root = tmp_path / "root"
    publish(root, built_versions["v1"], "v1")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "imgsearch.cli", "serve", "--index", str(root),
               "--port", "0", "--models", str(serve_models)]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    try:
        url, deadline = None, time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            assert line or process.poll() is None, "imgsearch serve exited early"
            # The supervisor's line (a publish root: workers under a supervisor), or uvicorn's.
            match = re.search(r"(?:serving \S+ on|Uvicorn running on) (http://\S+)", line)
            url = match.group(1) if match else None
        assert url, "the server never said where it listens"
        ready = httpx.get(url + "/ready").json()
        assert ready == {"ready": True, "version": "v1", "published": "v1"}
        hits = httpx.get(url + "/api/search", params={"q": "a dog", "k": 3}).json()["results"]
        assert len(hits) == 3
    finally:
        process.terminate()
        rest = process.communicate(timeout=30)[1]
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal as its exit status.
    assert process.returncode in (0, -signal.SIGTERM)
    assert "Finished server process" in rest


def _serve_cli(index: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imgsearch.cli", "serve", "--index", str(index)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_cli_serve_bad_index(tmp_path: Path, built_versions) -> None:
    missing = _serve_cli(tmp_path / "nothing")
    assert missing.returncode == 2 and "neither a publish root" in missing.stderr
    damaged = tmp_path / "damaged"
    shutil.copytree(built_versions["v1"], damaged)
    table_file = sorted((damaged / "table").glob("*.parquet"))[0]
    table_file.write_bytes(table_file.read_bytes()[:-10])
    refused = _serve_cli(damaged)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "imgsearch serve: error:" in refused.stderr and "fails verification" in refused.stderr
