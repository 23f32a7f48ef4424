"""gs:// end to end: corpus -> index job -> table + shard + manifest -> publish -> serve.

Everything lives in an emulator bucket; the product code is the same that runs on real GCS
(Beam FileSystems for every read and write, pyarrow over Beam's file handles, the
google-cloud-storage client for the generation-matched pointer).
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest
from apache_beam.io.filesystems import FileSystems
from google.cloud import storage

from index.manifest import read_manifest, verify_files
from index.publish import read_pointer, resolve_index, write_pointer
from pipelines import index_job
from serving.searcher import ImageSearcher
from tests.cloud.conftest import object_gets, upload_folder
from tests.index_args import fake_index_args


def _objects(prefix: str) -> list[str]:
    return sorted(m.path for m in FileSystems.match([f"{prefix}/**"])[0].metadata_list)


def test_fake_encoder_index_publish_and_search_all_on_gs(gcs_bucket: str, small_photo_dir: Path):
    uris = upload_folder(small_photo_dir, gcs_bucket, "corpus")
    root = f"gs://{gcs_bucket}/out"
    version_dir = f"{root}/versions/v1"

    result = index_job.run(fake_index_args(f"gs://{gcs_bucket}/corpus", version_dir, "v1"))
    # Six distinct real photos: all indexed, none lost, none a duplicate.
    assert result.counts["inputs"] == len(uris) == 6
    assert (result.counts["indexed"], result.counts["duplicates"]) == (6, 0)
    assert result.counts["dead_letters"] == 0

    written = _objects(version_dir)
    assert f"{version_dir}/manifest.json" in written
    assert any(p.startswith(f"{version_dir}/table/") and p.endswith(".parquet") for p in written)
    assert any(p.startswith(f"{version_dir}/index/shard-00000/") for p in written)
    # No temp files left behind by Beam's sinks or the manifest's write-then-rename.
    assert not [p for p in written if "/.temp" in p or ".tmp-" in p]
    manifest = read_manifest(f"{version_dir}/manifest.json")
    verify_files(version_dir, manifest)  # sha256 of every object, read back from the bucket

    assert read_pointer(root) is None
    pointer = write_pointer(root, "v1")
    assert pointer.version == "v1" and pointer.previous is None
    index_dir, version = resolve_index(root)
    assert (index_dir, version) == (version_dir, "v1")

    searcher = ImageSearcher.load(index_dir)
    assert len(searcher) == result.counts["indexed"]
    query_uri = uris[3]
    hits = searcher.search_image_path(query_uri, k=3)
    # The query path reads the photo from the bucket and encodes it with the pipeline's code:
    # its indexed copy comes first with a dot product of 1.
    assert hits[0].uri == query_uri
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[1].score < hits[0].score


@pytest.mark.slow
def test_real_mobilenet_on_gs(gcs_bucket: str, small_photo_dir: Path, mobilenet_weights: Path):
    """Photos, weights, table, index, pointer: everything read from and written to the bucket."""
    uris = upload_folder(small_photo_dir, gcs_bucket, "corpus")
    weights = f"gs://{gcs_bucket}/models/{mobilenet_weights.name}"
    client = storage.Client.create_anonymous_client()
    client.bucket(gcs_bucket).blob(f"models/{mobilenet_weights.name}").upload_from_filename(
        str(mobilenet_weights)
    )
    version_dir = f"gs://{gcs_bucket}/out/versions/v1"
    corpus = f"gs://{gcs_bucket}/corpus"
    result = index_job.run(
        ["--corpus", corpus, "--out", version_dir, "--run_version", "v1", "--weights", weights]
    )
    assert result.counts["indexed"] + result.counts["duplicates"] == len(uris)
    write_pointer(f"gs://{gcs_bucket}/out", "v1")
    index_dir, _ = resolve_index(f"gs://{gcs_bucket}/out")
    searcher = ImageSearcher.load(index_dir)
    hits = searcher.search_image_path(uris[0], k=2)
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[1].score < 0.95


def test_incremental_run_updates_a_gs_version_in_place(
    gcs_bucket: str, small_photo_dir: Path, coco_photos: list[Path]
):
    """The nightly steady state on gs://: key join, delta, server-side copies, ScaNN upsert."""
    uris = upload_folder(small_photo_dir, gcs_bucket, "corpus")
    root = f"gs://{gcs_bucket}/out"
    corpus = f"gs://{gcs_bucket}/corpus"
    index_job.run(fake_index_args(corpus, f"{root}/versions/v1", "v1"))
    write_pointer(root, "v1")

    bucket = storage.Client.create_anonymous_client().bucket(gcs_bucket)
    bucket.blob("corpus/added.jpg").upload_from_filename(str(coco_photos[7]))
    bucket.blob(uris[0].split(f"gs://{gcs_bucket}/", 1)[1]).delete()
    v2 = f"{root}/versions/v2"
    argv = fake_index_args(corpus, v2, "v2", "--previous", root)
    result = index_job.run([*argv, "--max_changed_fraction", "1"])
    assert result.update is not None and not result.update.decision.rebuild
    assert (result.update.upserted, result.update.deleted) == (1, 1)
    assert (result.counts["indexed"], result.counts["reused"], result.counts["encoded"]) == (
        6,
        5,
        1,
    )
    written = _objects(v2)
    assert not [p for p in written if "/delta/" in p]  # the delta is gone once applied
    manifest = read_manifest(f"{v2}/manifest.json")
    verify_files(v2, manifest)
    write_pointer(root, "v2")
    searcher = ImageSearcher.load(resolve_index(root)[0])
    assert len(searcher) == 6
    assert uris[0] not in {hit.uri for hit in searcher.search_image_path(uris[1], k=6)}
    hits = searcher.search_image_path(f"gs://{gcs_bucket}/corpus/added.jpg", k=1)
    assert hits[0].uri == f"gs://{gcs_bucket}/corpus/added.jpg"


