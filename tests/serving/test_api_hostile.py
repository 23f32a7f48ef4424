"""The HTTP API against hostile clients: schema fuzzing, crafted requests, and a bounded soak.

- Fuzzing: schemathesis generates requests (valid and invalid) from the app's own OpenAPI
  schema; no answer may be a 5xx or carry a stack trace.
- Crafted requests: image bombs, oversize and chunked uploads, bad encodings, huge ``k``,
  path traversal: each refused with a clear 4xx.
- Soak: queries from several threads against a real uvicorn server while a new version is
  published mid-way: zero failed requests and bounded memory growth. The longer version with
  figures is ``benchmarks/soak_serving.py``.

SSRF: the API has no parameter that makes the server fetch a URL (images are uploaded as
bytes; thumbnails are looked up by image id in the served table, never by a client-given path),
which ``test_no_operation_takes_a_url`` pins down.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from pathlib import Path

import psutil
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import status_code_conformance

from serving.app import create_app
from serving.config import ServeConfig
from serving.server import BackgroundServer
from tests import corpus_factory as cf
from tests import hostile_corpus as hc
from tests.serving.conftest import publish
from tests.serving.query_load import SEARCH, SIMILAR, UPLOAD, QueryLoad

# What a Python stack trace or an internal path looks like inside a response body.
FUZZ_EXAMPLES = 250  # per generation mode, over all operations (a few seconds)
_LEAKS = re.compile(r"Traceback \(most recent call last\)|File \"/|site-packages|\.py\", line")


def _assert_clean(response) -> None:
    assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    assert not _LEAKS.search(response.text), response.text[:500]


@pytest.fixture(scope="module")
def hostile_app(tmp_path_factory, built_versions, serve_models):
    root = tmp_path_factory.mktemp("hostile-api")
    publish(root, built_versions["v1"], "v1")
    config = ServeConfig(index=str(root), models_dir=str(serve_models), poll_interval_s=0)
    return create_app(config)


@pytest.fixture(scope="module")
def client(hostile_app):
    # raise_server_exceptions=False: see the 500 a real client would get, not the exception.
    with TestClient(hostile_app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def api_schema(hostile_app):
    return schemathesis.openapi.from_asgi("/openapi.json", hostile_app)


# Schemathesis' own pytest integration (``from_fixture``) needs pytest < 9 internals, so the
# generated cases run under a plain Hypothesis ``@given`` built inside the test instead.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzzed_requests_never_get_a_5xx_or_a_stack_trace(api_schema, mode) -> None:
    calls = []

    def fuzz(strategy, examples: int) -> None:
        @given(case=strategy)
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case) -> None:
            response = case.call()
            calls.append(f"{case.method} {case.path}".upper())
            case.validate_response(response, checks=[not_a_server_error, status_code_conformance])
            _assert_clean(response)

        check()

    fuzz(api_schema.as_strategy(mode), FUZZ_EXAMPLES)
    if mode == GenerationMode.POSITIVE:  # every operation of the schema is exercised
        wanted = {f"{op.ok().method} {op.ok().path}" for op in api_schema.get_all_operations()}
    else:  # only operations with parameters or a body have invalid inputs to send
        wanted = {"GET /api/search", "POST /api/search/image"}
    # The draw over all operations is random: one it missed is fuzzed on its own, so every
    # run covers every operation (and a run cannot pass by not reaching one).
    for name in sorted({w.upper() for w in wanted} - set(calls)):
        method, path = name.split(" ", 1)
        operation = next(
            op.ok() for op in api_schema.get_all_operations()
            if op.ok().method.upper() == method and op.ok().path.upper() == path
        )  # fmt: skip
        fuzz(operation.as_strategy(generation_mode=mode), 25)
    assert set(calls) >= {w.upper() for w in wanted}


def test_no_operation_takes_a_url(client) -> None:
    spec = client.get("/openapi.json").json()
    names = {
        param["name"].lower()
        for path in spec["paths"].values()
        for operation in path.values()
        for param in operation.get("parameters", [])
    }
    assert not names & {"url", "uri", "src", "href", "image_url", "path", "file"}


def _png_bomb_bytes(width: int, height: int, folder: Path) -> bytes:
    return cf.png_bomb(folder, width, height).read_bytes()


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda d: _png_bomb_bytes(40_000, 40_000, d), "decompression bomb"),
        (lambda d: _png_bomb_bytes(7_000, 7_000, d), "decompression bomb: 7000x7000"),
        (lambda d: hc.jpeg_bomb(d).read_bytes(), "decompression bomb"),
        (lambda d: hc.gif_bomb(d).read_bytes(), "decompression bomb"),
        (lambda d: hc.truncated_png(d).read_bytes(), "truncated"),
        (lambda d: hc.ico_named_jpg(d).read_bytes(), "not an image"),
    ],
    ids=["png_1.6e9", "png_4.9e7", "jpeg_4.2e9", "gif_screen", "truncated_png", "ico"],
)
def test_hostile_image_uploads_are_refused(client, tmp_path, make, reason) -> None:
    rss_before = psutil.Process().memory_info().rss
    response = client.post(
        "/api/search/image", content=make(tmp_path), headers={"content-type": "image/png"}
    )
    _assert_clean(response)
    assert response.status_code == 422 and reason in response.json()["detail"]
    # The bomb is judged on its header: no canvas is allocated (4.9e7 RGB pixels = 147 MB).
    assert psutil.Process().memory_info().rss - rss_before < 100 * 2**20


def test_oversize_uploads_are_refused_however_they_are_sent(client) -> None:
    limit = 10 * 2**20
    # No Content-Length (chunked): the limit is enforced while reading, not from headers.
    chunks = (b"\xff" * 2**20 for _ in range(12))
    response = client.post(
        "/api/search/image", content=chunks, headers={"content-type": "image/jpeg"}
    )
    assert response.status_code == 413
    # A declared length far above the limit is refused before the body is read.
    declared = client.post(
        "/api/search/image",
        content=b"\xff" * 10,
        headers={"content-type": "image/jpeg", "content-length": str(10**12)},
    )
    assert declared.status_code in (400, 413)
    form = client.post(
        "/api/search/image",
        files={"file": ("big.jpg", b"\xff" * (limit + 1), "image/jpeg")},
    )
    assert form.status_code == 413
    for response in (declared, form):
        _assert_clean(response)


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("multipart/form-data", b"--x\r\n"),  # no boundary parameter
        ("multipart/form-data; boundary=x", b"garbage without any boundary"),
        ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="other"'
         b"\r\n\r\nhello\r\n--x--\r\n"),
        ("text/uri-list", b"http://169.254.169.254/latest/meta-data/"),  # no fetching by URL
        ("application/json", b'{"url": "file:///etc/passwd"}'),
    ],
    ids=["no_boundary", "garbage_multipart", "no_file_part", "uri_list", "json"],
)  # fmt: skip
def test_malformed_upload_bodies_are_4xx(client, content_type, body) -> None:
    response = client.post(
        "/api/search/image", content=body, headers={"content-type": content_type.encode("latin-1")}
    )
    _assert_clean(response)
    assert 400 <= response.status_code < 500


def test_a_non_ascii_parameter_in_the_content_type_is_ignored(client) -> None:
    """Only the media type matters for an image; a junk charset does not break the upload."""
    response = client.post(
        "/api/search/image",
        content=cf.jpeg_bytes((64, 48)),
        headers={"content-type": "image/jpeg; charset=\xff".encode("latin-1")},
    )
    _assert_clean(response)
    assert response.status_code == 200


@pytest.mark.parametrize(
    "query",
    [
        "q=dog&k=100000000000000000000000000000",
        "q=dog&k=-1",
        "q=dog&k=1e9",
        "q=dog&k=NaN",
        "q=dog&offset=99999999999999999999",
        "q=dog&k=5&k=7&k=1000",
    ],
)
def test_huge_or_malformed_k_is_refused(client, query) -> None:
    response = client.get(f"/api/search?{query}")
    _assert_clean(response)
    assert response.status_code == 422  # repeated k: the last one (1000 > max_k) counts


@pytest.mark.parametrize(
    "query",
    ["q=%ff%fe%fd", "q=%00", "q=%C0%AE%C0%AE", "q=" + "%F0%9F%90%95" * 100, "q=%E2%80%AE dog",
     "q=a%20b&k=3", "q=" + "x" * 501],
)  # fmt: skip
def test_odd_encodings_in_text_queries_are_answered_or_refused_cleanly(client, query) -> None:
    response = client.get(f"/api/search?{query}")
    _assert_clean(response)
    assert response.status_code in (200, 400, 422)


@pytest.mark.parametrize(
    "route", ["/thumbnails/{}", "/api/images/{}", "/api/similar/{}", "/?similar={}"]
)
@pytest.mark.parametrize(
    "probe",
    ["../../../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
     "/etc/passwd", "%2Fetc%2Fpasswd", "....//....//etc/passwd", "..\\..\\windows\\win.ini",
     "%00", "%ff%fe", "x" * 10_000, "file:%2F%2F%2Fetc%2Fpasswd"],
)  # fmt: skip
def test_path_traversal_and_odd_ids_are_not_found(client, route, probe) -> None:
    response = client.get(route.format(probe))
    _assert_clean(response)
    assert "root:" not in response.text  # /etc/passwd never leaks
    if route.startswith("/?"):
        assert response.status_code in (404, 422)  # the page shows the error
    else:
        assert response.status_code in (404, 422), (route, probe, response.status_code)


def test_a_known_id_with_an_indexed_uri_is_the_only_way_to_a_file(client) -> None:
    image_id = client.get("/api/search", params={"q": "dog", "k": 1}).json()["results"][0][
        "image_id"
    ]
    assert client.get(f"/thumbnails/{urllib.parse.quote(image_id)}").status_code == 200
    assert client.get(f"/thumbnails/{urllib.parse.quote(image_id)}%2F..").status_code == 404


# --- soak: sustained queries with a hot reload in the middle --------------------------------


SOAK_S = 12.0
MAX_RSS_GROWTH_MB = 80


@pytest.mark.slow
def test_soak_with_a_hot_reload_in_the_middle(tmp_path, built_versions, serve_models) -> None:
    root = tmp_path / "soak-root"
    publish(root, built_versions["v1"], "v1")
    config = ServeConfig(index=str(root), models_dir=str(serve_models), poll_interval_s=0.2)
    app = create_app(config)
    image_ids = list(app.state.holder.current.details.image_ids())
    upload = cf.jpeg_bytes((320, 240), seed=5)
    process = psutil.Process()
    samples: list[int] = []
    kinds = (SEARCH, SIMILAR, UPLOAD)
    with (
        BackgroundServer(app) as server,
        QueryLoad(server.url, image_ids, kinds, upload, threads=3) as load,
    ):
        started = time.monotonic()
        published = False
        while (elapsed := time.monotonic() - started) < SOAK_S:
            samples.append(process.memory_info().rss)
            if not published and elapsed > SOAK_S / 2:
                publish(root, built_versions["v2"], "v2")
                published = True
            time.sleep(0.25)
    warm = samples[len(samples) // 4]  # after the first requests warmed every code path
    growth_mb = (max(samples[len(samples) // 4 :]) - warm) / 2**20
    print(
        f"soak: {load.ok} requests in {SOAK_S:.0f}s ({load.ok / SOAK_S:.0f}/s), "
        f"{len(load.failures)} failed, versions {sorted(load.versions)}, "
        f"RSS {warm / 2**20:.0f} MB -> max {max(samples) / 2**20:.0f} MB (+{growth_mb:.1f} MB)"
    )
    assert load.failures == [], load.failures[:5]
    assert load.versions == {"v1", "v2"}
    assert load.ok > 50
    assert growth_mb < MAX_RSS_GROWTH_MB
