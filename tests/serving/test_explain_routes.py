"""``GET /api/explain/{image_id}`` and ``imgsearch explain`` on a real index: the real
MobileNetV2 over real photos, a small dual joint model with random weights over its real
dimensions (the wiring and the gradient are under test, not a trained model's quality)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from encoders import saliency
from encoders.base import EncoderSpec, l2_normalize
from encoders.imaging import decode_image
from encoders.joint import KIND_DUAL, DenseLayer, JointModel
from encoders.keras_image import KerasImageEncoder
from encoders.text_registry import create_text_encoder, fit_text_encoder
from index.manifest import manifest_location, read_manifest
from pipelines import index_job
from serving import explain_cli
from serving.app import create_app
from serving.config import ServeConfig
from serving.explain_routes import MAX_CONCURRENT, display_size, pooled_and_map
from serving.state import QueryModels
from tests.index_args import fake_index_args

tf = pytest.importorskip("tensorflow")

DOG = "1015584366_dfcec3c85a.jpg"  # Flickr8k: "A black dog leaps over a log."
GREY = 128


def _layer(rng, inputs: int, units: int, activation: str = "linear") -> DenseLayer:
    kernel = rng.standard_normal((inputs, units)).astype(np.float32) / np.sqrt(inputs)
    return DenseLayer(kernel, rng.standard_normal(units).astype(np.float32) * 0.1, activation)


@pytest.fixture(scope="module")
def real_index(tmp_path_factory, assets_dir: Path, coco_photos, mobilenet_weights) -> Path:
    """Three COCO photos, a Flickr8k dog, and that dog pasted into the left half of a grey
    square ("dog-left"), indexed by the real index job with the real MobileNetV2."""
    work = tmp_path_factory.mktemp("explain")
    dog = assets_dir / "datasets" / "flickr8k" / "images" / DOG
    if not dog.is_file():
        pytest.skip(f"missing {dog}")
    canvas = Image.new("RGB", (448, 448), (GREY, GREY, GREY))
    canvas.paste(Image.open(dog).convert("RGB").resize((224, 224)), (0, 112))
    canvas.save(work / "dog-left.png")
    rows = [(str(p), f"coco{i}") for i, p in enumerate(coco_photos[:3])]
    rows += [(str(dog), "dog"), (str(work / "dog-left.png"), "dog-left")]
    with (work / "corpus.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([("uri", "id"), *rows])
    out = work / "index"
    index_job.run(["--corpus", str(work / "corpus.csv"), "--out", str(out),
                   "--weights", str(mobilenet_weights)])  # fmt: skip
    return out


@pytest.fixture(scope="module")
def joint_models(real_index: Path, flickr_caption_rows, tmp_path_factory) -> QueryModels:
    """A tiny dual model (bag-of-words text, ReLU image tower) over the index's encoder."""
    encoder_id = read_manifest(manifest_location(str(real_index))[1]).encoder_id
    captions = [caption for _, caption in flickr_caption_rows]
    spec = fit_text_encoder("bow", captions, tmp_path_factory.mktemp("bow"), min_count=2)
    text = create_text_encoder(spec)
    rng = np.random.default_rng(7)
    joint = JointModel(
        KIND_DUAL, text.encoder_id, encoder_id, text.dim, 1280,
        text_layers=(_layer(rng, text.dim, 32),),
        image_layers=(_layer(rng, 1280, 64, "relu"), _layer(rng, 64, 32)),
    )  # fmt: skip
    return QueryModels(joint, text, ("tiny-dual", "1"))


@pytest.fixture(scope="module")
def client(real_index: Path, joint_models: QueryModels):
    with TestClient(create_app(ServeConfig(index=str(real_index)), joint_models)) as c:
        yield c


