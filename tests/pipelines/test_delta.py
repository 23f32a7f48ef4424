"""In-place incremental updates: the one planner in place, when a run may update in place, and
real DirectRunner runs whose new version is checked against a full run over the same corpus."""

from __future__ import annotations

import dataclasses
import filecmp
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import pipelines.incremental.plan as incremental_plan
from index.manifest import read_manifest
from index.scann_index import ScannParams, load_searcher, search_batched
from index.schema import EMBEDDING_SCALE
from index.shards import read_ids
from index.table import parquet_files, read_embedding_table
from index.update import UpdateRequest, update_index
from index.update_policy import UPSERT, UpdateDecision
from pipelines import index_job
from pipelines.incremental.plan import (
    ENCODE,
    KEEP,
    REFRESH,
    SOURCE_FILE,
    ReusePlan,
    plan_content,
    refreshed_row,
)
from pipelines.options import IndexConfig
from pipelines.types import HashedImage, ImageRef, image_id_for_uri
from tests.index_args import fake_index_args
from tests.pipelines.test_incremental import _table

ENC = "fake/v1"
PLAN = ReusePlan(
    index_dir="", previous_version="v1", encoder_id=ENC, decision=UpdateDecision(UPSERT, "t")
)


def _hashed(uri: str, sha: str = "aa", metadata: str = "") -> HashedImage:
    return HashedImage(ImageRef(uri, image_id_for_uri(uri), metadata), sha, 10)


def _key(uri: str, dups: tuple[str, ...] = (), encoder: str = ENC, **extra) -> dict:
    return {
        "image_id": image_id_for_uri(uri),
        "uri": uri,
        "duplicate_uris": list(dups),
        "sha256": "aa",
        "metadata": "",
        "encoder": encoder,
        SOURCE_FILE: "/v1/table/embeddings-0.parquet",
        **extra,
    }


def test_unchanged_content_is_kept_where_it_is():
    decision = plan_content("aa", [_hashed("/c/a.jpg")], [_key("/c/a.jpg")], PLAN)
    assert (decision.action, decision.refresh, decision.deleted) == (KEEP, None, [])


def test_a_renamed_file_is_refreshed_under_its_new_id_and_the_old_id_deleted():
    decision = plan_content("aa", [_hashed("/c/new.jpg")], [_key("/c/old.jpg")], PLAN)
    assert decision.action == REFRESH
    assert decision.refresh.stored_id == image_id_for_uri("/c/old.jpg")
    assert decision.refresh.image_id == image_id_for_uri("/c/new.jpg")
    assert decision.deleted == [image_id_for_uri("/c/old.jpg")] and decision.dropped == 0


def test_a_new_copy_changes_the_kept_row_or_only_its_duplicate_list():
    stored = [_key("/c/b.jpg")]
    # A copy whose uri sorts later: same id, new duplicate list -> refreshed in place.
    later = plan_content("aa", [_hashed("/c/b.jpg"), _hashed("/c/z.jpg")], stored, PLAN)
    assert later.action == REFRESH and later.deleted == []
    assert later.refresh.duplicate_uris == ("/c/z.jpg",)
    assert [d.uri for d in later.duplicates] == ["/c/z.jpg"]
    # A copy whose uri sorts first becomes the kept one: the old id leaves the table.
    first = plan_content("aa", [_hashed("/c/b.jpg"), _hashed("/c/a.jpg")], stored, PLAN)
    assert first.refresh.image_id == image_id_for_uri("/c/a.jpg")
    assert first.deleted == [image_id_for_uri("/c/b.jpg")]


def test_metadata_change_refreshes_the_row():
    decision = plan_content(
        "aa", [_hashed("/c/a.jpg", metadata='{"k": 2}')], [_key("/c/a.jpg")], PLAN
    )
    assert decision.action == REFRESH and decision.refresh.metadata == '{"k": 2}'


