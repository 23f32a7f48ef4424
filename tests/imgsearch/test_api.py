"""``open_index``: the Python API over real index versions (fake encoder, real COCO photos).

The versions and the joint model are the server tests' session fixtures (tests/conftest.py),
so this API and the HTTP API are checked against the same inputs; the oracles
are the serving classes used directly and what the photos themselves are.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from imgsearch import open_index
from imgsearch.api import ImageIndex, ImageInfo, SearchHit, UnknownImageError
from serving.fused_search import FusedHit, FusedSearcher
from serving.searcher import ImageSearcher
from serving.text_search import TextSearcher
from storage.files import write_bytes
from tests.cloud import conftest as cloud_fixtures
from tests.serving.conftest import JOINT_MODEL, publish

# The GCS emulator's fixtures (tests/cloud/conftest.py), registered in this module by binding;
# tests reach them through `inputs` (request.getfixturevalue), so no parameter shadows them.
gcs_emulator, gcs_bucket = cloud_fixtures.gcs_emulator, cloud_fixtures.gcs_bucket
gcs_request_log = cloud_fixtures.gcs_request_log

REPO = Path(__file__).resolve().parents[2]
QUERY = "a dog running on the grass"


@dataclasses.dataclass(frozen=True)
class Inputs:
    photos: list[Path]  # eight real photos; v1 indexes the first six, v2 all eight
    models: Path  # a models dir with the dual joint model JOINT_MODEL
    built: dict[str, Path]  # "v1", "v2" -> an index output folder
    root: Path  # a publish root: latest.json -> v1, v2 its previous version


def shared_inputs(request, tmp_path_factory) -> Inputs:
    """The serving tests' versions and model, with a publish root of both versions."""
    built = request.getfixturevalue("built_versions")
    root = tmp_path_factory.mktemp("published") / "root"
    publish(root, built["v2"], "v2")
    publish(root, built["v1"], "v1")
    return Inputs(
        request.getfixturevalue("serve_photos"), request.getfixturevalue("serve_models"),
        built, root,
    )  # fmt: skip


@pytest.fixture(scope="module")
def inputs(request, tmp_path_factory) -> Inputs:
    return shared_inputs(request, tmp_path_factory)


@pytest.fixture(scope="module")
def index(inputs: Inputs) -> ImageIndex:
    return open_index(inputs.root, models_dir=inputs.models)


@pytest.fixture(scope="module")
def images_only(inputs: Inputs) -> ImageIndex:
    return open_index(str(inputs.root))


def test_opens_the_version_the_pointer_names(index: ImageIndex, inputs: Inputs) -> None:
    assert (index.version, len(index), index.text_enabled, index.fused) == ("v1", 6, True, False)
    assert index.index_dir == str(inputs.root / "versions" / "v1")
    assert index.summary()["images"] == 6 and index.summary()["text_search"] is True


