"""Nightly runs that read nothing unchanged: stored content hashes stand for files whose
listing stamp (size, modification time) did not move.

Real photos, the real index job on the DirectRunner (fake encoder). To show that a file was not
read, its bytes are changed behind the job's back with its size and mtime put back: the run
keeps the stored hash (what ``rsync``'s quick check would do too).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from index.manifest import read_manifest, verify_files
from index.sources import SOURCES_DIR, file_stamp, same_source, source_files
from pipelines import index_job
from pipelines.sources import TO_HASH, reuse_or_hash
from pipelines.types import HashedImage, ImageRef
from tests.index_args import fake_index_args

PHOTOS = 12


def test_reuse_or_hash_keeps_a_stored_hash_only_for_the_same_stamp():
    ref = ImageRef("/c/a.jpg", "a", stamp=file_stamp(10, 1.5))
    stored = {"uri": "/c/a.jpg", "stamp": file_stamp(10, 1.5), "sha256": "s", "num_bytes": 10}
    assert list(reuse_or_hash([ref], [stored])) == [HashedImage(ref, "s", 10)]
    for other in (
        {**stored, "stamp": file_stamp(10, 2.0)},  # touched
        {**stored, "stamp": file_stamp(11, 1.5)},  # grown
    ):
        (out,) = reuse_or_hash([ref], [other])
        assert out.tag == TO_HASH and out.value == ref
    (out,) = reuse_or_hash([ref], [])  # a new file
    assert out.tag == TO_HASH
    unstamped = ImageRef("/c/a.jpg", "a")  # a manifest row: never trusted without a read
    assert not same_source(unstamped.stamp, {**stored, "stamp": ""})
    assert file_stamp(None, 1.0) == file_stamp(3, None) == ""


@pytest.fixture()
def corpus(tmp_path: Path, assets_dir: Path) -> Path:
    photos = sorted((assets_dir / "datasets" / "flickr8k" / "images").glob("*.jpg"))[:PHOTOS]
    if len(photos) < PHOTOS:
        pytest.skip("Flickr8k photos missing from the assets folder")
    folder = tmp_path / "corpus"
    folder.mkdir()
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    return folder


def _swap_bytes_keeping_stamp(path: Path, donor: Path) -> None:
    """``path`` gets other bytes of its own length, its mtime put back."""
    stat = path.stat()
    data = donor.read_bytes()[: stat.st_size].ljust(stat.st_size, b"\0")
    path.write_bytes(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_unchanged_files_are_not_read_and_changed_ones_are(corpus: Path, tmp_path: Path):
    first = index_job.run(fake_index_args(corpus, tmp_path / "v1", "v1"))
    manifest = read_manifest(str(tmp_path / "v1"))
    verify_files(str(tmp_path / "v1"), manifest)  # the sources file is listed and checksummed
    paths = source_files(str(tmp_path / "v1"), manifest)
    stored = [row for path in paths for row in pq.read_table(path).to_pylist()]
    assert len(stored) == PHOTOS and all(row["stamp"] for row in stored)

    photos = sorted(corpus.iterdir())
    _swap_bytes_keeping_stamp(photos[0], photos[1])  # unreadable to the job: the stamp holds
    os.utime(photos[2])  # touched: read again (same bytes, so the same content)
    shutil.copy(photos[3], corpus / "new.jpg")  # a new file with a known content
    second = index_job.run(fake_index_args(corpus, tmp_path / "v2", "v2", "--previous",
                                           str(tmp_path / "v1")))  # fmt: skip
    c = second.counts
    assert c["hashes_reused"] == PHOTOS - 1  # all but the touched one
    # photos[0]'s new bytes were never read: its row is the stored one, nothing was encoded;
    # new.jpg was read, and is a duplicate of photos[3].
    assert (c["encoded"], c["duplicates"], c["indexed"]) == (0, 1, first.counts["indexed"])
    assert "11 files unchanged since then, not read" in second.summary()
    paths = source_files(str(tmp_path / "v2"), read_manifest(str(tmp_path / "v2")))
    by_uri = {row["uri"]: row for path in paths for row in pq.read_table(path).to_pylist()}
    assert len(by_uri) == PHOTOS + 1 and by_uri[str(corpus / "new.jpg")]["stamp"]
    old = {row["uri"]: row for row in stored}
    assert by_uri[str(photos[0])]["sha256"] == old[str(photos[0])]["sha256"]
    assert by_uri[str(photos[2])]["stamp"] != old[str(photos[2])]["stamp"]


def test_versions_without_sources_hash_everything_once(corpus: Path, tmp_path: Path):
    index_job.run(fake_index_args(corpus, tmp_path / "v1", "v1"))
    shutil.rmtree(tmp_path / "v1" / SOURCES_DIR)  # as a version from before sources existed
    manifest_path = tmp_path / "v1" / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["files"] = [e for e in data["files"] if not e["path"].startswith(SOURCES_DIR + "/")]
    manifest_path.write_text(json.dumps(data))
    second = index_job.run(fake_index_args(corpus, tmp_path / "v2", "v2", "--previous",
                                           str(tmp_path / "v1")))  # fmt: skip
    assert second.counts["hashes_reused"] == 0 and second.counts["reused"] == PHOTOS
    third = index_job.run(fake_index_args(corpus, tmp_path / "v3", "v3", "--previous",
                                          str(tmp_path / "v2")))  # fmt: skip
    assert third.counts["hashes_reused"] == PHOTOS


def test_a_run_with_nothing_to_encode_builds_no_model(corpus: Path, tmp_path: Path, monkeypatch):
    from pipelines.model_handler import ImageEncoderModelHandler

    built = []
    build = ImageEncoderModelHandler._build_encoder

    def counted(self):
        built.append(self.spec)
        return build(self)

    monkeypatch.setattr(ImageEncoderModelHandler, "_build_encoder", counted)
    index_job.run(fake_index_args(corpus, tmp_path / "v1", "v1"))
    assert len(built) >= 1  # the in-process DirectRunner: the spy sees the build
    built.clear()
    result = index_job.run(fake_index_args(corpus, tmp_path / "v2", "v2", "--previous",
                                           str(tmp_path / "v1")))  # fmt: skip
    assert result.counts["encoded"] == 0 and built == []


def test_an_encoder_that_cannot_be_built_fails_the_job(corpus: Path, tmp_path: Path, monkeypatch):
    """Built on its first batch, a broken model must still stop the job (as a failure in Beam's
    setup did), not dead-letter every image under RunInference's per-batch handling."""
    from pipelines.model_handler import EncoderUnavailable, ImageEncoderModelHandler

    def broken(self):
        raise OSError("weights file unreadable")

    monkeypatch.setattr(ImageEncoderModelHandler, "_build_encoder", broken)
    with pytest.raises(EncoderUnavailable, match="weights file unreadable"):
        index_job.run(fake_index_args(corpus, tmp_path / "v1", "v1"))
