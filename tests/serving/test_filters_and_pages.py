"""Filters, thresholds, stable pages and batches through the HTTP API, over a real index.

The index (tests/conftest.py ``built_versions``) has typed metadata columns: ``site``
alternating flickr/coco, ``taken`` a date per photo, ``rating`` the photo's number except for
the fourth, which has none. Oracles are the unfiltered full rankings, filtered here in Python.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from serving.batch_search import MAX_BATCH_QUERIES

QUERY = "a dog running on the grass"


@pytest.fixture(scope="module")
def root(v2_root: Path) -> Path:
    return v2_root


@pytest.fixture(scope="module")
def client(v2_client):
    return v2_client


def search(client, **params) -> dict:
    response = client.get("/api/search", params={"q": QUERY, **params})
    assert response.status_code == 200, response.text
    return response.json()


def ids(body: dict) -> list[str]:
    return [r["image_id"] for r in body["results"]]


def test_results_carry_their_typed_metadata(client):
    body = search(client, k=8)
    assert len(body["results"]) == 8
    for result in body["results"]:
        metadata = result["metadata"]
        assert set(metadata) == {"site", "taken", "rating"}
        assert metadata["site"] in ("flickr", "coco")
        dt.datetime.fromisoformat(metadata["taken"].replace("Z", "+00:00"))
    assert sum(r["metadata"]["rating"] is None for r in body["results"]) == 1
    details = client.get(body["results"][0]["links"]["details"]).json()
    assert details["metadata"] == body["results"][0]["metadata"]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pages_of_text_similar_and_image_queries_tile_one_ranking(client, k):
    whole = ids(search(client, k=8))
    pages, offset = [], 0
    while offset is not None:
        body = search(client, k=k, offset=offset)
        pages += ids(body)
        offset = body["next_offset"]
    assert pages == whole
    seed = whole[0]
    similar_whole = ids(client.get(f"/api/similar/{seed}", params={"k": 8}).json())
    similar_pages, offset = [], 0
    while offset is not None:
        body = client.get(f"/api/similar/{seed}", params={"k": k, "offset": offset}).json()
        similar_pages += ids(body)
        offset = body["next_offset"]
    assert similar_pages == similar_whole and seed not in similar_pages
    assert len(similar_whole) == 7


def test_min_score_keeps_only_results_at_or_above_it(client):
    scores = [r["score"] for r in search(client, k=8)["results"]]
    cut = (scores[2] + scores[3]) / 2
    body = search(client, k=8, min_score=cut)
    assert [r["score"] for r in body["results"]] == scores[:3] and body["next_offset"] is None
    paged = search(client, k=2, min_score=cut)
    assert len(paged["results"]) == 2 and paged["next_offset"] == 2
    assert search(client, k=2, offset=2, min_score=cut)["next_offset"] is None
    assert search(client, min_score=scores[0] + 1)["results"] == []


@pytest.mark.parametrize(
    ("filter_text", "keep"),
    [
        ('site = "flickr"', lambda m, r: m["site"] == "flickr"),
        ("rating >= 2 AND rating < 6",
         lambda m, r: m["rating"] is not None and 2 <= m["rating"] < 6),
        ("rating IS NULL", lambda m, r: m["rating"] is None),
        ('taken < "2020-04-01" OR site != "coco"',
         lambda m, r: m["taken"] < "2020-04-01" or m["site"] != "coco"),
        ("width >= 500", lambda m, r: r["width"] >= 500),
    ],
)  # fmt: skip
def test_filtered_search_equals_the_filtered_full_ranking(client, filter_text, keep):
    everything = search(client, k=8)["results"]
    expected = [r["image_id"] for r in everything if keep(r["metadata"], r)]
    assert expected, "a filter the fixture does not exercise"
    body = search(client, k=8, filter=filter_text)
    assert ids(body) == expected and body["query"]["filter"] == filter_text
    seed = everything[0]["image_id"]
    similar_all = client.get(f"/api/similar/{seed}", params={"k": 8}).json()["results"]
    similar = client.get(f"/api/similar/{seed}", params={"k": 8, "filter": filter_text}).json()
    assert ids(similar) == [r["image_id"] for r in similar_all if keep(r["metadata"], r)]


@pytest.mark.parametrize(
    ("filter_text", "message"),
    [
        ('sight = "flickr"', "unknown field 'sight'"),
        ('rating >= "high"', "rating"),
        ('site = "flickr" AND', ""),
        ('tags HAS "dog"', "unknown field 'tags'"),  # this index was built without tags
    ],
)
def test_a_bad_filter_is_a_400_that_says_why(client, filter_text, message):
    response = client.get("/api/search", params={"q": QUERY, "filter": filter_text})
    assert response.status_code == 400, response.text
    assert (
        response.json()["detail"].startswith("bad filter: ")
        and message in response.json()["detail"]
    )


def test_the_page_filters_and_keeps_the_filter_in_its_next_link(client):
    page = client.get("/", params={"q": QUERY, "filter": 'site = "coco"'})
    assert page.status_code == 200
    assert 'value="site = &#34;coco&#34;"' in page.text or "site = &#34;coco&#34;" in page.text
    assert page.text.count('class="result"') == 4
    bad = client.get("/", params={"q": QUERY, "filter": "nope ="})
    assert bad.status_code == 400 and "bad filter" in bad.text


def test_a_batch_answers_each_query_as_its_own_route_does(client):
    seed = ids(search(client, k=1))[0]
    body = {"queries": [{"q": QUERY}, {"image_id": seed}, {"q": "zzqx"}, {"image_id": "nope"},
                        {"q": "a red car"}], "k": 3}  # fmt: skip
    response = client.post("/api/search/batch", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 5
    assert ids(results[0]) == ids(search(client, k=3))
    assert ids(results[1]) == ids(client.get(f"/api/similar/{seed}", params={"k": 3}).json())
    assert results[2]["error"]["status"] == 400 and "zzqx" in results[2]["error"]["detail"]
    assert results[3]["error"]["status"] == 404
    assert ids(results[4]) == ids(
        client.get("/api/search", params={"q": "a red car", "k": 3}).json()
    )
    filtered = client.post(
        "/api/search/batch", json={**body, "filter": 'site = "flickr"', "offset": 1}
    ).json()["results"]
    assert ids(filtered[0]) == ids(search(client, k=3, offset=1, filter='site = "flickr"'))


@pytest.mark.parametrize(
    "body",
    [
        {"queries": []},
        {"queries": [{"q": "dog"}] * (MAX_BATCH_QUERIES + 1)},
        {"queries": [{"q": "dog", "image_id": "x"}]},
        {"queries": [{}]},
        {"queries": [{"q": "dog"}], "k": 0},
        {"queries": [{"q": "dog"}], "colour": "red"},
    ],
)
def test_a_malformed_or_oversize_batch_is_refused_with_the_reason(client, body):
    response = client.post("/api/search/batch", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


def test_a_batch_with_a_bad_filter_is_a_400(client):
    response = client.post(
        "/api/search/batch", json={"queries": [{"q": "dog"}], "filter": "width >>= 3"}
    )
    assert response.status_code == 400 and "bad filter" in response.json()["detail"]


def test_image_queries_take_filters_and_thresholds(client, serve_photos):
    data = serve_photos[0].read_bytes()
    jpeg = {"content-type": "image/jpeg"}
    everything = client.post(
        "/api/search/image", content=data, headers=jpeg, params={"k": 8}
    ).json()
    assert everything["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    params = {"k": 8, "filter": 'site = "flickr"', "min_score": -1}
    flickr = client.post("/api/search/image", content=data, headers=jpeg, params=params).json()
    assert ids(flickr) == [r["image_id"] for r in everything["results"]
                           if r["metadata"]["site"] == "flickr"]  # fmt: skip


def test_openapi_documents_the_new_parameters_and_route(client):
    schema = client.get("/openapi.json").json()
    names = {p["name"] for p in schema["paths"]["/api/search"]["get"]["parameters"]}
    assert {"min_score", "filter", "dedupe"} <= names
    for path in ("/api/similar/{image_id}", "/api/search/image"):
        method = next(iter(schema["paths"][path]))
        assert {"min_score", "filter", "dedupe"} <= {
            p["name"] for p in schema["paths"][path][method]["parameters"]
        }
    assert "post" in schema["paths"]["/api/search/batch"]


def test_the_command_line_filters_thresholds_and_pages_like_the_server(client, root, capsys):
    import json

    from imgsearch import cli

    seed = ids(search(client, k=1))[0]
    served = client.get(
        f"/api/similar/{seed}", params={"k": 2, "offset": 1, "filter": 'site = "flickr"'}
    ).json()
    capsys.readouterr()
    argv = ["search", "--index", str(root), "--image-id", seed, "-k", "2", "--offset", "1",
            "--filter", 'site = "flickr"', "--json"]  # fmt: skip
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [h["image_id"] for h in printed] == ids(served)
    assert cli.main([*argv[:-1], "--min-score", "2"]) == 0
    assert capsys.readouterr().out.strip() == ""
    assert cli.main(["search", "--index", str(root), "--image-id", seed, "--filter", "x ="]) == 2
    assert "bad filter" in capsys.readouterr().err
