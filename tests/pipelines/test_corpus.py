"""Corpus listing and manifest parsing: pure functions directly, ReadCorpus on a real runner."""

from __future__ import annotations

import io
import json
import os

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from index.sources import file_stamp
from pipelines.corpus import (
    DANGLING,
    ReadCorpus,
    check_corpus_exists,
    corpus_root,
    files_pattern,
    is_hidden,
    local_folder,
    local_folder_entries,
    manifest_rows,
    ref_from_manifest_row,
    resolve_manifest_uri,
)
from pipelines.types import STAGE_READ, DeadLetter, ImageRef, image_id_for_uri


def test_files_pattern_lists_folders_recursively_and_keeps_globs():
    assert files_pattern("/data/photos") == "/data/photos/**"
    assert files_pattern("gs://bucket/photos/") == "gs://bucket/photos/**"
    assert files_pattern("/data/*.jpg") == "/data/*.jpg"


def test_hidden_is_judged_below_the_corpus_root_only():
    root = corpus_root("/home/u/.cache/photos")
    assert root == "/home/u/.cache/photos"
    assert not is_hidden("/home/u/.cache/photos/a.jpg", root)
    assert is_hidden("/home/u/.cache/photos/.DS_Store", root)
    assert is_hidden("/home/u/.cache/photos/.thumbs/a.jpg", root)
    assert corpus_root("/data/2024/*/img_*.jpg") == "/data/2024"


def test_manifest_uris_resolve_relative_to_the_manifest():
    assert resolve_manifest_uri("a/b.jpg", "/m/list.csv") == "/m/a/b.jpg"
    assert resolve_manifest_uri("a/b.jpg", "gs://bkt/m/list.csv") == "gs://bkt/m/a/b.jpg"
    for absolute in ("/x.jpg", "gs://b/x.jpg", "https://h/x.jpg", "ftp://h/x.jpg", "hdfs://n/x"):
        assert resolve_manifest_uri(absolute, "/m/list.csv") == absolute


def test_manifest_row_with_id_and_metadata():
    ref = ref_from_manifest_row(
        {"uri": "x.jpg", "id": "img-7", "title": "a dog", "views": 3, "_line": 2}, "/m/l.csv"
    )
    assert ref == ImageRef("/m/x.jpg", "img-7", json.dumps({"title": "a dog", "views": 3}))


def test_manifest_row_without_id_gets_a_stable_uri_id():
    ref = ref_from_manifest_row({"uri": "gs://b/x.jpg", "_line": 2}, "/m/l.csv")
    assert ref.image_id == image_id_for_uri("gs://b/x.jpg")
    assert ref.metadata_json == ""


def test_manifest_row_without_uri_is_a_dead_letter_naming_the_line():
    dead = ref_from_manifest_row({"uri": " ", "_line": 9}, "/m/l.csv")
    assert dead == DeadLetter("/m/l.csv:9", STAGE_READ, "manifest row has no 'uri'")


def test_manifest_rows_csv_jsonl_parquet():
    csv_rows = list(manifest_rows("m.csv", io.BytesIO(b"uri,id\na.jpg,1\nb.jpg,\n")))
    assert [(r["uri"], r["id"], r["_line"]) for r in csv_rows] == [
        ("a.jpg", "1", 2),
        ("b.jpg", "", 3),
    ]

    jsonl = b'{"uri": "a.jpg"}\n\nnot json\n[1]\n{"uri": "b.jpg", "tag": "x"}\n'
    rows = list(manifest_rows("m.jsonl", io.BytesIO(jsonl)))
    assert rows[0] == {"uri": "a.jpg", "_line": 1}
    assert rows[1]["_line"] == 3 and rows[1]["_error"].startswith("invalid JSON")
    assert rows[2] == {"_line": 4, "_error": "JSON line is not an object"}
    assert rows[3] == {"uri": "b.jpg", "tag": "x", "_line": 5}

    buffer = io.BytesIO()
    pq.write_table(pa.table({"uri": ["a.jpg", "b.jpg"], "score": [0.5, 1.5]}), buffer)
    buffer.seek(0)
    assert list(manifest_rows("m.parquet", buffer)) == [
        {"uri": "a.jpg", "score": 0.5, "_line": 1},
        {"uri": "b.jpg", "score": 1.5, "_line": 2},
    ]


def test_manifest_without_uri_column_is_a_clear_error():
    with pytest.raises(ValueError, match="no 'uri' column"):
        list(manifest_rows("m.csv", io.BytesIO(b"path\na.jpg\n")))
    with pytest.raises(ValueError, match="unknown manifest type"):
        list(manifest_rows("m.txt", io.BytesIO(b"a.jpg\n")))


def test_empty_corpus_is_refused_before_the_job(tmp_path):
    with pytest.raises(ValueError, match="matched no files"):
        check_corpus_exists(str(tmp_path), "files")


