"""The word routes over the real app and real GloVe: similar words, analogies, image words.

The served index (``built_versions``, ``serve_models``) has a bag-of-words text encoder and a
dual model with random weights over the fake image encoder, so image words here test the
wiring (the score of a word is the score a one-word query gives the image), not their quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from encoders.glove import locate_glove
from encoders.word_neighbours import exact_search
from serving.app import create_app
from serving.config import ServeConfig
from tests.serving.conftest import publish


@pytest.fixture(scope="module")
def root(tmp_path_factory, built_versions) -> Path:
    try:
        locate_glove("auto")
    except FileNotFoundError as exc:
        pytest.skip(str(exc).splitlines()[0])
    root = tmp_path_factory.mktemp("words-root")
    publish(root, built_versions["v1"], "v1")
    return root


@pytest.fixture(scope="module")
def client(root: Path, serve_models: Path):
    config = ServeConfig(index=str(root), models_dir=str(serve_models), poll_interval_s=0)
    with TestClient(create_app(config)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def imageless(root: Path):
    """The same index served without a joint model (image queries only)."""
    with TestClient(create_app(ServeConfig(index=str(root), poll_interval_s=0))) as test_client:
        yield test_client


def test_similar_words_are_glove_cosine_neighbours(client: TestClient) -> None:
    response = client.get("/api/words", params={"word": " Dog ", "k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["word"] == "dog" and len(body["neighbours"]) == 5
    words = [n["word"] for n in body["neighbours"]]
    assert "dog" not in words and {"cat", "dogs"} <= set(words)
    # The server's ScaNN brute-force search against the exact NumPy oracle on the same matrix.
    neighbours = client.app.state.words.neighbours()
    unit = neighbours.space.unit
    rows, scores = exact_search(unit)(unit[[neighbours.row("dog")]], 6)
    assert words == [neighbours.words[r] for r in rows[0][1:]]
    np.testing.assert_allclose([n["score"] for n in body["neighbours"]], scores[0][1:], atol=1e-5)
    default = client.get("/api/words", params={"word": "dog"}).json()
    assert len(default["neighbours"]) == 10


def test_analogy_athens_greece_oslo_is_norway(client: TestClient) -> None:
    response = client.get("/api/words/analogy", params={"a": "athens", "b": "greece", "c": "oslo"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["a"], body["b"], body["c"]) == ("athens", "greece", "oslo")
    assert body["neighbours"][0]["word"] == "norway" and len(body["neighbours"]) == 10
    assert not {"athens", "greece", "oslo"} & {n["word"] for n in body["neighbours"]}


@pytest.mark.parametrize(
    "path, params, word, hint",
    [
        ("/api/words", {"word": "elephnat"}, "elephnat", "elephant"),
        ("/api/words/analogy", {"a": "athens", "b": "greecce", "c": "oslo"}, "greecce", "greece"),
    ],
)
def test_an_unknown_word_is_a_404_with_spelling_hints(client, path, params, word, hint) -> None:
    response = client.get(path, params=params)
    assert response.status_code == 404, response.text
    detail = response.json()["detail"]
    assert detail["word"] == word and detail["hints"][0] == hint
    assert word in detail["message"] and hint in detail["message"]


@pytest.mark.parametrize(
    "path, params",
    [
        ("/api/words", {"word": "dog", "k": 0}),
        ("/api/words", {"word": "dog", "k": 101}),
        ("/api/words", {"word": "dog", "k": "ten"}),
        ("/api/words", {"word": ""}),
        ("/api/words", {"word": "   "}),
        ("/api/words", {"word": "x" * 101}),
        ("/api/words", {}),
        ("/api/words/analogy", {"a": "athens", "b": "greece"}),
        ("/api/words/analogy", {"a": "athens", "b": " ", "c": "oslo"}),
        ("/api/images/anything/words", {"k": 0}),
    ],
)
def test_bad_parameters_are_422(client: TestClient, path: str, params: dict) -> None:
    response = client.get(path, params=params)
    assert response.status_code == 422, response.text


def test_image_words_score_like_one_word_queries(client: TestClient, root: Path) -> None:
    bundle = client.app.state.holder.current
    image_id = bundle.details.image_ids()[0]
    response = client.get(f"/api/images/{image_id}/words", params={"k": 6})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image_id"] == image_id and body["version"] == "v1"
    assert body["model"].startswith("dual-serve-test/")
    words = [n["word"] for n in body["neighbours"]]
    scores = [n["score"] for n in body["neighbours"]]
    assert len(words) == 6 and scores == sorted(scores, reverse=True)
    # Each score is the cosine a one-word text query gets with the image's joint vector.
    table = pq.read_table(root / "versions" / "v1" / "table").to_pydict()
    joint_vector = np.asarray(
        dict(zip(table["image_id"], table["joint_embedding"], strict=True))[image_id], np.float32
    )
    text = bundle.text
    expected = text.joint.embed_text_features(text.text_encoder.encode(words)) @ joint_vector
    np.testing.assert_allclose(scores, expected, atol=1e-3)
    # Drawn from the capped vocabulary: content words the text encoder knows, best overall.
    vocabulary = client.app.state.words.vocabulary()
    assert 0 < body["vocabulary"] == len(vocabulary) <= 20_000
    assert set(words) <= set(vocabulary.words)
    all_scores = vocabulary.unit @ (joint_vector / np.linalg.norm(joint_vector))
    assert scores[0] == pytest.approx(float(all_scores.max()), abs=1e-3)


def test_image_words_of_an_unknown_image_are_404(client: TestClient) -> None:
    response = client.get("/api/images/no-such-image/words")
    assert response.status_code == 404
    assert "no-such-image" in response.json()["detail"]


def test_image_words_without_a_joint_model_are_503(imageless: TestClient) -> None:
    image_id = imageless.app.state.holder.current.details.image_ids()[0]
    response = imageless.get(f"/api/images/{image_id}/words")
    assert response.status_code == 503
    assert "--models" in response.json()["detail"]
    # Words themselves need no joint model; the page shows no suggestions (no text search).
    assert imageless.get("/api/words", params={"word": "dog"}).status_code == 200
    assert imageless.get("/api/words/suggestions", params={"q": "dog"}).json()["suggestions"] == []


def test_suggestions_are_known_neighbours_of_the_query_words(client: TestClient) -> None:
    body = client.get("/api/words/suggestions", params={"q": "a dog on the grass"}).json()
    suggestions = body["suggestions"]
    assert body["q"] == "a dog on the grass" and 2 <= len(suggestions) <= 8
    assert not {"a", "dog", "on", "the", "grass"} & set(suggestions)
    assert len(set(suggestions)) == len(suggestions)
    known = set(client.app.state.words.vocabulary().words)
    assert set(suggestions) <= known  # every suggestion is a query that finds images
    assert client.get("/api/words/suggestions", params={"q": "the of"}).json()["suggestions"] == []
    assert client.get("/api/words/suggestions", params={"q": ""}).json()["suggestions"] == []


def test_the_page_links_related_words(client: TestClient) -> None:
    page = client.get("/", params={"q": "dog"})
    assert page.status_code == 200
    suggestions = client.get("/api/words/suggestions", params={"q": "dog"}).json()["suggestions"]
    assert suggestions
    for word in suggestions:
        assert f'<a class="word" href="/?q={word}">{word}</a>' in page.text
    assert '<nav id="words" aria-label="related words" hidden>' in client.get("/").text


def test_words_can_be_switched_off(root: Path, serve_models: Path) -> None:
    config = ServeConfig(index=str(root), models_dir=str(serve_models), poll_interval_s=0,
                         glove="none")  # fmt: skip
    with TestClient(create_app(config)) as off:
        response = off.get("/api/words", params={"word": "dog"})
        assert response.status_code == 503 and "none" in response.json()["detail"]
        image_id = off.app.state.holder.current.details.image_ids()[0]
        assert off.get(f"/api/images/{image_id}/words").status_code == 503
        page = off.get("/", params={"q": "dog"})
        assert page.status_code == 200 and 'class="word"' not in page.text
    with pytest.raises(FileNotFoundError, match="GloVe"):
        create_app(ServeConfig(index=str(root), glove=str(root / "no-glove.txt")))


def test_the_schema_documents_the_word_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/words", "/api/words/analogy", "/api/images/{image_id}/words"):
        operation = paths[path]["get"]
        assert operation["tags"] == ["words"] and operation["summary"]
        assert {"200", "404", "422", "503"} <= set(operation["responses"])
    k = next(p for p in paths["/api/words"]["get"]["parameters"] if p["name"] == "k")
    assert k["schema"]["maximum"] == 100 and k["schema"]["minimum"] == 1


def test_the_words_command(root: Path, serve_models: Path, capsys) -> None:
    from encoders.word_neighbours import UnknownWordError
    from serving.words_cli import main

    assert main(["--analogy", "Athens", "greece", "oslo", "-k", "3", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["a"] == "athens" and answer["neighbours"][0]["word"] == "norway"
    assert main(["--word", "dog", "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "words nearest to 'dog':" and len(lines) == 3 and "cat" in lines[1]
    with pytest.raises(UnknownWordError, match="did you mean elephant"):
        main(["--word", "elephnat"])
    image_id = "no-such-image"
    with pytest.raises(KeyError, match="no-such-image"):
        main(["--image-id", image_id, "--index", str(root), "--models", str(serve_models)])
    with pytest.raises(SystemExit):
        main(["--image-id", image_id])  # needs --index and --models


def test_the_words_command_on_an_image(
    client: TestClient, root: Path, serve_models, capsys
) -> None:
    from serving.words_cli import main

    image_id = client.app.state.holder.current.details.image_ids()[1]
    served = client.get(f"/api/images/{image_id}/words", params={"k": 4}).json()
    argv = ["--image-id", image_id, "--index", str(root), "--models", str(serve_models)]
    assert main([*argv, "-k", "4", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert [n["word"] for n in answer["neighbours"]] == [n["word"] for n in served["neighbours"]]
