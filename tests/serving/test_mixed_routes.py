"""Query syntax, mixed queries and relevance feedback over a real served index version.

The oracle is NumPy over what the index job wrote: the table's ``joint_embedding`` column (the
joint-space vector of every image) and the text tower applied to the text encoder's rows, so
the server's combination, search and ``why`` are checked against an independent computation.
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.config import ServeConfig
from serving.searcher import ImageSearcher
from serving.text_search import TextSearcher
from tests.serving.conftest import JOINT_MODEL, publish


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory, built_versions) -> Path:
    root = tmp_path_factory.mktemp("mixed-root")
    publish(root, built_versions["v1"], "v1")
    return root


@pytest.fixture(scope="module")
def client(mixed_root: Path, serve_models: Path):
    config = ServeConfig(index=str(mixed_root), models_dir=str(serve_models), poll_interval_s=0)
    with TestClient(create_app(config)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def no_model_client(mixed_root: Path):
    with TestClient(create_app(ServeConfig(index=str(mixed_root), poll_interval_s=0))) as c:
        yield c


@pytest.fixture(scope="module")
def direct(mixed_root: Path, serve_models: Path) -> TextSearcher:
    images = ImageSearcher.load(str(mixed_root / "versions" / "v1"))
    return TextSearcher.load(images, serve_models, JOINT_MODEL)


@pytest.fixture(scope="module")
def joint(mixed_root: Path) -> dict[str, np.ndarray]:
    """image_id -> its joint-space vector, as the index job stored it."""
    table = pq.read_table(mixed_root / "versions" / "v1" / "table").to_pydict()
    return {
        image_id: np.asarray(vector, np.float32)
        for image_id, vector in zip(table["image_id"], table["joint_embedding"], strict=True)
    }


def _text_vector(direct: TextSearcher, text: str) -> np.ndarray:
    return direct.joint.embed_text_features(direct.text_encoder.encode([text]))[0]


def _oracle(joint: dict[str, np.ndarray], vectors: list[np.ndarray], weights: list[float]):
    """(ids best first, their scores) of the re-normalised weighted sum, exactly."""
    total = sum(w * v for w, v in zip(weights, vectors, strict=True))
    query = total / np.linalg.norm(total)
    ids = sorted(joint, key=lambda i: -float(joint[i] @ query))
    return ids, [float(joint[i] @ query) for i in ids]


def _check_against(body: dict, ids: list[str], scores: list[float]) -> None:
    got = [r["image_id"] for r in body["results"]]
    assert got == ids[: len(got)]
    np.testing.assert_allclose([r["score"] for r in body["results"]], scores[: len(got)], atol=1e-4)
    for r in body["results"]:  # every part's contribution adds up to the hit's score
        total = sum(part["contribution"] for part in r["why"]["parts"])
        assert total == pytest.approx(r["score"], abs=1e-3)


# --- GET /api/search with the syntax -------------------------------------------------------


def test_plain_and_quoted_queries_rank_alike(client: TestClient, direct: TextSearcher) -> None:
    plain = client.get("/api/search", params={"q": "a dog running on the grass", "k": 6}).json()
    expected = direct.search("a dog running on the grass", 6)
    assert [r["image_id"] for r in plain["results"]] == [h.image_id for h in expected]
    assert plain["query"] == {"text": "a dog running on the grass"}  # the plain path, as before
    assert "terms" in plain["results"][0]["why"]
    quoted = client.get("/api/search", params={"q": '"a dog running on the grass"', "k": 6})
    body = quoted.json()
    assert [r["image_id"] for r in body["results"]] == [h.image_id for h in expected]
    np.testing.assert_allclose(
        [r["score"] for r in body["results"]], [h.score for h in expected], atol=1e-4
    )
    assert body["results"][0]["why"]["match"] == "text"
    assert body["results"][0]["why"]["space"] == "joint-index"


def test_weighted_terms_through_the_text_search_route(
    client: TestClient, direct: TextSearcher, joint
) -> None:
    q = "2:brown dog + beach - snow"
    response = client.get("/api/search", params={"q": q, "k": 6})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"] == {
        "text": q,
        "terms": [
            {"text": "brown dog", "weight": 2.0},
            {"text": "beach", "weight": 1.0},
            {"text": "snow", "weight": -1.0},
        ],
    }
    vectors = [_text_vector(direct, t) for t in ("brown dog", "beach", "snow")]
    ids, scores = _oracle(joint, vectors, [2.0, 1.0, -1.0])
    _check_against(body, ids, scores)
    first = body["results"][0]
    parts = first["why"]["parts"]
    assert [(p["part"], p["text"], p["weight"]) for p in parts] == [
        ("text", "brown dog", 2.0),
        ("text", "beach", 1.0),
        ("text", "snow", -1.0),
    ]
    snow = float(vectors[2] @ joint[first["image_id"]])
    assert parts[2]["similarity"] == pytest.approx(snow, abs=1e-3)


def test_pages_of_a_syntax_query_continue_each_other(client: TestClient) -> None:
    q = "dog - snow"
    whole = client.get("/api/search", params={"q": q, "k": 4}).json()
    second = client.get("/api/search", params={"q": q, "k": 2, "offset": 2}).json()
    assert [r["image_id"] for r in second["results"]] == [
        r["image_id"] for r in whole["results"][2:4]
    ]
    assert [r["rank"] for r in second["results"]] == [3, 4]


@pytest.mark.parametrize(
    "q, position",
    [('"golden dog + beach', 0), ("dog +", 4), ("dog + + beach", 6), ("0:dog", 0), ("dog - 2:", 6)],
)
def test_malformed_syntax_is_400_naming_the_position(client: TestClient, q, position) -> None:
    response = client.get("/api/search", params={"q": q})
    assert response.status_code == 400
    assert response.json()["detail"].startswith("query syntax: ")
    assert response.json()["detail"].endswith(f"at position {position}")


def test_a_term_of_unknown_words_or_terms_that_cancel_are_400(client: TestClient) -> None:
    unknown = client.get("/api/search", params={"q": "dog + zzqxv"})
    assert unknown.status_code == 400 and "'zzqxv'" in unknown.json()["detail"]
    cancel = client.get("/api/search", params={"q": "dog - dog"})
    assert cancel.status_code == 400 and "cancel out" in cancel.json()["detail"]


def test_fused_mode_does_not_take_the_syntax(client: TestClient) -> None:
    response = client.get("/api/search", params={"q": "dog - snow", "mode": "fused"})
    assert response.status_code == 400 and "joint space" in response.json()["detail"]


# --- POST /api/search/mixed ------------------------------------------------------------------


def test_an_indexed_image_plus_weighted_text(client: TestClient, direct, joint) -> None:
    image_id = sorted(joint)[2]
    form = {"image_id": image_id, "q": "beach - 0.5:snow", "image_weight": "2"}
    response = client.post(
        "/api/search/mixed", params={"k": 6}, files={k: (None, v) for k, v in form.items()}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"]["image"] == {"image_id": image_id, "weight": 2.0}
    assert body["query"]["terms"] == [
        {"text": "beach", "weight": 1.0},
        {"text": "snow", "weight": -0.5},
    ]
    vectors = [joint[image_id], _text_vector(direct, "beach"), _text_vector(direct, "snow")]
    ids, scores = _oracle(joint, vectors, [2.0, 1.0, -0.5])
    _check_against(body, ids, scores)
    why = body["results"][0]["why"]
    assert why["match"] == "mixed" and why["space"] == "joint-index"
    assert why["parts"][0] == {
        **why["parts"][0],
        "part": "image",
        "source": "index",
        "image_id": image_id,
        "weight": 2.0,
    }
    assert [p["part"] for p in why["parts"]] == ["image", "text", "text"]


def test_an_uploaded_photo_finds_itself_in_the_joint_space(
    client: TestClient, serve_photos
) -> None:
    photo = serve_photos[1]
    files = {"file": (photo.name, photo.read_bytes(), "image/jpeg")}
    response = client.post("/api/search/mixed", params={"k": 3}, files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    top = body["results"][0]
    assert top["score"] == pytest.approx(1.0, abs=1e-3)
    assert Path(top["uri"]).name == photo.name
    assert top["why"]["parts"] == [
        {**top["why"]["parts"][0], "part": "image", "source": "upload", "weight": 1.0}
    ]
    assert body["query"]["image"]["bytes"] == photo.stat().st_size
    # With text and a negative image weight the upload is pushed away instead.
    files = {
        "file": (photo.name, photo.read_bytes(), "image/jpeg"),
        "q": (None, "dog"),
        "image_weight": (None, "-1"),
    }
    away = client.post("/api/search/mixed", params={"k": 8}, files=files).json()
    assert Path(away["results"][0]["uri"]).name != photo.name


def test_a_urlencoded_form_and_an_empty_file_part_work(client: TestClient, joint) -> None:
    image_id = sorted(joint)[0]
    plain = client.post("/api/search/mixed", data={"image_id": image_id, "q": "dog"})
    assert plain.status_code == 200, plain.text
    # A browser form with no file chosen sends an empty 'file' part: not an image, ignored.
    files = {
        "file": ("", b"", "application/octet-stream"),
        "image_id": (None, image_id),
        "q": (None, "dog"),
    }
    multipart = client.post("/api/search/mixed", files=files)
    assert multipart.status_code == 200, multipart.text
    assert [r["image_id"] for r in multipart.json()["results"]] == [
        r["image_id"] for r in plain.json()["results"]
    ]


def _mixed(client: TestClient, **fields):
    files = {k: v if isinstance(v, tuple) else (None, v) for k, v in fields.items()}
    return client.post("/api/search/mixed", files=files or {"unused": (None, "")})


def test_bad_mixed_queries(client: TestClient, joint, serve_photos, tmp_path) -> None:
    image_id = sorted(joint)[0]
    jpeg = serve_photos[0].read_bytes()
    cases = [
        (_mixed(client), 400, "needs an image"),
        (_mixed(client, q="   "), 400, "needs an image"),
        (_mixed(client, q="dog +"), 400, "at position 4"),
        (_mixed(client, image_id="nope", q="dog"), 404, "'nope'"),
        (_mixed(client, file=("a.jpg", jpeg, "image/jpeg"), image_id=image_id), 400, "not both"),
        (_mixed(client, image_id=image_id, image_weight="heavy"), 422, "image_weight"),
        (_mixed(client, image_id=image_id, image_weight="0"), 422, "non-zero"),
        (_mixed(client, image_id=image_id, image_weight="1e9"), 422, "between"),
        (_mixed(client, image_id=image_id, image_weight="nan"), 422, "non-zero"),
        (_mixed(client, file=("a.txt", b"hello", "text/plain")), 415, "unsupported content"),
        (_mixed(client, file=("a.jpg", b"not a jpeg at all", "image/jpeg")), 422, "rejected"),
        (_mixed(client, q="x" * 501), 400, "longer than 500"),
        (
            client.post(
                "/api/search/mixed", content=b"q=dog", headers={"content-type": "text/plain"}
            ),
            415,
            "send a form",
        ),
        (
            client.post(
                "/api/search/mixed",
                content=b"--x\r\n",
                headers={"content-type": "multipart/form-data"},
            ),
            400,
            "boundary",
        ),
        (client.post("/api/search/mixed", params={"k": 0}, data={"q": "dog"}), 422, ""),
    ]
    for response, status, detail in cases:
        assert response.status_code == status, (status, response.text)
        assert detail in str(response.json()["detail"]), response.text


def test_an_oversized_upload_is_413(tmp_path, mixed_root: Path, serve_models: Path) -> None:
    config = ServeConfig(
        index=str(mixed_root),
        models_dir=str(serve_models),
        poll_interval_s=0,
        max_upload_bytes=1000,
    )
    with TestClient(create_app(config)) as small:
        files = {"file": ("a.jpg", b"\xff" * 2000, "image/jpeg")}
        response = small.post("/api/search/mixed", files=files)
        assert response.status_code == 413, response.text
        huge = small.post(
            "/api/search/mixed", files={"file": ("a.jpg", b"\xff" * 70_000, "image/jpeg")}
        )
        assert huge.status_code == 413


def test_without_a_joint_model_mixed_and_feedback_are_503(no_model_client: TestClient) -> None:
    mixed = no_model_client.post("/api/search/mixed", data={"q": "dog"})
    assert mixed.status_code == 503 and "--models" in mixed.json()["detail"]
    feedback = no_model_client.post("/api/feedback/search", json={"q": "dog"})
    assert feedback.status_code == 503
    assert no_model_client.get("/api/search", params={"q": "dog - snow"}).status_code == 503
    page = no_model_client.get("/")
    assert 'name="relevant"' not in page.text


# --- POST /api/feedback/search ---------------------------------------------------------------


def test_rocchio_with_a_query(client: TestClient, direct, joint) -> None:
    ids = sorted(joint)
    relevant, not_relevant = [ids[1], ids[4]], [ids[0]]
    response = client.post(
        "/api/feedback/search",
        json={"q": "dog", "relevant": relevant, "not_relevant": not_relevant, "k": 6},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    query = _text_vector(direct, "dog")
    mean_relevant = (joint[ids[1]] + joint[ids[4]]) / 2
    expected, scores = _oracle(joint, [query, mean_relevant, joint[ids[0]]], [1.0, 0.75, -0.15])
    _check_against(body, expected, scores)
    assert body["query"] == {
        "text": "dog",
        "relevant": relevant,
        "not_relevant": not_relevant,
        "rocchio": {"alpha": 1.0, "beta": 0.75, "gamma": 0.15},
    }
    parts = body["results"][0]["why"]["parts"]
    assert [(p["part"], p["weight"]) for p in parts] == [
        ("query", 1.0),
        ("relevant", 0.75),
        ("not_relevant", -0.15),
    ]
    assert parts[1]["images"] == 2 and body["results"][0]["why"]["match"] == "feedback"


def test_feedback_from_images_alone(client: TestClient, joint) -> None:
    ids = sorted(joint)
    body = client.post("/api/feedback/search", json={"relevant": [ids[3], ids[3]]}).json()
    expected, scores = _oracle(joint, [joint[ids[3]]], [0.75])
    _check_against(body, expected, scores)
    assert body["results"][0]["image_id"] == ids[3]
    assert body["query"]["relevant"] == [ids[3]]  # duplicates count once


def test_bad_feedback(client: TestClient, joint) -> None:
    ids = sorted(joint)
    cases = [
        ({}, 400, "needs a query"),
        ({"q": "  ", "not_relevant": [ids[0]]}, 400, "needs a query"),
        ({"q": "dog", "relevant": ["nope", ids[0], "gone"]}, 404, "'nope', 'gone'"),
        ({"relevant": [ids[0]], "not_relevant": [ids[0]]}, 400, "both relevant and not"),
        ({"q": "dog -"}, 400, "at position 4"),
        ({"relevant": [f"id{i}" for i in range(101)]}, 422, ""),
        (
            {
                "relevant": [f"id{i}" for i in range(60)],
                "not_relevant": [f"x{i}" for i in range(60)],
            },
            422,
            "at most 100",
        ),
        ({"q": "dog", "k": 0}, 422, ""),
        ({"q": "dog", "surprise": 1}, 422, ""),
        ({"q": "dog", "relevant": "not a list"}, 422, ""),
    ]
    for payload, status, detail in cases:
        response = client.post("/api/feedback/search", json=payload)
        assert response.status_code == status, (payload, response.text)
        assert detail in str(response.json()["detail"]), response.text


def test_the_new_routes_are_in_the_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    mixed, feedback = paths["/api/search/mixed"]["post"], paths["/api/feedback/search"]["post"]
    assert mixed["tags"] == feedback["tags"] == ["search"]
    assert {"400", "404", "413", "415", "422", "503"} <= set(mixed["responses"])
    assert {"400", "404", "422", "503"} <= set(feedback["responses"])
    assert "multipart/form-data" in mixed["requestBody"]["content"]
    assert "/feedback" not in paths


# --- the page: tick results, search again -----------------------------------------------------


def _ticks(html: str) -> list[tuple[str, bool]]:
    return [
        (m.group(1), "checked" in m.group(0))
        for m in re.finditer(r'<input type="checkbox"[^>]*value="([^"]+)"[^>]*>', html)
    ]


def test_the_page_offers_checkboxes_and_renders_refined_results(client: TestClient) -> None:
    page = client.get("/", params={"q": "a dog on the grass"})
    assert page.status_code == 200
    assert 'id="feedback-form" class="full-row" action="/feedback" method="get"' in page.text
    assert 'name="q" value="a dog on the grass"' in page.text
    ticks = _ticks(page.text)
    assert len(ticks) == 6 and not any(checked for _, checked in ticks)
    chosen = [ticks[2][0], ticks[4][0]]
    refined = client.get("/feedback", params={"q": "a dog on the grass", "relevant": chosen})
    assert refined.status_code == 200, refined.text
    assert "Refined with 2 image(s)" in refined.text
    assert sorted(i for i, checked in _ticks(refined.text) if checked) == sorted(chosen)
    api = client.post(
        "/api/feedback/search", json={"q": "a dog on the grass", "relevant": chosen}
    ).json()
    order = re.findall(r'<figure class="result" data-image-id="([^"]+)"', refined.text)
    assert order == [r["image_id"] for r in api["results"]]
    assert 'id="next"' not in refined.text
    assert "parts: query" in refined.text


def test_the_page_explains_syntax_queries_and_refuses_bad_feedback(client: TestClient) -> None:
    syntax = client.get("/", params={"q": "dog - snow"})
    assert syntax.status_code == 200 and "parts: dog (+" in syntax.text
    bad = client.get("/", params={"q": "dog +"})
    assert bad.status_code == 400 and "at position 4" in bad.text
    nothing = client.get("/feedback", params={"q": "dog"})
    assert nothing.status_code == 400 and "tick the results" in nothing.text
    unknown = client.get("/feedback?" + urllib.parse.urlencode({"relevant": "nope"}))
    assert unknown.status_code == 404 and "&#39;nope&#39;" in unknown.text


def test_the_cli_and_the_python_api_rank_mixed_and_feedback_queries_as_the_api_does(
    client, mixed_root: Path, serve_models: Path, joint, capsys
):
    """`imgsearch search --image-id X --text T` / `--relevant` and ``open_index(...)`` give the
    HTTP routes' rankings (they share serving.mixed_search)."""
    import json

    from imgsearch import cli, open_index

    ids = sorted(joint)
    index = open_index(mixed_root, models_dir=serve_models)
    mixed = client.post(
        "/api/search/mixed?k=4", data={"image_id": ids[0], "q": "a dog - grass"}
    ).json()["results"]
    assert [h.image_id for h in index.search_mixed("a dog - grass", image_id=ids[0], k=4)] == [
        r["image_id"] for r in mixed
    ]
    argv = ["search", "--index", str(mixed_root), "--models", str(serve_models), "-k", "4",
            "--json"]  # fmt: skip
    assert cli.main([*argv, "--image-id", ids[0], "--text", "a dog - grass"]) == 0
    assert [h["image_id"] for h in json.loads(capsys.readouterr().out)] == [
        r["image_id"] for r in mixed
    ]
    body = {"q": "a dog", "relevant": ids[1:3], "not_relevant": ids[3:4], "k": 4}
    feedback = client.post("/api/feedback/search", json=body).json()["results"]
    hits = index.search_feedback("a dog", ids[1:3], ids[3:4], k=4)
    assert [h.image_id for h in hits] == [r["image_id"] for r in feedback]
    code = cli.main([*argv, "--text", "a dog", "--relevant", *ids[1:3], "--not-relevant", ids[3]])
    assert code == 0
    assert [h["image_id"] for h in json.loads(capsys.readouterr().out)] == [
        r["image_id"] for r in feedback
    ]
    # Refusals are one line, exit 2, as everywhere in the CLI.
    assert cli.main([*argv, "--image-id", "nope", "--text", "dog"]) == 2
    assert "not in index version" in capsys.readouterr().err
    assert cli.main([*argv, "--text", '"unclosed', "--relevant", ids[1]]) == 2
    assert "unclosed quote at position 0" in capsys.readouterr().err
