"""`imgsearch eval` end to end on real Flickr8k dev photos with a joint model trained in-test.

One evaluation run (module fixture) is shared by the assertions: 36 photos, 180 captions, real
MobileNetV2 features through the real index job, real ScaNN, a tfidf joint model of each kind.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from evaluation import eval_job
from evaluation.submission import score_submission
from imgsearch import cli
from training import train_joint_job
from training.captions import load_captioned_dataset

NUM_IMAGES = 36


def make_captioned_folder(flickr: Path, out: Path, count: int) -> Path:
    """The first ``count`` dev photos (symlinked, never copied) and all their captions."""
    names = (flickr / "splits" / "dev.txt").read_text().split()[:count]
    (out / "images").mkdir(parents=True)
    for name in names:
        os.symlink(flickr / "images" / name, out / "images" / name)
    keep = set(names)
    lines = (flickr / "captions.tsv").read_text(encoding="utf-8").splitlines()
    rows = [lines[0], *(line for line in lines[1:] if line.split("\t", 1)[0] in keep)]
    (out / "captions.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def flickr(assets_dir: Path) -> Path:
    root = assets_dir / "datasets" / "flickr8k"
    if not (root / "splits" / "dev.txt").is_file():
        pytest.skip("Flickr8k missing from the assets folder")
    return root


@pytest.fixture(scope="module")
def dataset_dir(flickr: Path, tmp_path_factory) -> Path:
    return make_captioned_folder(flickr, tmp_path_factory.mktemp("eval") / "ds", NUM_IMAGES)


@pytest.fixture(scope="module")
def models(dataset_dir: Path, tmp_path_factory, mobilenet_weights) -> Path:
    models = tmp_path_factory.mktemp("models")
    config, beam_args = train_joint_job.parse_args(
        ["--dataset", str(dataset_dir), "--split", "", "--out", str(models),
         "--text-encoder", "tfidf", "--epochs", "40", "--batch-size", "64", "--seed", "1",
         "--weights", str(mobilenet_weights), "--encoder", "mobilenet_v2", "--finetune-blocks", "0",
         "--ensemble", "1", "--no-mixed"]
    )  # fmt: skip
    train_joint_job.run(config, beam_args)
    return models


@pytest.fixture(scope="module")
def evaluated(dataset_dir: Path, models: Path, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("eval-out")
    code = cli.main(
        ["eval", "--dataset", str(dataset_dir), "--out", str(out), "--models", str(models),
         "--latency-queries", "30"]
    )  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    return out, metrics


def test_metrics_json_schema_and_figures(evaluated):
    out, metrics = evaluated
    assert metrics["schema_version"] == eval_job.SCHEMA_VERSION
    assert metrics["images"] == NUM_IMAGES and metrics["queries"] == 5 * NUM_IMAGES
    # The joint models, tags from the ImageNet head (mobilenet_v2 index), and their fusion.
    assert set(metrics["methods"]) == {"dual-tfidf", "w2vv-tfidf", "tags-glove", "fused-rrf"}
    assert metrics["primary_method"] == "dual-tfidf"
    assert metrics["methods"]["fused-rrf"]["description"]["parts"] == ["dual-tfidf", "tags-glove"]
    tags = metrics["methods"]["tags-glove"]["text_to_image"]
    assert tags["R@10"] > 10 / NUM_IMAGES, tags  # tags alone: weak, but better than chance
    for name, figures in metrics["methods"].items():
        if figures["family"] != "joint":
            continue
        t2i, i2t = figures["text_to_image"], figures["image_to_text"]
        assert set(t2i) >= {"R@1", "R@5", "R@10", "MRR", "median_rank", "mean_rank", "queries"}
        assert t2i["queries"] == 5 * NUM_IMAGES and i2t["queries"] == NUM_IMAGES
        assert 0 <= t2i["R@1"] <= t2i["R@5"] <= t2i["R@10"] <= 1
        assert i2t["R@1"] <= i2t["R@5"] <= i2t["R@10"]
        # Trained on these very captions: far above chance (10 / 36 = 0.28 for R@10).
        assert t2i["R@10"] > 0.5, (name, t2i)
        assert figures["description"]["model"] == name
        # Ranked with the hubness correction of the bank saved with it: every training caption
        # (fewer than the bank's 1,024) and photo.
        bank = figures["description"]["query_bank"]
        assert (bank["texts"], bank["images"]) == (5 * NUM_IMAGES, NUM_IMAGES), bank
        assert figures["description"]["image_encoder_id"] == metrics["index"]["encoder_id"]
    assert metrics["index"]["joint_model"].startswith("dual-tfidf/")
    assert (out / "index" / "manifest.json").is_file()  # the real index job's output


def test_ann_against_exact_on_the_same_vectors(evaluated):
    _, metrics = evaluated
    ann = metrics["ann"]["text_to_image"]
    assert {a["index"] for a in ann.values()} == {"scann joint index", "scann image index"}
    for name, figures in ann.items():
        assert 0.0 <= figures["recall@10"] <= 1.0
        for key, delta in figures["delta"].items():
            assert delta == pytest.approx(figures["approximate"][key] - figures["exact"][key])
        # Exact search over the index's vectors reproduces the method's own figures (no
        # duplicate photos here, so table rows and dataset images coincide).
        for key in ("R@1", "R@5", "R@10"):
            exact = metrics["methods"][name]["text_to_image"][key]
            assert figures["exact"][key] == pytest.approx(exact, abs=1 / 180 + 1e-9)
    assert 0.9 <= metrics["ann"]["image_to_image"]["recall@10"] <= 1.0
    for latency in metrics["latency_ms"].values():
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
        assert latency["queries"] == 30


def test_submission_file_scores_like_the_metrics(evaluated, dataset_dir: Path, capsys):
    out, metrics = evaluated
    with (out / "submission.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["query_id", "query", "image_ids"]
    assert len(rows) == 1 + 5 * NUM_IMAGES
    assert all(len(row[2].split()) == 20 for row in rows[1:])
    dataset = load_captioned_dataset(dataset_dir)
    score = score_submission(out / "submission.csv", dataset)
    primary = metrics["methods"][metrics["primary_method"]]["text_to_image"]
    for key in ("R@1", "R@5", "R@10"):
        assert score[key] == pytest.approx(primary[key], abs=2 / 180)
    assert metrics["submission"]["score"] == score
    assert "| dual-tfidf |" in (out / "summary.md").read_text()

    capsys.readouterr()
    code = cli.main(
        ["eval", "score", "--submission", str(out / "submission.csv"),
         "--dataset", str(dataset_dir)]
    )  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out)["R@1"] == score["R@1"]


def test_a_wrong_submission_names_its_lines(evaluated, dataset_dir: Path, tmp_path, capsys):
    out, _ = evaluated
    lines = (out / "submission.csv").read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",not-an-image.jpg"
    del lines[5]
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    capsys.readouterr()
    code = cli.main(["eval", "score", "--submission", str(bad), "--dataset", str(dataset_dir)])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown image id" in err and "line 4" in err and "not-an-image.jpg" in err


def test_malformed_dataset_exits_non_zero_naming_the_lines(dataset_dir: Path, tmp_path, capsys):
    broken = tmp_path / "broken"
    (broken / "images").mkdir(parents=True)
    first, second = sorted((dataset_dir / "images").iterdir())[:2]
    os.symlink(first.resolve(), broken / "images" / first.name)
    os.symlink(second.resolve(), broken / "images" / second.name)
    (broken / "captions.tsv").write_text(
        "image\tcaption\n"
        f"{first.name}\tA fine caption .\n"
        f"{second.name}\t   \n"
        "missing.jpg\tA caption for a photo that is not there .\n"
        f"{second.name}\tAnother caption .\n",
        encoding="utf-8",
    )
    capsys.readouterr()
    code = cli.main(["eval", "--dataset", str(broken), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "empty caption: captions.tsv line 3" in err
    assert "missing image file: captions.tsv line 4: no images/missing.jpg" in err
    assert not (tmp_path / "out").exists()  # nothing was indexed


def test_no_models_is_an_explicit_error(dataset_dir: Path, tmp_path, capsys):
    capsys.readouterr()
    code = cli.main(["eval", "--dataset", str(dataset_dir), "--out", str(tmp_path / "out")])
    assert code == 2
    assert "imgsearch train joint" in capsys.readouterr().err
    empty = tmp_path / "models"
    empty.mkdir()
    code = cli.main(
        ["eval", "--dataset", str(dataset_dir), "--out", str(tmp_path / "o"),
         "--models", str(empty)]
    )  # fmt: skip
    assert code == 2
    assert "holds no joint model" in capsys.readouterr().err


def _report_in_chromium(report: Path) -> dict:
    """Open ``report`` via file:// in headless Chromium -> its tables' ids and row counts, the
    decoded width of every image, its text and every URL it requested."""
    playwright = pytest.importorskip("playwright.sync_api")
    chromium = Path("/usr/bin/chromium")
    if not chromium.is_file():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(chromium),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-quic"],
        )  # fmt: skip
        try:
            page = browser.new_page()
            # Offline: any request leaving the page (a CDN, a font) would be a bug.
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.resolve().as_uri())
            page.wait_for_load_state("load")
            tables = page.evaluate(
                "Object.fromEntries(Array.from(document.querySelectorAll('table'))"
                ".map(t => [t.id, t.rows.length]))"
            )
            widths = page.evaluate(
                "Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)"
            )
            text = page.inner_text("body")
        finally:
            browser.close()
    return {"tables": tables, "widths": widths, "text": text, "requests": requests}


def test_report_renders_in_chromium(evaluated):
    """Open the report in headless Chromium: tables there, every image decoded."""
    out, metrics = evaluated
    shown = _report_in_chromium(out / "report.html")
    for table in ("text-to-image", "image-to-text", "ann", "latency", "provenance"):
        assert table in shown["tables"], table
    assert shown["tables"]["text-to-image"] == 1 + len(metrics["methods"])
    assert "captioning" not in shown["tables"]  # no captioner in these models
    widths, text = shown["widths"], shown["text"]
    assert len(widths) >= 2 + 5 * 10  # two plots, 10 example queries x top 5
    assert all(width > 0 for width in widths), widths
    assert "Worst failures" in text
    assert metrics["provenance"]["command"].startswith("imgsearch eval --dataset")
    assert metrics["provenance"]["command"] in text
    assert all(url.startswith(("file://", "data:")) for url in shown["requests"])
    assert np.all([name in text for name in metrics["methods"]])


def test_coco_layout_through_run(assets_dir: Path, models: Path, tmp_path):
    """COCO captions JSON + full-size photos, through ``run`` as the nightly DAG calls it."""
    coco = assets_dir / "datasets" / "coco-mini"
    if not (coco / "annotations" / "captions_val2017.json").is_file():
        pytest.skip("coco-mini captions missing from the assets folder")
    metrics = eval_job.run(
        ["--dataset", str(coco), "--split", "val", "--out", str(tmp_path / "coco"),
         "--models", str(models), "--latency-queries", "5"]
    )  # fmt: skip
    assert metrics["dataset"]["layout"] == "coco"
    assert metrics["images"] == 79 and metrics["queries"] == 395
    assert json.loads((tmp_path / "coco" / "metrics.json").read_text()) == metrics
    # Models fitted on 36 Flickr8k photos: near chance on COCO, but every figure is measured.
    for figures in metrics["methods"].values():
        assert figures["text_to_image"]["queries"] == 395
        assert 0 <= figures["text_to_image"]["R@10"] <= 1


def test_nightly_gate_runs_the_real_eval_job_on_a_version(
    dataset_dir: Path, models: Path, mobilenet_weights, evaluated, tmp_path
):
    """The DAG's eval task (``imgsearch.nightly.evaluate``) runs ``python -m evaluation.eval_job``
    with the version's encoder; its metrics then gate publishing against what serves now."""
    from imgsearch import nightly
    from index.publish import read_pointer, version_dir, write_pointer
    from pipelines import index_job

    root = tmp_path / "root"
    for version in ("v1", "v2"):
        index_job.run(
            ["--corpus", str(dataset_dir / "images"), "--out", version_dir(str(root), version),
             "--weights", str(mobilenet_weights), "--run_version", version]
        )  # fmt: skip
    candidate = nightly.evaluate(
        version_dir(str(root), "v2"), str(dataset_dir), str(models), ["--latency-queries", "5"]
    )
    assert candidate is not None and (root / "versions" / "v2" / "eval" / "report.html").is_file()
    # Same data, models and encoder as the fixture's `imgsearch eval` run: the same figures.
    _, expected = evaluated
    for name, figures in expected["methods"].items():
        assert candidate["methods"][name]["text_to_image"]["R@5"] == pytest.approx(
            figures["text_to_image"]["R@5"], abs=1e-9
        )
    # A published version that scored better by more than the tolerance keeps the pointer.
    better = json.loads(json.dumps(candidate))
    for figures in better["methods"].values():
        figures["text_to_image"]["R@1"] = min(1.0, figures["text_to_image"]["R@1"] + 0.2)
    (root / "versions" / "v1" / "eval").mkdir()
    (root / "versions" / "v1" / "eval" / "metrics.json").write_text(json.dumps(better))
    write_pointer(str(root), "v1")
    with pytest.raises(nightly.GateFailed, match="R@1"):
        nightly.run_gate(str(root), "v2", evaluated=True)
    assert read_pointer(str(root)).version == "v1"
    # Against its own figures it passes.
    (root / "versions" / "v1" / "eval" / "metrics.json").write_text(json.dumps(candidate))
    assert nightly.run_gate(str(root), "v2", evaluated=True).passed


