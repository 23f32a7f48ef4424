"""What of a uri or an error message leaves the server (``serving.redaction``, pure)."""

from __future__ import annotations

import pytest

from serving.redaction import public_text, public_uri, strip_credentials


@pytest.mark.parametrize(
    "uri, shown",
    [
        ("https://user:secret@example.com/a/b.jpg", "https://example.com/a/b.jpg"),
        ("https://storage.googleapis.com/bkt/x.jpg?X-Goog-Algorithm=GOOG4-RSA-SHA256"
         "&X-Goog-Credential=sa%40p.iam&X-Goog-Date=20261201T000000Z&X-Goog-Expires=900"
         "&X-Goog-SignedHeaders=host&X-Goog-Signature=abc123", "https://storage.googleapis.com/bkt/x.jpg"),
        ("https://b.s3.amazonaws.com/k.jpg?X-Amz-Security-Token=t&x-amz-signature=s&v=2",
         "https://b.s3.amazonaws.com/k.jpg?v=2"),
        ("https://a.blob.core.windows.net/c/p.png?sv=2024&se=2026&sp=r&sig=XYZ%3D&size=big",
         "https://a.blob.core.windows.net/c/p.png?size=big"),
        ("https://cdn.example/p.jpg?token=abc&id=7#top", "https://cdn.example/p.jpg?id=7#top"),
        ("gs://bucket/photos/1.jpg", "gs://bucket/photos/1.jpg"),
        ("http://[::1]:8080/p.jpg", "http://[::1]:8080/p.jpg"),
    ],
)  # fmt: skip
def test_urls_lose_their_credentials_and_keep_the_rest(uri: str, shown: str) -> None:
    assert public_uri(uri) == shown
    assert public_uri(uri, expose=True) == shown  # a secret is never exposed


def test_local_paths_show_their_file_name_unless_exposed() -> None:
    assert public_uri("/srv/corpus/dogs/1.jpg") == "1.jpg"
    assert public_uri("file:///srv/corpus/dogs/1.jpg") == "1.jpg"
    assert public_uri("../shared/assets/x.png") == "x.png"
    assert public_uri("/srv/corpus/dogs/1.jpg", expose=True) == "/srv/corpus/dogs/1.jpg"
    assert public_uri("file://u:p@host/x.jpg", expose=True) == "file://host/x.jpg"
    assert public_uri(None) is None


def test_an_unparseable_url_says_nothing_of_itself() -> None:
    assert strip_credentials("http://[::1/secret") == "(unparseable uri)"


def test_messages_lose_paths_credentials_and_heap_addresses() -> None:
    message = (
        "source /srv/corpus/dogs/1.jpg cannot be read: [Errno 2] No such file or directory: "
        "'/srv/corpus/dogs/1.jpg'; also https://u:pw@h.example/p.jpg?X-Goog-Signature=s and "
        "<storage.files.Reader object at 0x7f3a2c1b9d50> under a/b/c"
    )
    assert public_text(message) == (
        "source 1.jpg cannot be read: [Errno 2] No such file or directory: '1.jpg'; also "
        "https://h.example/p.jpg and <storage.files.Reader object> under a/b/c"
    )
    exposed = public_text(message, expose=True)
    assert "/srv/corpus/dogs/1.jpg" in exposed and "pw@" not in exposed and "0x7f" not in exposed
    assert public_text("image 'x' is not in index version v2") == (
        "image 'x' is not in index version v2"
    )
