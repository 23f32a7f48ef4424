"""``imgsearch.client.Client`` against the real server (uvicorn on a free loopback port).

Oracle: the local API (``open_index``) over the same version; the client must give the same
dataclasses, with the server's rounding of scores (6 decimals).
"""

from __future__ import annotations

import io
import socket
from pathlib import Path

import pytest
import requests
from PIL import Image

from imgsearch import open_index
from imgsearch.api import ImageIndex, SearchHit, UnknownImageError
from imgsearch.client import Client, ServerError, UnknownImageOnServer, image_content_type
from serving.app import create_app
from serving.config import ServeConfig
from serving.fused_search import FusedHit
from serving.server import BackgroundServer
from tests.imgsearch.test_api import QUERY, Inputs, readme_example, shared_inputs


@pytest.fixture(scope="module")
def inputs(request, tmp_path_factory) -> Inputs:
    return shared_inputs(request, tmp_path_factory)


def _serve(inputs: Inputs, **config):
    """A server as the library client expects one: local paths shown (`--expose-uris`)."""
    config = {"expose_uris": True, **config}
    app = create_app(ServeConfig(index=str(inputs.root), poll_interval_s=0, **config))
    return BackgroundServer(app)


@pytest.fixture(scope="module")
def url(inputs: Inputs):
    """A server of the publish root with text search (as `imgsearch serve --models` runs)."""
    with _serve(inputs, models_dir=str(inputs.models)) as server:
        yield server.url


@pytest.fixture(scope="module")
def client(url: str):
    with Client(url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def local(inputs: Inputs) -> ImageIndex:
    return open_index(inputs.root, models_dir=inputs.models)


def _same_hits(remote: list, local: list) -> None:
    assert [type(h) for h in remote] == [type(h) for h in local]
    assert [(h.image_id, h.uri) for h in remote] == [(h.image_id, h.uri) for h in local]
    assert [h.score for h in remote] == pytest.approx([h.score for h in local], abs=1e-6)


def test_search_text_as_the_local_api(client: Client, local: ImageIndex) -> None:
    hits = client.search_text(QUERY, k=4)
    assert len(hits) == 4 and all(type(hit) is SearchHit for hit in hits)
    _same_hits(hits, local.search_text(QUERY, k=4))


def test_search_image_by_path_and_bytes(client: Client, local: ImageIndex, inputs: Inputs) -> None:
    photo = inputs.photos[3]
    by_path = client.search_image(photo, k=3)
    assert by_path[0].uri == str(photo) and by_path[0].score == pytest.approx(1.0, abs=1e-4)
    _same_hits(by_path, local.search_image(photo, k=3))
    assert client.search_image(photo.read_bytes(), k=3) == by_path
    # The same pixels as a PNG: sent as image/png, decoded to the same vector.
    png = io.BytesIO()
    with Image.open(photo) as opened:
        opened.save(png, "PNG")
    as_png = client.search_image(png.getvalue(), k=3)
    assert as_png[0].uri == str(photo) and as_png[0].score == pytest.approx(1.0, abs=1e-4)


def test_similar_and_details_as_the_local_api(
    client: Client, local: ImageIndex, inputs: Inputs
) -> None:
    image_id = local.search_image(inputs.photos[1], k=1)[0].image_id
    similar = client.similar(image_id, k=3)
    assert image_id not in {h.image_id for h in similar}
    _same_hits(similar, local.similar(image_id, k=3))
    info = client.details(image_id)
    assert info == local.details(image_id)  # the same ImageInfo, field for field
    assert (info.uri, info.version) == (str(inputs.photos[1]), "v1")


def test_server_errors_carry_the_detail(client: Client, url: str, tmp_path: Path) -> None:
    for call in (client.similar, client.details):
        with pytest.raises(UnknownImageOnServer) as err:
            call("nope")
        assert isinstance(err.value, UnknownImageError) and isinstance(err.value, KeyError)
        assert err.value.status == 404
        assert err.value.detail == "image 'nope' is not in index version v1"
        assert str(err.value).startswith(f"HTTP 404 from {url}/api/")
    with pytest.raises(ServerError, match=r"HTTP 422 .*query\.k: Input should be less than") as k:
        client.search_text(QUERY, k=1000)  # the server's bound (max_k 100)
    assert not isinstance(k.value, UnknownImageError)
    with pytest.raises(ServerError, match=r"HTTP 422 .*image rejected"):
        client.search_image(b"this is not an image")
    with pytest.raises(ServerError, match=r"HTTP 400 .*empty text query"):
        client.search_text("   ")
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        client.similar("nope", k=0)  # refused before any request
    with pytest.raises(FileNotFoundError):
        client.search_image(tmp_path / "missing.jpg")
    # No such route (a wrong base URL) is a plain 404, not a missing image.
    with Client(url + "/prefix") as wrong, pytest.raises(ServerError, match="Not Found") as err:
        wrong.details("nope")
    assert not isinstance(err.value, UnknownImageError)


def test_text_on_a_server_without_models_says_why(inputs: Inputs) -> None:
    with _serve(inputs) as server, Client(server.url) as client:
        with pytest.raises(ServerError, match=r"HTTP 503 .*text search needs a joint model") as err:
            client.search_text(QUERY)
        assert err.value.status == 503 and "--models" in err.value.detail
        assert client.search_image(inputs.photos[0], k=1)[0].uri == str(inputs.photos[0])


def test_fused_server_gives_fused_hits(inputs: Inputs) -> None:
    local = open_index(inputs.root, models_dir=inputs.models, fused=True)
    with _serve(inputs, models_dir=str(inputs.models), fused=True) as server:
        with Client(server.url) as client:
            hits = client.search_text(QUERY, k=3)
    expected = local.search_text(QUERY, k=3)
    assert all(type(hit) is FusedHit for hit in hits)
    _same_hits(hits, expected)
    for remote, here in zip(hits, expected, strict=True):
        assert (remote.parts, remote.caption, remote.tags, remote.matched_tags) == (
            here.parts, here.caption, here.tags, here.matched_tags
        )  # fmt: skip


def test_unreachable_server_and_bad_arguments() -> None:
    with socket.socket() as sock:  # a port nothing listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(requests.ConnectionError):
        Client(f"http://127.0.0.1:{port}", timeout=5).search_text(QUERY)
    with pytest.raises(ValueError, match="base_url must be http"):
        Client("127.0.0.1:8080")
    with pytest.raises(ValueError, match="timeout must be > 0"):
        Client("http://127.0.0.1:8080", timeout=0)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\xff\xd8\xff\xe0rest", "image/jpeg"),
        (b"\x89PNG\r\n\x1a\nrest", "image/png"),
        (b"GIF89arest", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"BMrest", "image/bmp"),
        (b"II*\x00rest", "image/tiff"),
        (b"not an image", "image/jpeg"),  # the server's decoder says what is wrong with it
    ],
)
def test_image_content_type(data: bytes, expected: str) -> None:
    assert image_content_type(data) == expected


def test_readme_client_example_runs(url: str, capsys) -> None:
    code = readme_example("client")
    assert "http://127.0.0.1:8080" in code
    exec(compile(code.replace("http://127.0.0.1:8080", url), "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 6 and printed[-1].startswith("/"), printed