def test_search_text_ranks_as_the_text_searcher(index: ImageIndex, inputs: Inputs) -> None:
    images = ImageSearcher.load(str(inputs.root / "versions" / "v1"))
    direct = TextSearcher.load(images, inputs.models, JOINT_MODEL)
    hits = index.search_text(QUERY, k=4)
    assert hits == direct.search(QUERY, 4)
    assert len(hits) == 4 and all(type(hit) is SearchHit for hit in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert len(index.search_text(QUERY, k=50)) == 6  # k is clipped to the index


def test_search_image_by_path_and_by_bytes_finds_the_photo(
    index: ImageIndex, inputs: Inputs
) -> None:
    for photo in inputs.photos[:6]:
        by_path = index.search_image(photo, k=3)
        assert by_path[0].uri == str(photo)
        assert by_path[0].score == pytest.approx(1.0, abs=1e-4)
        assert by_path[1].score < by_path[0].score
        assert index.search_image(photo.read_bytes(), k=3) == by_path
        assert index.search_image(str(photo), k=3) == by_path
    # v1 holds the first six photos only: the seventh finds others, not itself.
    assert str(inputs.photos[6]) not in {h.uri for h in index.search_image(inputs.photos[6], k=6)}


def test_similar_and_details(index: ImageIndex, inputs: Inputs) -> None:
    photo = inputs.photos[2]
    image_id = index.search_image(photo, k=1)[0].image_id
    similar = index.similar(image_id, k=3)
    assert len(similar) == 3 and image_id not in {h.image_id for h in similar}
    assert len(index.similar(image_id, k=10)) == 5  # every other image of v1

    info = index.details(image_id)
    assert isinstance(info, ImageInfo)
    with Image.open(photo) as opened:
        size = opened.size
    assert (info.image_id, info.uri, info.version) == (image_id, str(photo), "v1")
    assert (info.width, info.height) == size
    assert info.num_bytes == photo.stat().st_size
    assert info.source_metadata["title"] == f"photo {photo.stem}"
    # The fixture declares site, taken and rating typed (tests/conftest.py).
    assert info.metadata == {k: info.source_metadata.get(k) for k in ("site", "taken", "rating")}
    assert (info.caption, info.tags) == (None, [])  # no captioning or tagging stage ran


def test_unknown_image_id_is_a_clear_key_error(index: ImageIndex) -> None:
    for call in (index.similar, index.details):
        with pytest.raises(UnknownImageError, match="'nope' is not in index version v1") as err:
            call("nope")
        assert isinstance(err.value, KeyError)
        assert str(err.value).startswith("image 'nope'")  # not KeyError's quoted repr


def test_text_search_without_models_says_to_pass_models_dir(
    images_only: ImageIndex, inputs: Inputs
) -> None:
    assert not images_only.text_enabled
    with pytest.raises(ValueError, match=r"models_dir=DIR \(open_index\('.*root', models_dir"):
        images_only.search_text(QUERY)
    # Image queries need no models.
    assert images_only.search_image(inputs.photos[0], k=2)[0].uri == str(inputs.photos[0])


def test_bad_queries(index: ImageIndex, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty text query"):
        index.search_text("   ")
    with pytest.raises(ValueError, match="no word of 'zzqxv' is known"):
        index.search_text("zzqxv")
    for bad_k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be an integer >= 1"):
            index.search_text(QUERY, k=bad_k)
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
        index.search_image(tmp_path / "missing.jpg")
    with pytest.raises(ValueError) as rejected:
        index.search_image(b"this is not an image")
    assert type(rejected.value).__name__ == "ImageRejected"
    with pytest.raises(TypeError, match="a path or bytes"):
        index.search_image(123)


def test_open_a_version_or_an_index_folder(inputs: Inputs) -> None:
    older = open_index(inputs.root, version="v2")
    assert (older.version, len(older)) == ("v2", 8)
    assert older.index_dir == str(inputs.root / "versions" / "v2")
    folder = open_index(inputs.built["v1"])
    assert (folder.version, len(folder)) == ("v1", 6)  # the manifest's version


def test_open_errors_say_what_to_do(inputs: Inputs, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"neither a publish root .* nor an index output"):
        open_index(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match=r"version 'v9' is missing .*`imgsearch versions"):
        open_index(inputs.root, version="v9")
    with pytest.raises(FileNotFoundError, match=r"no latest\.json either"):
        open_index(inputs.built["v1"], version="v1")
    with pytest.raises(ValueError, match="fused=True needs models_dir"):
        open_index(inputs.root, fused=True)
    with pytest.raises(ValueError, match="model= needs models_dir"):
        open_index(inputs.root, model=JOINT_MODEL)
    with pytest.raises(FileNotFoundError, match="no joint model in"):
        open_index(inputs.root, models_dir=tmp_path)


def test_fused_text_search(inputs: Inputs) -> None:
    fused = open_index(inputs.root, models_dir=inputs.models, fused=True)
    assert fused.fused
    hits = fused.search_text(QUERY, k=3)
    assert len(hits) == 3 and all(type(hit) is FusedHit for hit in hits)
    assert all(JOINT_MODEL in hit.parts for hit in hits)
    v1 = str(inputs.root / "versions" / "v1")
    assert hits == FusedSearcher.load(ImageSearcher.load(v1), v1, inputs.models).search(QUERY, 3)


def test_a_publish_root_on_gs(request, inputs: Inputs) -> None:
    """The same calls on gs:// (the GCS emulator): read through Beam's GCS filesystem."""
    gs_root = f"gs://{request.getfixturevalue('gcs_bucket')}/published"
    built = inputs.built["v1"]
    for path in sorted(p for p in built.rglob("*") if p.is_file()):
        relative = path.relative_to(built).as_posix()
        write_bytes(f"{gs_root}/versions/v1/{relative}", path.read_bytes())
    write_bytes(f"{gs_root}/latest.json", b'{"version": "v1", "path": "versions/v1"}')
    remote = open_index(gs_root)  # verifies every object's SHA-256, read back from the bucket
    assert (remote.version, len(remote)) == ("v1", 6)
    assert remote.index_dir == f"{gs_root}/versions/v1"
    assert remote.search_image(inputs.photos[0], k=2)[0].uri == str(inputs.photos[0])


def readme_example(name: str) -> str:
    """The code block that follows ``<!-- example: NAME -->`` in README.md."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(rf"<!-- example: {name} -->\s*```python\n(.*?)```", readme, re.DOTALL)
    assert found, f"README.md has no python block after <!-- example: {name} -->"
    return found.group(1)


def test_readme_example_runs(tmp_path: Path, monkeypatch, capsys, inputs: Inputs) -> None:
    # The names the example uses, in a fresh folder: the publish root, the models, a photo.
    (tmp_path / "published").symlink_to(inputs.root)
    (tmp_path / "models").symlink_to(inputs.models)
    (tmp_path / "photo.jpg").write_bytes(inputs.photos[1].read_bytes())
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example("open_index"), "README.md", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out.splitlines()
    hits = [line for line in printed if re.fullmatch(r"-?\d\.\d{3}  \w+  /\S+\.jpg", line)]
    assert len(hits) == 5, printed
    assert printed[-1].startswith(f"v1 {inputs.photos[1]} "), printed  # the photo found itself


def test_import_imgsearch_stays_cheap() -> None:
    """The CLI, settings and DAG files import the package: open_index must not load Beam."""
    probe = (
        "import sys, imgsearch; heavy = [m for m in ('apache_beam', 'tensorflow', 'scann', "
        "'imgsearch.api') if m in sys.modules]; assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", probe], cwd=REPO, check=True, timeout=120)


def test_search_text_pages_filters_and_hybrid_as_the_server(
    index: ImageIndex, images_only: ImageIndex
) -> None:
    everything = index.search_text(QUERY, k=6)
    flickr = index.search_text(QUERY, k=6, filter='site = "flickr"')
    sites = {hit.image_id: index.details(hit.image_id).metadata["site"] for hit in everything}
    assert [h.image_id for h in flickr] == [h.image_id for h in everything
                                           if sites[h.image_id] == "flickr"]  # fmt: skip
    pages = index.search_text(QUERY, k=2) + index.search_text(QUERY, k=2, offset=2)
    assert [h.image_id for h in pages] == [h.image_id for h in everything[:4]]
    threshold = (everything[2].score + everything[3].score) / 2  # between the 3rd and the 4th
    kept = index.search_text(QUERY, k=6, min_score=threshold)
    assert [h.image_id for h in kept] == [h.image_id for h in everything[:3]]
    # Keywords alone need no models: the title of each photo is "photo <file stem>".
    stem = Path(everything[0].uri).stem
    assert images_only.search_text(stem, k=3, hybrid=True)[0].image_id == everything[0].image_id
    with pytest.raises(ValueError, match="bad filter"):
        index.search_text(QUERY, filter="nope = 1")
    with pytest.raises(ValueError, match="hybrid_weight goes with"):
        index.search_text(QUERY, hybrid_weight=0.5)
    with pytest.raises(ValueError, match="pass hybrid=True"):
        images_only.search_text(QUERY, filter='site = "flickr"')
