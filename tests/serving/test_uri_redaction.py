"""Issue 24's leak: a manifest uri with ``user:pass@`` or a signed URL, and local paths, printed
in every result, ``/api/images``, the page, thumbnail errors and ``/health``.

A served copy of the suite's v2 version has its uris rewritten (table and index ids) to
credential-carrying URLs and paths of files that are gone; every answer is searched for the
secrets and for the server's own folders.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.config import ServeConfig
from tests.serving.conftest import publish, rewrite_column

SECRETS = ("hunter2", "SIGNATURE-SECRET", "TOKEN-SECRET")


def _rewritten(name: str, row: int, gone: Path) -> str:
    return (
        f"https://alice:hunter2@127.0.0.1:9/photos/{name}",
        f"https://storage.googleapis.com/bkt/{name}?X-Goog-Algorithm=GOOG4-RSA-SHA256"
        f"&X-Goog-Credential=sa%40proj.iam&X-Goog-Signature=SIGNATURE-SECRET",
        f"https://cdn.example.com/{name}?access_token=TOKEN-SECRET&w=640",
        str(gone / name),  # a local file that no longer exists
    )[row % 4]


@pytest.fixture(scope="module")
def leaky_root(tmp_path_factory, built_versions) -> Path:
    root = tmp_path_factory.mktemp("leaky-root")
    target = publish(root, built_versions["v2"], "v2")
    gone = tmp_path_factory.mktemp("deleted-corpus")
    new = {}

    def rewritten(uri: str) -> str:  # one new uri per photo, whichever file names it
        name = Path(uri).name
        if name not in new:
            new[name] = _rewritten(name, len(new), gone)
        return new[name]

    rewrite_column(target, "uri", rewritten)
    return root


def _client(root: Path, serve_models: Path, expose: bool) -> TestClient:
    config = ServeConfig(index=str(root), models_dir=str(serve_models), poll_interval_s=0,
                         verify=False, expose_uris=expose)  # fmt: skip
    return TestClient(create_app(config))


def _answers(client: TestClient) -> dict[str, str]:
    """Every kind of answer that can carry a uri or an error, as text."""
    found = client.get("/api/search", params={"q": "a photo", "k": 8}).json()["results"]
    assert len(found) == 8
    ids = [hit["image_id"] for hit in found]
    answers = {
        "search": client.get("/api/search", params={"q": "a photo", "k": 8}).text,
        "similar": client.get(f"/api/similar/{ids[0]}", params={"k": 8}).text,
        "health": client.get("/health").text,
        "page": client.get("/", params={"q": "a photo"}).text,
        "page-similar": client.get("/", params={"similar": ids[1]}).text,
    }
    for image_id in ids:
        answers[f"details {image_id}"] = client.get(f"/api/images/{image_id}").text
        thumbnail = client.get(f"/thumbnails/{image_id}")
        assert thumbnail.status_code == 404  # no source can be read
        answers[f"thumbnail {image_id}"] = thumbnail.text
    return answers


def test_no_credentials_or_server_paths_leave_the_server(
    leaky_root: Path, serve_models: Path, tmp_path_factory
) -> None:
    with _client(leaky_root, serve_models, expose=False) as client:
        answers = _answers(client)
        results = client.get("/api/search", params={"q": "a photo", "k": 8}).json()["results"]
    base = str(tmp_path_factory.getbasetemp())
    for name, text in answers.items():
        for secret in (*SECRETS, "alice", base, "0x7f"):
            assert secret not in text, (name, secret, text[:400])
    shown = {hit["uri"] for hit in results}
    assert any(u.startswith("https://127.0.0.1:9/photos/") for u in shown)
    assert any(u.startswith("https://storage.googleapis.com/bkt/") and "?" not in u for u in shown)
    assert any(u.startswith("https://cdn.example.com/") and u.endswith("?w=640") for u in shown)
    assert any(u.endswith(".jpg") and "/" not in u for u in shown)  # a local file: its name


def test_exposed_uris_show_local_paths_but_never_credentials(
    leaky_root: Path, serve_models: Path
) -> None:
    with _client(leaky_root, serve_models, expose=True) as client:
        answers = _answers(client)
    for name, text in answers.items():
        for secret in SECRETS:
            assert secret not in text, (name, secret)
    assert "deleted-corpus" in answers["search"]  # the full local path, as asked
