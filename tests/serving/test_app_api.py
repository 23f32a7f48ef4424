"""The HTTP API over real index versions: text, image, similar, details, thumbnails, ops."""

from __future__ import annotations

import io
import urllib.parse
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps

from index.publish import read_pointer
from serving.app import create_app
from serving.config import ServeConfig
from serving.searcher import ImageSearcher
from serving.state import QueryModels
from serving.text_search import TextSearcher
from tests.index_args import fake_index_args
from tests.serving.conftest import JOINT_MODEL


@pytest.fixture(scope="module")
def api_root(tmp_path_factory, built_versions) -> Path:
    from tests.serving.conftest import publish

    root = tmp_path_factory.mktemp("api-root")
    publish(root, built_versions["v1"], "v1")
    return root


@pytest.fixture(scope="module")
def client(api_root: Path, serve_models: Path):
    config = ServeConfig(index=str(api_root), models_dir=str(serve_models), poll_interval_s=0)
    with TestClient(create_app(config)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def direct(api_root: Path, serve_models: Path) -> TextSearcher:
    """The same version searched without the server: the oracle for the API's answers."""
    images = ImageSearcher.load(str(api_root / "versions" / "v1"))
    return TextSearcher.load(images, serve_models, JOINT_MODEL)


def test_text_search_equals_the_searcher(
    client: TestClient, direct: TextSearcher, api_root: Path
) -> None:
    response = client.get("/api/search", params={"q": "a dog running on the grass", "k": 4})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"] == "v1" and body["k"] == 4 and body["offset"] == 0
    expected = direct.search("a dog running on the grass", 4)
    assert [r["image_id"] for r in body["results"]] == [h.image_id for h in expected]
    np.testing.assert_allclose([r["score"] for r in body["results"]],
                               [h.score for h in expected], atol=1e-4)  # fmt: skip
    assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4]
    first = body["results"][0]
    assert first["why"]["match"] == "text" and first["why"]["space"] == "joint-index"
    terms = [t["term"] for t in first["why"]["terms"]]
    assert {"dog", "running", "grass"} <= set(terms)
    scores = [t["score"] for t in first["why"]["terms"]]
    assert scores == sorted(scores, reverse=True)
    # A word's score is its own text-tower vector against the hit's joint vector in the table.
    table = pq.read_table(api_root / "versions" / "v1" / "table").to_pydict()
    joint = dict(zip(table["image_id"], table["joint_embedding"], strict=True))
    dog = direct.joint.embed_text_features(direct.text_encoder.encode(["dog"]))[0]
    expected_dog = float(np.dot(dog, np.asarray(joint[first["image_id"]], np.float32)))
    assert next(t["score"] for t in first["why"]["terms"] if t["term"] == "dog") == (
        pytest.approx(expected_dog, abs=1e-3)
    )
    assert first["caption"] is None and first["tags"] == []
    assert first["links"]["thumbnail"] == f"/thumbnails/{first['image_id']}"


def test_concurrent_text_queries_share_the_batcher_and_answer_as_alone(
    client: TestClient, direct: TextSearcher
) -> None:
    """The server's text encoder is the batcher (serving.text_batcher): queries sent at once
    get the answers each gets alone, and /metrics counts the requests and encoder calls."""
    from concurrent.futures import ThreadPoolExecutor

    queries = ["a dog", "two dogs on the grass", "a man on a bike", "children playing",
               "a dog in the water", "a red car", "people on the beach", "a black dog"]  # fmt: skip

    def ask(query: str) -> list[str]:
        response = client.get("/api/search", params={"q": query, "k": 3})
        assert response.status_code == 200, response.text
        return [r["image_id"] for r in response.json()["results"]]

    before = _metric(client, "imgsearch_text_batching_requests")
    with ThreadPoolExecutor(len(queries)) as pool:
        answers = list(pool.map(ask, queries))
    assert answers == [[h.image_id for h in direct.search(q, 3)] for q in queries]
    assert _metric(client, "imgsearch_text_batching_requests") - before == len(queries)
    calls = _metric(client, "imgsearch_text_batching_encoder_calls")
    assert 1 <= calls <= _metric(client, "imgsearch_text_batching_requests")


