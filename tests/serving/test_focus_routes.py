"""Focused image queries over a real MobileNetV2 index of COCO photos, and their refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pipelines import index_job
from serving.app import create_app
from serving.config import ServeConfig
from serving.focus_search import focused_search
from serving.state import QueryModels


@pytest.fixture(scope="module")
def focus_photos(tmp_path_factory, coco: Path) -> dict[str, list[Path]]:
    """Up to eight COCO val photos: up to three with a cat, three with a dog, two with neither."""
    data = json.loads((coco / "annotations" / "instances_val2017.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    files = {image["id"]: image["file_name"] for image in data["images"]}
    classes: dict[str, set[str]] = {}
    for annotation in data["annotations"]:
        classes.setdefault(files[annotation["image_id"]], set()).add(
            names[annotation["category_id"]]
        )
    present = sorted(f for f in classes if (coco / "val2017" / f).is_file())
    cats = [f for f in present if "cat" in classes[f]][:3]
    dogs = [f for f in present if "dog" in classes[f] and f not in cats][:3]
    rest = [f for f in present if not {"cat", "dog"} & classes[f]][:2]
    if len(cats) < 2 or len(dogs) < 2:
        pytest.skip("coco-mini val2017 lacks cat and dog photos")
    folder = tmp_path_factory.mktemp("focus-photos")
    for name in cats + dogs + rest:
        shutil.copy(coco / "val2017" / name, folder / name)
    return {"cat": [folder / f for f in cats], "dog": [folder / f for f in dogs],
            "all": sorted(folder.iterdir())}  # fmt: skip


@pytest.fixture(scope="module")
def real_index(tmp_path_factory, focus_photos, mobilenet_weights) -> Path:
    out = tmp_path_factory.mktemp("focus-index") / "index"
    corpus = out.parent / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"uri": str(p)}) + "\n" for p in focus_photos["all"]))
    index_job.run(["--corpus", str(corpus), "--out", str(out), "--weights", str(mobilenet_weights),
                   "--run_version", "focus-v1"])  # fmt: skip
    return out


@pytest.fixture(scope="module")
def client(real_index: Path):
    with TestClient(create_app(ServeConfig(index=str(real_index)), QueryModels())) as client:
        yield client


def _id_of(client: TestClient, photo: Path) -> str:
    response = client.post("/api/search/image?k=1", content=photo.read_bytes(),
                           headers={"content-type": "image/jpeg"})  # fmt: skip
    return response.json()["results"][0]["image_id"]


def test_similar_focused_on_a_class(client, focus_photos):
    indexed = len(focus_photos["all"])
    image_id = _id_of(client, focus_photos["cat"][0])
    response = client.get(f"/api/similar/{image_id}?focus=cat&k=7")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["query"] == {"similar_to": image_id, "focus": "cat"}
    hits = answer["results"]
    assert len(hits) == min(7, indexed - 1) and image_id not in {h["image_id"] for h in hits}
    why = hits[0]["why"]
    assert why["match"] == "focused" and why["method"] == "channels+class"
    assert "tabby" in why["focus"]["labels"]
    plain = client.get(f"/api/similar/{image_id}?k=7").json()["results"]
    assert [h["score"] for h in hits] != [h["score"] for h in plain]  # another query vector


def test_upload_focused_and_the_focus_vocabulary(client, focus_photos):
    photo = focus_photos["dog"][0]
    response = client.post("/api/search/image?k=3&focus=dog", content=photo.read_bytes(),
                           headers={"content-type": "image/jpeg"})  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["why"]["focus"]["match"] == "term"
    resolved = client.get("/api/focus?focus=dog").json()
    assert "golden retriever" in resolved["labels"]


def test_refusals(client, focus_photos):
    image_id = _id_of(client, focus_photos["cat"][0])
    unknown = client.get(f"/api/similar/{image_id}?focus=flurbish")
    assert unknown.status_code == 400 and "no classifier label" in unknown.json()["detail"]
    hint = client.get(f"/api/similar/{image_id}?focus=giraffe").json()["detail"]
    assert "nearest labels:" in hint and "zebra" in hint
    assert client.get("/api/similar/no-such-image?focus=cat").status_code == 404
    assert client.get("/api/focus?focus=flurbish").status_code == 400


def test_the_page_upload_form_passes_focus(client, focus_photos):
    photo = focus_photos["cat"][1]
    page = client.post("/upload", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")},
                       data={"focus": "cat"})  # fmt: skip
    assert page.status_code == 200, page.text
    assert "focused on “cat”" in page.text and 'value="cat"' in page.text
    refused = client.post("/upload", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")},
                          data={"focus": "flurbish"})  # fmt: skip
    assert refused.status_code == 400 and "no classifier label" in refused.text


def test_focused_search_for_the_cli(real_index, client, focus_photos):
    image_id = _id_of(client, focus_photos["dog"][0])
    hits = focused_search(str(real_index), image_id=image_id, focus="dog", k=3)
    assert len(hits) == 3 and image_id not in {h.image_id for h in hits}
    by_path = focused_search(str(real_index), image=str(focus_photos["dog"][0]), focus="dog", k=3)
    assert by_path[0].image_id == image_id  # the photo itself first
    with pytest.raises(ValueError, match="nearest labels"):
        focused_search(str(real_index), image_id=image_id, focus="flurbish")
    with pytest.raises(KeyError):
        focused_search(str(real_index), image_id="nope", focus="dog")


def test_an_index_without_a_spatial_map_answers_400(built_versions, serve_photos):
    """The fake encoder (the served-index fixtures) has no feature map and no head."""
    config = ServeConfig(index=str(built_versions["v1"]))
    with TestClient(create_app(config, QueryModels())) as fake:
        first = fake.post("/api/search/image?k=1", content=serve_photos[0].read_bytes(),
                          headers={"content-type": "image/jpeg"}).json()  # fmt: skip
        image_id = first["results"][0]["image_id"]
        refused = fake.get(f"/api/similar/{image_id}?focus=cat")
        assert refused.status_code == 400 and "spatial" in refused.json()["detail"]
        upload = fake.post("/api/search/image?focus=cat", content=serve_photos[0].read_bytes(),
                           headers={"content-type": "image/jpeg"})  # fmt: skip
        assert upload.status_code == 400
        assert fake.get(f"/api/similar/{image_id}").status_code == 200  # plain still works