def test_a_no_change_run_on_gs_reads_no_image(
    gcs_bucket: str, small_photo_dir: Path, gcs_request_log: Path
):
    """The stored content hashes stand for unchanged objects: not one GET of an image."""
    uris = upload_folder(small_photo_dir, gcs_bucket, "corpus")
    root = f"gs://{gcs_bucket}/out"
    corpus = f"gs://{gcs_bucket}/corpus"
    first = index_job.run(fake_index_args(corpus, f"{root}/versions/v1", "v1"))
    write_pointer(root, "v1")
    assert object_gets(gcs_request_log, gcs_bucket, "corpus")  # the first run read them all
    since = gcs_request_log.stat().st_size
    result = index_job.run(fake_index_args(corpus, f"{root}/versions/v2", "v2", "--previous", root))
    assert object_gets(gcs_request_log, gcs_bucket, "corpus", since) == []
    assert result.counts["hashes_reused"] == len(uris) == first.counts["inputs"]
    assert (result.counts["encoded"], result.counts["indexed"]) == (0, first.counts["indexed"])
    # An object written again (a new generation) is read again, and only that one.
    bucket = storage.Client.create_anonymous_client().bucket(gcs_bucket)
    name = uris[0].split(f"gs://{gcs_bucket}/", 1)[1]
    bucket.blob(name).upload_from_string(bucket.blob(name).download_as_bytes())
    write_pointer(root, "v2")
    since = gcs_request_log.stat().st_size
    again = index_job.run(fake_index_args(corpus, f"{root}/versions/v3", "v3", "--previous", root))
    assert again.counts["hashes_reused"] == len(uris) - 1
    read = object_gets(gcs_request_log, gcs_bucket, "corpus", since)
    assert read and all(urllib.parse.quote(name, safe="") in line for line in read)