def _metric(client: TestClient, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def test_unknown_words_are_reported(client: TestClient) -> None:
    body = client.get("/api/search", params={"q": "dog zzqxv", "k": 2}).json()
    assert body["results"][0]["why"]["unknown_terms"] == ["zzqxv"]
    response = client.get("/api/search", params={"q": "zzqxv qqzzk"})
    assert response.status_code == 400
    assert "no word" in response.json()["detail"]


def test_pagination_is_a_slice_of_the_ranking(client: TestClient) -> None:
    whole = client.get("/api/search", params={"q": "a man on a bike", "k": 6}).json()
    page = client.get("/api/search", params={"q": "a man on a bike", "k": 2, "offset": 2}).json()
    assert [r["image_id"] for r in page["results"]] == [
        r["image_id"] for r in whole["results"][2:4]
    ]
    assert [r["rank"] for r in page["results"]] == [3, 4]
    assert page["next_offset"] == 4
    assert whole["next_offset"] is None  # all 6 indexed images returned


@pytest.mark.parametrize(
    "params",
    [{"q": "dog", "k": 0}, {"q": "dog", "k": 101}, {"q": "dog", "offset": 1001}, {"q": ""}],
)  # fmt: skip
def test_bounds_are_enforced(client: TestClient, params: dict) -> None:
    assert client.get("/api/search", params=params).status_code == 422


def test_a_query_past_the_length_limit_is_a_400_naming_it(client: TestClient) -> None:
    longest = ("a man on a bike " * 40)[:500]
    answer = client.get("/api/search", params={"q": longest, "k": 2})
    assert answer.status_code == 200, answer.text
    assert {t["term"] for t in answer.json()["results"][0]["why"]["terms"]} <= {"a", "man", "on",
                                                                               "bike"}  # fmt: skip
    too_long = longest + "x"
    for response in (
        client.get("/api/search", params={"q": too_long}),
        client.get("/", params={"q": too_long}),
        client.get("/api/explain/x", params={"q": too_long}),
        client.post("/api/search/batch", json={"queries": [{"q": "dog"}, {"q": too_long}]}),
    ):
        assert response.status_code == 400, (response.request.url, response.text)
        assert response.json() == {
            "detail": "the query is longer than 500 characters, this server's limit"
        }
    # Other invalid parameters keep FastAPI's 422 with its field-by-field detail.
    both = client.get("/api/search", params={"q": too_long, "k": 0})
    assert both.status_code == 422 and isinstance(both.json()["detail"], list)
    schema = client.get("/openapi.json").json()["paths"]["/api/search"]["get"]["parameters"]
    assert next(p for p in schema if p["name"] == "q")["schema"]["maxLength"] == 500


def test_image_upload_finds_the_same_photo(client: TestClient, serve_photos) -> None:
    photo = serve_photos[2]
    data = photo.read_bytes()
    raw = client.post("/api/search/image?k=3", content=data, headers={"content-type": "image/jpeg"})
    assert raw.status_code == 200, raw.text
    hits = raw.json()["results"]
    assert hits[0]["uri"].endswith(photo.name) and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[0]["why"] == {"match": "image", "encoder": "fake/v1"}
    assert raw.json()["query"]["image"]["width"] == Image.open(photo).width
    form = client.post("/api/search/image?k=3", files={"file": (photo.name, data, "image/jpeg")})
    assert form.status_code == 200
    assert [r["image_id"] for r in form.json()["results"]] == [r["image_id"] for r in hits]


def test_upload_limits(client: TestClient, serve_photos) -> None:
    too_big = b"\xff" * (10 * 2**20 + 1)
    response = client.post(
        "/api/search/image", content=too_big, headers={"content-type": "image/jpeg"}
    )
    assert response.status_code == 413
    response = client.post(
        "/api/search/image", content=b"hello", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415
    response = client.post(
        "/api/search/image", content=b"not a jpeg", headers={"content-type": "image/jpeg"}
    )
    assert response.status_code == 422
    assert "image rejected" in response.json()["detail"]
    response = client.post("/api/search/image", content=b"", headers={"content-type": "image/png"})
    assert response.status_code == 400
    tiny = io.BytesIO()
    Image.new("RGB", (4, 4)).save(tiny, format="PNG")
    response = client.post(
        "/api/search/image", content=tiny.getvalue(), headers={"content-type": "image/png"}
    )
    assert response.status_code == 422 and "small" in response.json()["detail"]


def test_similar_excludes_the_image(client: TestClient, direct: TextSearcher) -> None:
    image_id = direct.images.hit_for_row(0, 0.0).image_id
    body = client.get(f"/api/similar/{image_id}", params={"k": 3}).json()
    expected = direct.images.similar_to_image_id(image_id, 3)
    assert [r["image_id"] for r in body["results"]] == [h.image_id for h in expected]
    assert image_id not in {r["image_id"] for r in body["results"]}
    assert body["results"][0]["why"]["to"] == image_id
    assert client.get("/api/similar/nope").status_code == 404


def test_details_come_from_the_table(client: TestClient, direct: TextSearcher) -> None:
    hit = direct.images.hit_for_row(1, 0.0)
    details = client.get(f"/api/images/{hit.image_id}").json()
    with Image.open(hit.uri) as im:
        upright = ImageOps.exif_transpose(im)  # the table stores the size after EXIF rotation
        assert (details["width"], details["height"]) == upright.size
    # A local source shows as its file name (serving.redaction; --expose-uris shows the path).
    assert details["uri"] == Path(hit.uri).name
    assert details["num_bytes"] == Path(hit.uri).stat().st_size
    assert details["caption"] is None and details["tags"] == [] and details["version"] == "v1"
    assert details["source_metadata"]["title"] == f"photo {Path(hit.uri).stem}"
    assert client.get("/api/images/unknown").status_code == 404


def test_thumbnails_by_id_only(client: TestClient, direct: TextSearcher) -> None:
    hit = direct.images.hit_for_row(0, 0.0)
    response = client.get(f"/thumbnails/{hit.image_id}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(response.content)) as thumb:
        assert max(thumb.size) == 256 and thumb.format == "JPEG"
    assert client.get(f"/thumbnails/{hit.image_id}").content == response.content
    metrics = client.get("/metrics").text
    assert 'imgsearch_thumbnail_cache_total{result="hit"} 1.0' in metrics
    for probe in ("nope", urllib.parse.quote("../../etc/passwd", safe=""), "%2Fetc%2Fpasswd"):
        assert client.get(f"/thumbnails/{probe}").status_code == 404


def test_health_ready_metrics_openapi(client: TestClient, api_root: Path) -> None:
    health = client.get("/health").json()
    assert health["serving"]["version"] == "v1" == read_pointer(str(api_root)).version
    assert health["serving"]["images"] == 6 and health["text_search"]["enabled"]
    assert health["reload"]["watching"] == api_root.name and health["reload"]["refused"] == {}
    assert client.get("/ready").json() == {"ready": True, "version": "v1", "published": "v1"}
    client.get("/api/search", params={"q": "dog"})
    metrics = client.get("/metrics").text
    assert 'imgsearch_requests_total{route="/api/search",status="200"}' in metrics
    assert 'imgsearch_index_version_info{version="v1"} 1.0' in metrics
    assert "imgsearch_index_images 6.0" in metrics
    schema = client.get("/openapi.json").json()
    paths = {"/api/search", "/api/search/image", "/api/similar/{image_id}",
             "/api/images/{image_id}", "/thumbnails/{image_id}", "/health"}  # fmt: skip
    assert paths <= set(schema["paths"])
    k_param = next(
        p for p in schema["paths"]["/api/search"]["get"]["parameters"] if p["name"] == "k"
    )
    assert k_param["schema"]["maximum"] == 100 and k_param["schema"]["minimum"] == 1


def test_search_page_without_javascript(client: TestClient, serve_photos) -> None:
    page = client.get("/", params={"q": "a dog"})
    assert page.status_code == 200 and 'data-rendered-by="server"' in page.text
    assert page.text.count('class="result"') == 6 and "/thumbnails/" in page.text
    image_id = page.text.split('data-image-id="')[1].split('"')[0]
    similar = client.get("/", params={"similar": image_id})
    assert similar.text.count('class="result"') == 5 and "More like this" in similar.text
    upload = client.post(
        "/upload", files={"file": ("q.jpg", serve_photos[0].read_bytes(), "image/jpeg")}
    )
    assert upload.status_code == 200 and "Images like your upload" in upload.text
    bad = client.get("/", params={"q": "zzqxv"})
    assert bad.status_code == 400 and "no word" in bad.text
    escaped = client.get("/", params={"q": "<script>alert(1)</script>"})
    assert "<script>alert(1)</script>" not in escaped.text


def test_without_models_text_is_off_and_images_work(api_root: Path, serve_photos) -> None:
    config = ServeConfig(index=str(api_root / "versions" / "v1"), poll_interval_s=0)
    with TestClient(create_app(config, QueryModels())) as plain:
        response = plain.get("/api/search", params={"q": "dog"})
        assert response.status_code == 503 and "--models" in response.json()["detail"]
        data = serve_photos[0].read_bytes()
        found = plain.post(
            "/api/search/image", content=data, headers={"content-type": "image/jpeg"}
        )
        assert found.status_code == 200 and found.json()["results"][0]["score"] > 0.999
        assert plain.get("/health").json()["reload"] is None  # a plain folder is not watched
        assert "text search needs a joint model" in plain.get("/").text


def test_vectors_held_as_int8_serve_similar_as_float32_does(
    api_root: Path, serve_models: Path, client: TestClient, direct: TextSearcher
) -> None:
    """--vectors-in-memory int8: a quarter of the bytes, similar-to-id and text answers as the
    float32-held server gives them (these photos are far apart: no near-ties to swap)."""
    config = ServeConfig(index=str(api_root), models_dir=str(serve_models), poll_interval_s=0,
                         vector_precision="int8")  # fmt: skip
    with TestClient(create_app(config)) as compact:
        held = compact.get("/health").json()["serving"]["vectors"]
        full = client.get("/health").json()["serving"]["vectors"]
        assert held["precision"] == "int8" and full["precision"] == "float32"
        assert held["bytes"] < full["bytes"] / 3.5
        for row in range(3):
            image_id = direct.images.hit_for_row(row, 0.0).image_id
            want = client.get(f"/api/similar/{image_id}", params={"k": 5}).json()["results"]
            got = compact.get(f"/api/similar/{image_id}", params={"k": 5}).json()["results"]
            assert [r["image_id"] for r in got] == [r["image_id"] for r in want]
            np.testing.assert_allclose(
                [r["score"] for r in got], [r["score"] for r in want], atol=3e-3
            )
        query = {"q": "a dog running on the grass", "k": 5}

        def ids(app: TestClient) -> list[str]:
            return [r["image_id"] for r in app.get("/api/search", params=query).json()["results"]]

        assert ids(compact) == ids(client)
    with pytest.raises(ValueError, match="vector_precision"):
        ServeConfig(index=str(api_root), vector_precision="int4")


def test_index_must_exist(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a publish root"):
        create_app(ServeConfig(index=str(tmp_path)), QueryModels())


def test_multipart_uploads(client: TestClient, serve_photos) -> None:
    # Over Starlette's 1 MB spool size: parsed in memory all the same.
    noise = np.random.default_rng(3).integers(0, 256, (900, 900, 3), dtype=np.uint8)
    big = io.BytesIO()
    Image.fromarray(noise).save(big, format="PNG")
    assert len(big.getvalue()) > 2**20
    form = client.post(
        "/api/search/image?k=2", files={"file": ("n.png", big.getvalue(), "image/png")}
    )
    assert form.status_code == 200, form.text
    assert form.json()["query"]["image"] == {
        "bytes": len(big.getvalue()),
        "width": 900,
        "height": 900,
    }
    data = serve_photos[0].read_bytes()
    other_field = client.post("/api/search/image", files={"photo": ("q.jpg", data, "image/jpeg")})
    assert other_field.status_code == 400 and "no 'file' part" in other_field.json()["detail"]
    as_text = client.post("/api/search/image", files={"file": ("q.txt", b"hello", "text/plain")})
    assert as_text.status_code == 415
    broken = client.post(
        "/api/search/image",
        content=b"--x\r\nnot a form",
        headers={"content-type": "multipart/form-data"},
    )
    assert broken.status_code == 400 and "boundary" in broken.json()["detail"]


def test_a_sharded_version_serves_the_same_answers_as_one_shard(
    tmp_path: Path, serve_photos: list[Path], serve_models: Path, client: TestClient
) -> None:
    """The server loads every shard of a version and merges top-k: the same ids and scores as
    the one-shard v1 over the same photos (fixed image ids, so the shard split is fixed too)."""
    import hashlib
    import json

    from pipelines import index_job
    from tests.serving.conftest import publish

    ids = [f"photo-{i}" for i in range(6)]
    # Rows go to shard sha256(image_id)[:8] mod N: check both shards get some of these ids.
    assert len({int(hashlib.sha256(i.encode()).hexdigest()[:8], 16) % 2 for i in ids}) == 2
    corpus = tmp_path / "corpus.jsonl"
    photos = serve_photos[:6]  # v1's photos
    corpus.write_text("".join(json.dumps({"uri": str(p), "id": i}) + "\n"
                              for p, i in zip(photos, ids, strict=True)))  # fmt: skip
    built = tmp_path / "sharded"
    index_job.run(
        fake_index_args(corpus, built, "s2", "--models", str(serve_models),
                        "--joint_model", JOINT_MODEL, "--index_shards", "2")
    )  # fmt: skip
    root = tmp_path / "root"
    publish(root, built, "s2")
    config = ServeConfig(index=str(root), models_dir=str(serve_models), poll_interval_s=0)
    with TestClient(create_app(config)) as sharded:
        assert len(ImageSearcher.load(str(root / "versions" / "s2")).manifest.shards) == 2
        uri_of = dict(zip(ids, (p.name for p in photos), strict=True))  # as the server shows
        for query in ("a dog running on the grass", "people on a street"):
            one = client.get("/api/search", params={"q": query, "k": 6}).json()["results"]
            two = sharded.get("/api/search", params={"q": query, "k": 6}).json()["results"]
            assert [r["uri"] for r in one] == [uri_of[r["image_id"]] for r in two]
            np.testing.assert_allclose([r["score"] for r in one], [r["score"] for r in two],
                                       atol=1e-5)  # fmt: skip
        from pipelines.types import image_id_for_uri

        similar = sharded.get("/api/similar/photo-0", params={"k": 3}).json()["results"]
        expected = client.get(f"/api/similar/{image_id_for_uri(str(photos[0]))}",
                              params={"k": 3}).json()["results"]  # fmt: skip
        assert [uri_of[r["image_id"]] for r in similar] == [r["uri"] for r in expected]
        assert "photo-0" not in {r["image_id"] for r in similar}


def test_fused_ranking_through_the_api(api_root: Path, serve_models: Path, client: TestClient):
    """`--fused`: text queries rank by the fused score and say which parts scored what. This
    index has no caption or tag columns and the models dir no fitted weights, so the fusion is
    reciprocal rank fusion over the one joint model: the joint ranking, explained as parts."""
    config = ServeConfig(index=str(api_root), models_dir=str(serve_models), poll_interval_s=0,
                         fused=True)  # fmt: skip
    query = {"q": "a dog running on the grass", "k": 5}
    joint = client.get("/api/search", params=query).json()["results"]
    with TestClient(create_app(config)) as fused_client:
        body = fused_client.get("/api/search", params=query).json()
        assert body["query"]["mode"] == "fused"
        results = body["results"]
        assert [r["image_id"] for r in results] == [r["image_id"] for r in joint]
        assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
        for result in results:
            assert result["why"]["match"] == "fused"
            assert set(result["why"]["parts"]) == {JOINT_MODEL}
        plain = fused_client.get("/api/search", params={**query, "mode": "joint"}).json()
        assert [r["image_id"] for r in plain["results"]] == [r["image_id"] for r in joint]
        assert plain["results"][0]["why"]["match"] == "text"
        assert fused_client.get("/health").json()["serving"]["fused_search"] == [JOINT_MODEL]
    refused = client.get("/api/search", params={**query, "mode": "fused"})
    assert refused.status_code == 400 and "--fused" in refused.json()["detail"]
    with pytest.raises(ValueError, match="--fused needs --models"):
        ServeConfig(index=str(api_root), fused=True)
