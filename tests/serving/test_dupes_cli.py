"""``imgsearch dupes``: text, JSON and the HTML report over a version the index job made."""

from __future__ import annotations

import base64
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.variant_corpus import variant_bytes
from imgsearch import cli
from index.manifest import read_manifest
from index.near_duplicates import NEAR_DUPLICATES_DIR, read_groups
from index.publish import publish_version, version_dir
from pipelines import index_job
from tests.index_args import fake_index_args

THRESHOLD = ("--near_duplicates", "on", "--near_duplicate_threshold", "0.9")


@pytest.fixture(scope="module")
def root(tmp_path_factory, assets_dir) -> Path:
    """A publish root serving v1: three Flickr8k photos and two plain variants of each, plus a
    photo alone (fake encoder: crops and brightness changes stay close, mirrors would not)."""
    images = sorted((assets_dir / "datasets" / "flickr8k" / "images").glob("*.jpg"))[:4]
    if len(images) < 4:
        pytest.skip("Flickr8k photos missing from the assets folder")
    corpus = tmp_path_factory.mktemp("dupes-corpus")
    for photo in images:
        shutil.copy(photo, corpus / photo.name)
    for photo in images[:3]:
        for k in (2, 4):  # even variants are not mirrored
            (corpus / f"{photo.stem}-v{k}.jpg").write_bytes(variant_bytes(photo, k))
    base = tmp_path_factory.mktemp("dupes-root")
    index_job.run(fake_index_args(corpus, version_dir(str(base), "v1"), "v1", *THRESHOLD))
    publish_version(str(base), "v1")
    return base


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["dupes", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_text_lists_the_groups_representative_first(root, capsys):
    code, out, _ = _run(capsys, "--index", str(root))
    assert code == 0
    manifest = read_manifest(version_dir(str(root), "v1"))
    groups = manifest.counts["near_duplicate_groups"]
    assert groups >= 2
    assert out.splitlines()[0].startswith(
        f"index version v1: {manifest.counts['near_duplicate_images']} of 10 images in "
        f"{groups} near-duplicate groups (cosine >= 0.900)"
    )
    blocks = out.split("\ngroup ")[1:]
    assert len(blocks) == groups
    for block in blocks:
        members = [line for line in block.splitlines()[1:] if line.strip()]
        assert members[0].endswith("(representative)") and members[0].split()[0] == "1.0000"
        assert all("(representative)" not in line for line in members[1:])


def test_json_matches_the_written_groups(root, capsys):
    code, out, _ = _run(capsys, "--index", str(version_dir(str(root), "v1")), "--json")
    assert code == 0
    report = json.loads(out)
    folder = version_dir(str(root), "v1")
    groups = read_groups(folder, read_manifest(folder))
    assert report["version"] == "v1" and report["threshold"] == 0.9
    assert report["images_grouped"] == len(groups)
    assert report["singletons"] == 10 - len(groups)
    listed = {m["image_id"]: g["group"] for g in report["groups"] for m in g["members"]}
    assert listed == groups
    sizes = [len(g["members"]) for g in report["groups"]]
    assert sizes == sorted(sizes, reverse=True)
    for group in report["groups"]:
        assert group["members"][0]["image_id"] == group["representative"] == group["group"]
        assert all(0.9 <= m["score"] <= 1.0 + 1e-6 for m in group["members"])
        assert all(Path(m["uri"]).is_file() for m in group["members"])

    code, out, _ = _run(capsys, "--index", str(root), "--json", "--limit", "1")
    assert len(json.loads(out)["groups"]) == 1


class _Report(HTMLParser):
    """The sections, figures and inline images of the report."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[list[dict]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append([])
        elif tag == "figure":
            self.sections[-1].append({"class": attrs["class"], "id": attrs["data-image-id"]})
        elif tag == "img":
            self.sections[-1][-1]["src"] = attrs["src"]


def test_html_report_embeds_a_thumbnail_of_every_member(root, capsys, tmp_path):
    page = tmp_path / "report.html"
    code, out, _ = _run(capsys, "--index", str(root), "--html", str(page), "--thumb-size", "64")
    assert code == 0 and f"wrote {page}" in out
    parser = _Report()
    parser.feed(page.read_text("utf-8"))
    parser.close()
    folder = version_dir(str(root), "v1")
    groups = read_groups(folder, read_manifest(folder))
    assert len(parser.sections) == len(set(groups.values()))
    assert sorted(f["id"] for s in parser.sections for f in s) == sorted(groups)
    for section in parser.sections:
        assert section[0]["class"] == "representative"
        assert all(f["class"] == "member" for f in section[1:])
        for figure in section:
            prefix = "data:image/jpeg;base64,"
            assert figure["src"].startswith(prefix)
            with Image.open(io.BytesIO(base64.b64decode(figure["src"][len(prefix) :]))) as im:
                assert im.format == "JPEG" and max(im.size) <= 64


def test_a_version_without_groups_says_so(root, capsys, tmp_path):
    out_dir = tmp_path / "off"
    corpus = tmp_path / "photos"
    corpus.mkdir()
    uri = json.loads(_run(capsys, "--index", str(root), "--json")[1])["groups"][0]["members"][0]
    shutil.copy(uri["uri"], corpus / "photo.jpg")
    index_job.run(fake_index_args(corpus, out_dir, "off", "--near_duplicates", "off"))
    code, out, _ = _run(capsys, "--index", str(out_dir))
    assert code == 0 and "has no near-duplicate groups" in out
    assert json.loads(_run(capsys, "--index", str(out_dir), "--json")[1])["groups"] is None
    with pytest.raises(SystemExit) as stop:
        cli.main(["dupes", "--index", str(out_dir), "--html", str(tmp_path / "r.html")])
    assert stop.value.code == 1 and not (tmp_path / "r.html").exists()


def test_a_damaged_groups_file_is_refused(root, capsys, tmp_path):
    copy = tmp_path / "v1"
    shutil.copytree(version_dir(str(root), "v1"), copy)
    [path] = (copy / NEAR_DUPLICATES_DIR).glob("*.parquet")
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    code, _, err = _run(capsys, "--index", str(copy))
    assert code != 0 and "sha256 mismatch" in err and NEAR_DUPLICATES_DIR in err


@pytest.mark.slow
def test_html_report_renders_in_a_real_browser(root, capsys, tmp_path, browser):
    page_file = tmp_path / "report.html"
    assert _run(capsys, "--index", str(root), "--html", str(page_file))[0] == 0
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(page_file.as_uri())
    folder = version_dir(str(root), "v1")
    groups = read_groups(folder, read_manifest(folder))
    assert page.locator("section.group").count() == len(set(groups.values()))
    # Every thumbnail decoded (an undecodable data: URI leaves naturalWidth 0).
    widths = page.eval_on_selector_all("figure img", "els => els.map(e => e.naturalWidth)")
    assert len(widths) == len(groups) and min(widths) > 0
    assert errors == []
    page.close()