def test_train_fusion_then_eval_has_fused_weighted(dataset_dir: Path, models: Path, tmp_path):
    """Weights fitted by `imgsearch train fusion` show up as `fused-weighted` in eval."""
    import shutil

    from evaluation import train_fusion_job

    own_models = tmp_path / "models"
    shutil.copytree(models, own_models)  # the module's models stay without fusion weights
    code = cli.main(["train", "fusion", "--dataset", str(dataset_dir), "--split", "",
                     "--out", str(own_models), "--work", str(tmp_path / "fit")])  # fmt: skip
    assert code == 0
    fusion = json.loads(next((own_models / "fusion").glob("2*/metadata.json")).read_text())
    assert fusion["cross_fitted"]["folds"] == 2 and 0 <= fusion["cross_fitted"]["R@1"] <= 1
    assert set(fusion["single_methods"]) == {"dual-tfidf", "w2vv-tfidf", "tags-glove"}
    metrics = eval_job.run(["--dataset", str(dataset_dir), "--out", str(tmp_path / "eval"),
                            "--models", str(own_models), "--latency-queries", "5"])  # fmt: skip
    weighted = metrics["methods"]["fused-weighted"]
    assert weighted["description"]["weights"]["dual-tfidf"] == 1.0
    # Fitted on these very queries: never worse than its anchor alone on the objective.
    anchor = metrics["methods"]["dual-tfidf"]["text_to_image"]
    mean = lambda t: (t["R@1"] + t["R@5"] + t["R@10"]) / 3  # noqa: E731
    assert mean(weighted["text_to_image"]) >= mean(anchor) - 1e-9
    assert train_fusion_job.BASE_FAMILIES == ("joint", "caption", "tags")