def test_content_that_left_the_corpus_is_deleted():
    decision = plan_content("aa", [], [_key("/c/a.jpg")], PLAN)
    assert decision.action is None and decision.deleted == [image_id_for_uri("/c/a.jpg")]
    assert decision.dropped == 1


def test_rows_this_run_would_not_make_are_encoded_again():
    decision = plan_content(
        "aa", [_hashed("/c/a.jpg")], [_key("/c/a.jpg", encoder="fake/v0")], PLAN
    )
    assert decision.action == ENCODE and decision.unique.ref.uri == "/c/a.jpg"
    # Deleted and upserted under the same id: apply_in_place keeps only the upsert.
    assert decision.deleted == [image_id_for_uri("/c/a.jpg")]
    tagged = dataclasses.replace(PLAN, required=(("tag_model", "head-2"),))
    stale = _key("/c/a.jpg", tag_model="head-1")
    assert plan_content("aa", [_hashed("/c/a.jpg")], [stale], tagged).action == ENCODE


def test_another_joint_model_keeps_the_image_embedding_and_recomputes_the_joint_one():
    joint = dataclasses.replace(PLAN, joint_model_id="dual/v2")
    same = plan_content(
        "aa", [_hashed("/c/a.jpg")], [_key("/c/a.jpg", joint_model="dual/v2")], joint
    )
    assert same.action == KEEP
    other = plan_content(
        "aa", [_hashed("/c/a.jpg")], [_key("/c/a.jpg", joint_model="dual/v1")], joint
    )
    assert other.action == REFRESH and other.refresh.needs_joint
    row = refreshed_row(
        {"image_id": "x", "embedding": [1.0], "joint_embedding": [2.0], "joint_model": "dual/v1"},
        other.refresh,
    )
    assert "joint_embedding" not in row and row["uri"] == "/c/a.jpg"


def test_refreshed_int8_rows_reach_the_writer_as_float32():
    decision = plan_content("aa", [_hashed("/c/new.jpg")], [_key("/c/old.jpg")], PLAN)
    stored = {"image_id": "x", "embedding": [127, 0], EMBEDDING_SCALE: 0.5 / 127}
    row = refreshed_row(stored, decision.refresh)
    assert EMBEDDING_SCALE not in row and row["embedding"] == pytest.approx([1.0, 0.0])


def test_a_refreshed_row_of_a_table_before_the_captions_column_lists_its_one_caption():
    decision = plan_content("aa", [_hashed("/c/new.jpg")], [_key("/c/old.jpg")], PLAN)
    old = {"image_id": "x", "embedding": [1.0], "caption": "a dog", "caption_score": -0.5}
    row = refreshed_row(old, decision.refresh)
    assert row["captions"] == [{"text": "a dog", "score": -0.5}]
    beams = [{"text": "a dog", "score": -0.5}, {"text": "a brown dog", "score": -0.7}]
    assert refreshed_row({**old, "captions": beams}, decision.refresh)["captions"] == beams
    assert "captions" not in refreshed_row({"image_id": "x", "embedding": [1.0]}, decision.refresh)


# --- real runs ---------------------------------------------------------------------------------


def _check_index_matches_table(out: Path) -> None:
    """Every table row is in the index under its id, and its own vector finds it first."""
    manifest = read_manifest(str(out))
    table = read_embedding_table(parquet_files(str(out / "table")))
    ids, uris = read_ids(str(out / manifest.shards[0]["ids_file"]))
    assert sorted(ids) == sorted(table.image_ids)
    assert dict(zip(ids, uris, strict=True)) == dict(zip(table.image_ids, table.uris, strict=True))
    shard = manifest.shards[0]
    searcher = load_searcher(str(out / shard["index_dir"]))
    params = ScannParams.from_json(manifest.shard_params(shard))
    neighbours, _ = search_batched(searcher, table.embeddings, 1, params)
    assert [ids[n[0]] for n in neighbours] == list(table.image_ids)


