"""Describing a photo that is not indexed: ``POST /api/describe`` and ``imgsearch describe``.

Real MobileNetV2 and ImageNet tag head; a tiny untrained captioner for MobileNetV2 maps (the
wiring is tested, not caption quality). A photo described gets what the real index job wrote
for it: the same caption and tags.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from encoders.base import EncoderSpec
from encoders.imaging import decode_image
from imgsearch import cli
from index.manifest import read_manifest
from index.table import parquet_files
from pipelines import index_job
from serving.app import create_app
from serving.config import ServeConfig
from serving.describe import Describer
from serving.query_error import QueryError
from serving.state import QueryModels
from tests.tiny_captioner import save_tiny_captioner

PHOTOS = ("1001773457_577c3a7d70.jpg", "1002674143_1b742ab4b8.jpg", "1007129816_e794419615.jpg")


@pytest.fixture(scope="module")
def models(tmp_path_factory, mobilenet_weights: Path) -> Path:
    models = tmp_path_factory.mktemp("describe") / "models"
    save_tiny_captioner(models, mobilenet_weights)
    return models


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, assets_dir: Path, models: Path, mobilenet_weights: Path) -> Path:
    """The three photos through the real index job with the captioner and the tag head."""
    corpus = tmp_path_factory.mktemp("describe-photos")
    for name in PHOTOS:
        shutil.copy(assets_dir / "datasets" / "flickr8k" / "images" / name, corpus / name)
    out = corpus.parent / "describe-index"
    index_job.run(
        ["--corpus", str(corpus), "--out", str(out), "--weights", str(mobilenet_weights),
         "--models", str(models), "--captioner", "captioner", "--tag_head", "auto",
         "--run_version", "d1"]
    )  # fmt: skip
    return out


def _rows(indexed: Path) -> dict[str, dict]:
    table = pq.ParquetDataset(parquet_files(str(indexed / "table"))).read()
    return {Path(row["uri"]).name: row for row in table.to_pylist()}


def _spec(indexed: Path) -> EncoderSpec:
    return EncoderSpec.from_json(read_manifest(str(indexed)).encoder_spec)


def test_a_described_photo_gets_the_caption_and_tags_its_indexed_row_holds(indexed, models):
    from encoders.registry import create_image_encoder

    spec = _spec(indexed)
    encoder = create_image_encoder(spec)
    describer = Describer(encoder, spec, str(models))
    for name, row in _rows(indexed).items():
        pixels, _, _ = decode_image(Path(row["uri"]).read_bytes(), size=encoder.input_size)
        found = describer.describe(pixels)
        assert found["captions"][0]["text"] == row["caption"], name
        assert found["captions"][0]["score"] == pytest.approx(row["caption_score"], abs=1e-4)
        assert len({c["text"] for c in found["captions"]}) == len(found["captions"]) <= 3
        assert [t["label"] for t in found["tags"]] == [t["label"] for t in row["tags"]]
        np.testing.assert_allclose(
            [t["score"] for t in found["tags"]], [t["score"] for t in row["tags"]], atol=1e-4
        )
        assert found["captioner"] == row["caption_model"] and found["missing"] == {}


def test_the_api_describes_uploads_and_refuses_bad_ones(indexed, models):
    config = ServeConfig(index=str(indexed), models_dir=str(models))
    photo = Path(_rows(indexed)[PHOTOS[0]]["uri"]).read_bytes()
    with TestClient(create_app(config, QueryModels())) as client:
        answer = client.post("/api/describe", content=photo,
                             headers={"Content-Type": "image/jpeg"})  # fmt: skip
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["captions"][0]["text"] == _rows(indexed)[PHOTOS[0]]["caption"]
        assert len(body["tags"]) == 5 and body["image"]["bytes"] == len(photo)
        form = client.post("/api/describe", files={"file": ("p.jpg", photo, "image/jpeg")})
        assert form.status_code == 200 and form.json()["captions"] == body["captions"]
        garbage = client.post("/api/describe", content=b"not an image at all",
                              headers={"Content-Type": "image/jpeg"})  # fmt: skip
        assert garbage.status_code == 422 and "image rejected" in garbage.json()["detail"]
        empty = client.post("/api/describe", content=b"", headers={"Content-Type": "image/jpeg"})
        assert 400 <= empty.status_code < 500
        wrong_type = client.post("/api/describe", content=photo,
                                 headers={"Content-Type": "text/plain"})  # fmt: skip
        assert wrong_type.status_code == 415


def test_without_a_captioner_it_tags_and_says_why_there_are_no_captions(indexed, tmp_path):
    config = ServeConfig(index=str(indexed))  # no models directory
    photo = Path(_rows(indexed)[PHOTOS[1]]["uri"]).read_bytes()
    with TestClient(create_app(config, QueryModels())) as client:
        body = client.post("/api/describe", content=photo,
                           headers={"Content-Type": "image/jpeg"}).json()  # fmt: skip
    assert body["captions"] == [] and len(body["tags"]) == 5
    assert "no models directory" in body["missing"]["captions"]
    # Neither a captioner for this encoder nor a head: refused, both reasons given.
    from encoders.registry import create_image_encoder

    spec = _spec(indexed)
    with pytest.raises(QueryError, match=r"no models directory.*no tag head") as refused:
        Describer(create_image_encoder(spec), spec, None, tag_head=None)
    assert refused.value.status == 400


def test_the_cli_describes_a_photo(indexed, models, capsys):
    photo = _rows(indexed)[PHOTOS[2]]
    code = cli.main(["describe", "--image", photo["uri"], "--models", str(models),
                     "--index", str(indexed), "--json"])  # fmt: skip
    assert code == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["captions"][0]["text"] == photo["caption"]
    assert [t["label"] for t in answer["tags"]] == [t["label"] for t in photo["tags"]]
    code = cli.main(["describe", "--image", photo["uri"], "--index", str(indexed)])
    printed = capsys.readouterr().out
    assert code == 0 and "tags: " in printed and "no captions: " in printed


def test_the_search_page_describes_an_upload_with_and_without_javascript(indexed, models, browser):
    from serving.server import BackgroundServer
    from tests.serving.conftest import wait_until

    row = _rows(indexed)[PHOTOS[0]]
    config = ServeConfig(index=str(indexed), models_dir=str(models))
    app = create_app(config, QueryModels())
    # Without JavaScript: the form posts to /upload with the Describe button's action.
    with TestClient(app) as client:
        html = client.post(
            "/upload",
            data={"action": "describe"},
            files={"file": ("p.jpg", Path(row["uri"]).read_bytes(), "image/jpeg")},
        )
        assert html.status_code == 200
        assert f"<li>{row['caption']} " in html.text and "What your upload shows" in html.text
    with BackgroundServer(create_app(config, QueryModels())) as running:
        page = browser.new_page()
        page.goto(running.url + "/")
        page.set_input_files("#file", row["uri"])
        page.click("#describe-button")
        wait_until(page, "document.querySelectorAll('#description li').length > 0")
        first = page.inner_text("#description li")
        assert first.startswith(row["caption"]), first
        assert row["tags"][0]["label"] in page.inner_text("#description .tags")
        assert page.inner_text("#title") == "What your upload shows"
        assert page.url == running.url + "/"  # in place, no page load
        page.close()