def test_fused_search_over_the_real_eval_index(evaluated, models: Path):
    """Serving's fused search on the real index (tags column) with the real joint model."""
    from serving.fused_search import FusedSearcher
    from serving.searcher import ImageSearcher

    out, _ = evaluated
    index = str(out / "index")
    fused = FusedSearcher.load(ImageSearcher.load(index), index, models)
    assert fused.methods == ["dual-tfidf", "tags-glove"]  # no captions, no fitted weights: RRF
    hits = fused.search("a dog runs on the grass", k=5)
    assert len(hits) == 5 and hits[0].score >= hits[-1].score
    assert all(set(hit.parts) == {"dual-tfidf", "tags-glove"} and hit.tags for hit in hits)
    assert hits[0].caption is None


def test_eval_with_a_captioner_reports_caption_quality(
    dataset_dir: Path, models: Path, tmp_path: Path, mobilenet_weights: Path
):
    """The module's joint models beside a tiny untrained captioner for MobileNetV2 maps: the
    eval index gets captions, and metrics.json and the report their BLEU/METEOR/CIDEr."""
    import shutil

    from index.table import read_table_columns
    from tests.tiny_captioner import save_tiny_captioner
    from training.captioner import caption_metrics

    with_captioner = tmp_path / "models"
    shutil.copytree(models, with_captioner, symlinks=True)
    save_tiny_captioner(with_captioner, mobilenet_weights)
    out = tmp_path / "eval"
    code = cli.main(
        ["eval", "--dataset", str(dataset_dir), "--out", str(out), "--models",
         str(with_captioner), "--family", "joint", "--family", "caption",
         "--latency-queries", "5"]
    )  # fmt: skip
    assert code == 0
    section = json.loads((out / "metrics.json").read_text())["captioning"]
    assert section["images"] == NUM_IMAGES and section["captioner"].startswith("captioner/")
    for key in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "CIDEr"):
        assert section[key] is not None and section[key] >= 0, (key, section)
    assert "missing" not in section  # Java is installed here (make java)
    # The figures are those of the index's own captions against the human ones.
    dataset = load_captioned_dataset(dataset_dir, None)
    ids = sorted(name for name, _ in dataset.images)
    table = read_table_columns(str(out / "index"), ["caption"], ids)
    generated = dict(zip(ids, table["caption"], strict=True))
    human = {name: [t for n, t in dataset.captions if n == name] for name in dataset.image_names}
    names = dataset.image_names
    expected = caption_metrics([generated[n] for n in names], [human[n] for n in names])
    assert section["CIDEr"] == pytest.approx(expected["CIDEr"], abs=1e-9)
    assert section["BLEU-1"] == pytest.approx(expected["BLEU-1"], abs=1e-9)
    assert len(section["examples"]) == 8 and section["examples"][0]["human"]
    shown = _report_in_chromium(out / "report.html")
    assert shown["tables"]["captioning"] == 2  # the header and the figures
    assert all(width > 0 for width in shown["widths"])  # the gallery's photos decoded
    example = section["examples"][0]
    assert example["generated"] in shown["text"] and example["human"][0] in shown["text"]