def test_nightly_changes_update_the_previous_version_in_place(
    small_photo_dir, coco_photos, tmp_path, monkeypatch
):
    # Buckets of two stored rows: the join runs over several buckets, as at scale.
    monkeypatch.setattr(incremental_plan, "ROWS_PER_BUCKET", 2)
    corpus = small_photo_dir
    photos = sorted(corpus.glob("*.jpg"))
    index_job.run(fake_index_args(corpus, tmp_path / "v1", "v1"))

    # No change at all: nothing encoded, every table file copied byte for byte.
    same = index_job.run(
        fake_index_args(corpus, tmp_path / "v2", "v2", "--previous", str(tmp_path / "v1"))
    )
    assert same.update is not None and not same.update.decision.rebuild
    assert (same.update.upserted, same.update.deleted, same.counts["encoded"]) == (0, 0, 0)
    v1_files = [Path(p).name for p in parquet_files(str(tmp_path / "v1" / "table"))]
    assert [Path(p).name for p in parquet_files(str(tmp_path / "v2" / "table"))] == v1_files
    for name in v1_files:
        assert filecmp.cmp(tmp_path / "v1" / "table" / name, tmp_path / "v2" / "table" / name)
    assert not (tmp_path / "v2" / "delta").exists()

    # Every kind of change at once: added, changed bytes, deleted, moved, a new duplicate.
    shutil.copy(coco_photos[7], corpus / "added.jpg")
    shutil.copy(coco_photos[6], photos[0])
    photos[1].unlink()
    (corpus / "sub").mkdir()
    photos[2].rename(corpus / "sub" / "moved.jpg")
    shutil.copy(photos[3], corpus / "zz-copy.jpg")  # sorts after its original: a duplicate
    # A six-photo corpus changes by far more than 10% here: allow it, to update in place.
    previous = ("--previous", str(tmp_path / "v2"), "--max_changed_fraction", "2")
    third = index_job.run(fake_index_args(corpus, tmp_path / "v3", "v3", *previous))
    assert not third.update.decision.rebuild and third.config.reuse.join_buckets == 3
    c = third.counts
    assert (c["inputs"], c["indexed"], c["duplicates"], c["reused"], c["encoded"]) == (
        7,
        6,
        1,
        4,
        2,
    )
    assert c["previous_dropped"] == 2  # the deleted photo and the old bytes of the changed one
    # Upserted: added, changed, moved (new id), the original of the copy (new duplicate list).
    # Deleted: the deleted photo and the moved photo's old id (the changed one is an upsert).
    assert (third.update.upserted, third.update.deleted) == (4, 2)
    assert third.manifest.lineage["updates"][-1] == {
        "version": "v3",
        "base": "v2",
        "upserted": 4,
        "deleted": 2,
    }
    rows = _table(tmp_path / "v3")
    assert rows[str(photos[3])]["duplicate_uris"] == [str(corpus / "zz-copy.jpg")]
    _check_index_matches_table(tmp_path / "v3")

    # The updated table equals a full run over the same corpus, row for row.
    index_job.run(fake_index_args(corpus, tmp_path / "full", "full"))
    assert _table(tmp_path / "full") == rows


def test_too_many_changes_rebuild_the_index_from_the_updated_table(
    small_photo_dir, coco_photos, tmp_path
):
    index_job.run(fake_index_args(small_photo_dir, tmp_path / "v1", "v1"))
    for photo in coco_photos[6:8]:
        shutil.copy(photo, small_photo_dir / photo.name)
    second = index_job.run(
        fake_index_args(small_photo_dir, tmp_path / "v2", "v2", "--previous", str(tmp_path / "v1"))
    )
    assert second.update.decision.rebuild and "exceeds" in second.update.decision.reason
    assert second.manifest.lineage == {"built_from": "v2", "built_count": 8, "updates": []}
    assert second.manifest.counts["indexed"] == 8 and second.counts["reused"] == 6
    _check_index_matches_table(tmp_path / "v2")


