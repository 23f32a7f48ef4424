"""Issue 24: image ids holding "/" or other reserved characters (a manifest's own ids) gave dead
links. A served copy of v2 with such ids: every link of every result leads to that image."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.config import ServeConfig
from tests.serving.conftest import publish, rewrite_column

ODD = ("photos/2020/a b", "q?x=1&y=2", "hash#frag", "50%/off", "dir/", "/lead", "ünï/cödé", "x/y/z")


@pytest.fixture(scope="module")
def client(tmp_path_factory, built_versions, serve_models: Path):
    root = tmp_path_factory.mktemp("odd-ids-root")
    target = publish(root, built_versions["v2"], "v2")
    new: dict[str, str] = {}

    def odd(image_id: str) -> str:  # one new id per image, whichever file holds it
        if image_id not in new:
            new[image_id] = ODD[len(new) % len(ODD)] + f"-{len(new)}"
        return new[image_id]

    rewrite_column(target, "image_id", odd)
    config = ServeConfig(index=str(root), models_dir=str(serve_models), poll_interval_s=0,
                         verify=False)  # fmt: skip
    with TestClient(create_app(config)) as test_client:
        yield test_client


def test_every_link_of_every_result_reaches_its_image(client: TestClient) -> None:
    results = client.get("/api/search", params={"q": "a photo", "k": 8}).json()["results"]
    assert len(results) == 8 and any("/" in r["image_id"] for r in results)
    for result in results:
        image_id, links = result["image_id"], result["links"]
        details = client.get(links["details"])
        assert details.status_code == 200, (image_id, links["details"], details.text)
        assert details.json()["image_id"] == image_id
        thumbnail = client.get(links["thumbnail"])
        assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
        similar = client.get(links["similar"]).json()
        assert similar["query"]["similar_to"] == image_id, similar
        assert image_id not in {r["image_id"] for r in similar["results"]}
        page = client.get(links["page"])
        assert page.status_code == 200 and "More like this" in page.text
        # Routed to the image (a 404 would be "no such route" or "no such image"); the fake
        # encoder has no feature map to explain with and the server no GloVe words: 503s.
        words = client.get(links["details"] + "/words")
        assert words.status_code != 404, (image_id, words.text)
        explain = client.get(links["details"].replace("/api/images/", "/api/explain/"),
                             params={"q": "a photo"})  # fmt: skip
        assert explain.status_code != 404, (image_id, explain.text)
