"""Every answer carries the security headers, and HEAD is answered wherever GET is."""

from __future__ import annotations

import pytest

from serving.http_hygiene import SECURITY_HEADERS


@pytest.fixture(scope="module")
def client(v2_client):
    return v2_client


def _image_id(client) -> str:
    return client.get("/api/search", params={"q": "a dog", "k": 1}).json()["results"][0]["image_id"]


@pytest.mark.parametrize("path", ["/", "/health", "/api/search?q=dog", "/no/such/page"])
def test_every_answer_has_the_security_headers(client, path):
    response = client.get(path)
    for name, value in SECURITY_HEADERS:
        assert response.headers[name.decode()] == value.decode(), (path, name)


def test_head_is_get_without_the_body(client):
    image_id = _image_id(client)
    for path in ("/", "/health", f"/api/images/{image_id}", f"/thumbnails/{image_id}"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]
        assert head.headers["content-length"] == str(len(got.content))
        assert head.headers["x-frame-options"] == "DENY"
    assert client.head("/api/images/not-an-id").status_code == 404
    # A route without GET still refuses HEAD: it is not a way around the method check.
    assert client.head("/api/search/image").status_code == 405


def test_no_redirect_echoes_the_host_header(client):
    response = client.get("/health/", headers={"host": "evil.example"}, follow_redirects=False)
    assert response.status_code == 404 and "location" not in response.headers