def test_a_run_that_would_write_other_rows_rebuilds_instead(small_photo_dir, tmp_path):
    index_job.run(fake_index_args(small_photo_dir, tmp_path / "v1", "v1"))

    def blocker(*extra: str) -> str | None:
        """Why the plan built at the edge rewrites the previous version; None: in place."""
        argv = fake_index_args(
            small_photo_dir, tmp_path / "v2", "v2", "--previous", str(tmp_path / "v1")
        )
        from apache_beam.options.pipeline_options import PipelineOptions

        plan = IndexConfig.from_options(PipelineOptions([*argv, *extra])).reuse
        return None if plan.in_place else plan.decision.reason

    assert blocker() is None
    assert "columns" in blocker("--embedding_storage", "int8")
    assert "shard" in blocker("--index_shards", "2")
    assert "bfloat16" in blocker("--index_quantize", "bfloat16")
    assert "autotunes" in blocker("--target_recall", "0.9")
    # The same flags, but the rows were made by an older encoder version: re-encoded in full.
    for path in parquet_files(str(tmp_path / "v1" / "table")):
        table = pq.read_table(path)
        column = table.schema.get_field_index("encoder")
        older = np.full(table.num_rows, "fake/v0", dtype=object)
        pq.write_table(table.set_column(column, table.schema.field(column), [older]), path)
    assert "fake/v0" not in (reason := blocker()) and "encoder" in reason
    second = index_job.run(
        fake_index_args(small_photo_dir, tmp_path / "v2", "v2", "--previous", str(tmp_path / "v1"))
    )
    assert second.update is None and second.counts["encoded"] == 6


def test_update_index_refuses_counts_that_do_not_add_up(small_photo_dir, tmp_path):
    index_job.run(fake_index_args(small_photo_dir, tmp_path / "v1", "v1"))
    request = UpdateRequest(
        str(tmp_path / "v1"), str(tmp_path / "v2"), version="v2", counts={"indexed": 7}
    )
    with pytest.raises(ValueError, match="leaves 6 rows indexed"):
        update_index(request)
    assert not (tmp_path / "v2" / "manifest.json").exists()


def test_local_versions_share_unchanged_files_and_never_write_through_them(
    small_photo_dir, tmp_path
):
    from index.manifest import verify_files
    from storage.files import delete_tree

    index_job.run(fake_index_args(small_photo_dir, tmp_path / "v1", "v1"))
    index_job.run(
        fake_index_args(small_photo_dir, tmp_path / "v2", "v2", "--previous", str(tmp_path / "v1"))
    )
    name = Path(parquet_files(str(tmp_path / "v1" / "table"))[0]).name
    shared = tmp_path / "v2" / "table" / name
    assert shared.stat().st_ino == (tmp_path / "v1" / "table" / name).stat().st_ino
    # An interrupted update left a name in its folder that shares the base's file; the next
    # attempt removes it instead of writing through it.
    (tmp_path / "v3" / "table").mkdir(parents=True)
    os.link(shared, tmp_path / "v3" / "table" / name)
    # One row replaced: the update rewrites that very file under that very name.
    one_row = tmp_path / "one-row.parquet"
    pq.write_table(pq.read_table(shared).slice(0, 1), one_row)
    update_index(
        UpdateRequest(str(tmp_path / "v2"), str(tmp_path / "v3"), [str(one_row)], version="v3")
    )
    assert (tmp_path / "v3" / "table" / name).stat().st_ino != shared.stat().st_ino
    verify_files(str(tmp_path / "v2"), read_manifest(str(tmp_path / "v2")))
    # Retention deletes a version: the versions that share its files keep them.
    delete_tree(str(tmp_path / "v1"))
    verify_files(str(tmp_path / "v2"), read_manifest(str(tmp_path / "v2")))
    verify_files(str(tmp_path / "v3"), read_manifest(str(tmp_path / "v3")))