def _png(response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG" and image.mode == "RGB"
    return image


def test_similar_to_heatmap_peaks_on_the_side_the_dog_is(client) -> None:
    """The issue's test: the query's object (the dog itself) is in the left half."""
    response = client.get("/api/explain/dog-left?similar_to=dog")
    image = _png(response)
    assert image.size == (448, 448)  # the photo's size (its longer side is under 512)
    x, y = (int(v) for v in response.headers["X-Explain-Peak"].split(","))
    assert x < 224 and 112 <= y < 336
    assert 0.3 < float(response.headers["X-Explain-Score"]) < 1.0
    pixels = np.asarray(image)
    assert np.abs(pixels[300:, 300:].astype(int) - GREY).max() <= 8  # no heat on the grey
    # The negative map is drawn from the same pass: it peaks elsewhere than the dog.
    negative = client.get("/api/explain/dog-left?similar_to=dog&map=negative")
    assert int(_png(negative).size[0]) == 448
    assert negative.headers["X-Explain-Peak"] != response.headers["X-Explain-Peak"]


def test_text_heatmap_is_a_png_of_the_photo_and_scores_like_the_index(
    client, real_index: Path, joint_models: QueryModels, coco_photos
) -> None:
    response = client.get("/api/explain/coco0", params={"q": "a dog running on the grass"})
    image = _png(response)
    details = client.get("/api/images/coco0").json()
    assert image.size[::-1] == display_size(details["width"], details["height"])
    # The score recomputed from the photo is the one the index's vector gives the query.
    bundle = client.app.state.holder.current
    query = l2_normalize(bundle.text.embed_queries(["a dog running on the grass"]))[0]
    indexed = bundle.text.joint.embed_image_features(
        bundle.images.vectors[bundle.searcher_row("coco0")][None]
    )[0]
    assert float(response.headers["X-Explain-Score"]) == pytest.approx(
        float(query @ indexed), abs=1e-4
    )


def test_analytic_gradient_equals_gradient_tape_on_a_real_photo(
    client, joint_models: QueryModels, coco_photos
) -> None:
    """d score / d spatial map through the real MobileNetV2 map and a ReLU tower."""
    encoder = client.app.state.holder.current.images.image_encoder()
    pixels, _, _ = decode_image(coco_photos[0].read_bytes(), size=encoder.input_size)
    _, pooled, spatial = encoder.encode_with_features(pixels[None])
    joint = joint_models.joint
    target = l2_normalize(joint.embed_text_features(joint_models.text_encoder.encode(["a dog"])))
    # The encoder's pooled features are the map's mean (float32 rounding apart).
    np.testing.assert_allclose(pooled[0], spatial[0].mean(axis=(0, 1)), atol=1e-5)
    mean = spatial[0].astype(np.float64).mean(axis=(0, 1))
    score, gradient = saliency.score_gradient(mean, target[0], joint.image_layers)
    s = tf.constant(spatial, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(s)
        x = tf.math.l2_normalize(tf.reduce_mean(s, axis=(1, 2)), axis=-1)
        for layer in joint.image_layers:
            x = x @ layer.kernel.astype(np.float64) + layer.bias.astype(np.float64)
            x = tf.nn.relu(x) if layer.activation == "relu" else x
        tape_score = tf.reduce_sum(tf.math.l2_normalize(x, axis=-1) * target[0])
    tape_weights = tape.gradient(tape_score, s).numpy()[0].mean(axis=(0, 1))
    assert score == pytest.approx(float(tape_score), abs=1e-9)
    weights = saliency.cam_weights(gradient, spatial.shape[1:3])
    np.testing.assert_allclose(weights, tape_weights, rtol=1e-7, atol=1e-12)


def test_a_mirror_averaging_encoder_explains_both_passes(coco_photos, mobilenet_weights) -> None:
    encoder = KerasImageEncoder(EncoderSpec("mobilenet_v2_flip", str(mobilenet_weights)))
    pixels, _, _ = decode_image(coco_photos[1].read_bytes(), size=encoder.input_size)
    pooled, spatial = pooled_and_map(encoder.encode_with_features, pixels)
    _, own_pooled, own = encoder.encode_with_features(pixels[None])
    np.testing.assert_allclose(pooled, own_pooled[0], atol=1e-6)
    np.testing.assert_allclose(spatial.mean(axis=(0, 1)), own_pooled[0], atol=1e-5)
    assert not np.allclose(spatial, own[0], atol=1e-3)  # the mirrored pass is in it


def test_refusals(client, real_index: Path) -> None:
    assert client.get("/api/explain/nope?similar_to=dog").status_code == 404
    assert client.get("/api/explain/dog?similar_to=nope").status_code == 404
    assert client.get("/api/explain/dog").status_code == 400
    both = client.get("/api/explain/dog?similar_to=coco0&q=dog")
    assert both.status_code == 400 and "exactly one" in both.json()["detail"]
    assert client.get("/api/explain/dog?q=zzqxv").status_code == 400  # no known word
    assert client.get("/api/explain/dog?similar_to=coco0&map=sideways").status_code == 422
    # Text without a joint model: 503 (similar_to still works).
    with TestClient(create_app(ServeConfig(index=str(real_index)), QueryModels())) as bare:
        assert bare.get("/api/explain/dog?q=a dog").status_code == 503
        assert bare.get("/api/explain/dog?similar_to=coco0").status_code == 200


def test_busy_answers_429_with_retry_after(client) -> None:
    slots = client.app.state.explain_slots
    for _ in range(MAX_CONCURRENT):
        assert slots.acquire(blocking=False)
    try:
        busy = client.get("/api/explain/dog?similar_to=coco0")
        assert busy.status_code == 429 and busy.headers["Retry-After"] == "1"
    finally:
        for _ in range(MAX_CONCURRENT):
            slots.release()
    assert client.get("/api/explain/dog?similar_to=coco0").status_code == 200


def test_an_encoder_without_a_spatial_map_answers_503(tmp_path: Path, coco_photos) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"uri": str(p)}) + "\n" for p in coco_photos[:2]))
    index_job.run(fake_index_args(corpus, tmp_path / "fake", "v1"))
    with TestClient(create_app(ServeConfig(index=str(tmp_path / "fake")), QueryModels())) as c:
        image_id = c.app.state.holder.current.details.image_ids()[0]
        refused = c.get(f"/api/explain/{image_id}?similar_to={image_id}")
        assert refused.status_code == 503 and "spatial" in refused.json()["detail"]


def test_search_page_links_each_result_to_its_explanation(client) -> None:
    page = client.get("/", params={"q": "a dog"}).text
    assert 'class="why" href="/api/explain/dog?q=a%20dog"' in page
    similar = client.get("/", params={"similar": "dog"}).text
    assert 'href="/api/explain/dog-left?similar_to=dog"' in similar


def test_cli_writes_the_png(real_index: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "heat.png"
    args = ["--similar-to", "dog", "--out", str(out), "--max-side", "224"]
    code = explain_cli.main(["--index", str(real_index), "--image-id", "dog-left", *args])
    assert code == 0
    answer = json.loads(capsys.readouterr().out)
    assert Image.open(out).size == (224, 224)
    assert answer["peak"]["x"] < 224  # in the photo's own 448 px
    with pytest.raises(SystemExit):
        explain_cli.main(["--index", str(real_index), "--image-id", "dog", "--text", "a dog"])