def test_a_manifest_that_cannot_be_one_is_refused_before_the_job(tmp_path):
    csv_file = tmp_path / "m.csv"
    csv_file.write_text("url\na.jpg\n")
    with pytest.raises(ValueError, match="no 'uri' column"):
        check_corpus_exists(str(csv_file), "manifest")
    table = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": ["a.jpg"]}), table)
    with pytest.raises(ValueError, match=r"no 'uri' column \(columns: \['path'\]\)"):
        check_corpus_exists(str(table), "manifest")
    pq.write_table(pa.table({"uri": ["a.jpg"]}), table)
    check_corpus_exists(str(table), "manifest")  # a good one passes


def test_a_corpus_that_cannot_be_listed_says_what_to_check(monkeypatch):
    # What Beam's GCS filesystem raises without credentials or network (after two minutes of
    # retries, which is why it is faked here): the root cause, nested two levels deep.
    from apache_beam.io.filesystem import BeamIOError

    cause = TimeoutError("Timeout of 120.0s exceeded, last exception: Connection refused")
    listing = BeamIOError("List operation failed with exceptions", {"gs://b/p/": cause})
    failure = BeamIOError("Match operation failed", {"gs://b/p/**": listing})

    def match(patterns, limits=None):
        raise failure

    monkeypatch.setattr(FileSystems, "match", match)
    with pytest.raises(ValueError) as refused:
        check_corpus_exists("gs://b/p", "files")
    message = str(refused.value)
    assert message.startswith("cannot list corpus 'gs://b/p': TimeoutError: Timeout of 120.0s")
    assert "gcloud auth application-default login" in message


def test_read_corpus_folder_skips_hidden_files(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a.jpg", "sub/b.png", ".DS_Store", "sub/.swp"):
        (tmp_path / name).write_bytes(b"x")
    expected = [
        ImageRef(str(p), image_id_for_uri(str(p)))
        for p in (tmp_path / "a.jpg", tmp_path / "sub" / "b.png")
    ]
    with TestPipeline() as p:
        refs, dead = p | ReadCorpus(str(tmp_path), "files")
        assert_that(refs, equal_to(expected), label="refs")
        assert_that(dead, equal_to([]), label="dead")


def test_read_corpus_manifest_turns_bad_rows_into_dead_letters(tmp_path):
    manifest = tmp_path / "list.jsonl"
    manifest.write_text('{"uri": "a.jpg", "id": "A"}\n{"id": "B"}\n{broken\n')
    with TestPipeline() as p:
        refs, dead = p | ReadCorpus(str(manifest), "manifest")
        assert_that(refs, equal_to([ImageRef(str(tmp_path / "a.jpg"), "A")]), label="refs")
        assert_that(
            dead | beam.Map(lambda d: (d.uri, d.stage)),
            equal_to([(f"{manifest}:2", STAGE_READ), (f"{manifest}:3", STAGE_READ)]),
            label="dead",
        )


def test_a_local_folder_is_listed_as_beam_lists_it_with_dangling_links_as_dead_letters(tmp_path):
    (tmp_path / "ok.jpg").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / ".hidden.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "alias.jpg").symlink_to(tmp_path / "ok.jpg")  # a working link is a file
    (tmp_path / "linked-dir").symlink_to(tmp_path / "sub")  # not followed, as Beam does not
    os.mkfifo(tmp_path / "pipe.jpg")  # listed: fetch refuses it with a reason
    listed = list(local_folder_entries(str(tmp_path)))
    entries = {path: dangling for path, dangling, _ in listed}
    stamps = {path: stamp for path, _, stamp in listed}
    # The stamp is the size and modification time (of a link's target); none for a dangling link.
    ok = (tmp_path / "ok.jpg").stat()
    assert stamps[str(tmp_path / "ok.jpg")] == file_stamp(1, ok.st_mtime_ns / 1e9)
    assert stamps[str(tmp_path / "alias.jpg")] == stamps[str(tmp_path / "ok.jpg")]
    assert stamps[str(tmp_path / "sub" / "gone.jpg")] == ""
    beam_listing = FileSystems.match([f"{tmp_path}/**"])[0].metadata_list
    # Every path Beam lists is listed the same way; the dangling links Beam drops are kept.
    assert {m.path for m in beam_listing} == {p for p, dangling in entries.items() if not dangling}
    assert {p for p, dangling in entries.items() if dangling} == {
        str(tmp_path / "sub" / "gone.jpg"),
        str(tmp_path / ".hidden.jpg"),
    }
    assert local_folder(f"{tmp_path}/") == str(tmp_path)
    assert local_folder(str(tmp_path / "*.jpg")) is None  # globs go to Beam's MatchFiles
    assert local_folder("gs://bucket/photos") is None
    with TestPipeline() as p:
        refs, dead = p | ReadCorpus(str(tmp_path), "files")
        assert_that(
            refs | beam.Map(lambda r: os.path.basename(r.uri)),
            equal_to(["ok.jpg", "alias.jpg", "pipe.jpg"]),
            label="refs",
        )
        assert_that(
            dead | beam.Map(lambda d: (d.uri, d.stage, d.reason)),
            equal_to([(str(tmp_path / "sub" / "gone.jpg"), "read", DANGLING)]),
            label="dead",
        )
