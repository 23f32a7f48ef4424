"""Incremental indexing: the one planner in a rewrite, the one decision of the way a run goes,
and real DirectRunner runs over a changing corpus that rewrite the previous table."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from encoders.base import EncoderSpec
from encoders.registry import create_image_encoder, image_encoder_id
from index.schema import EMBEDDING_SCALE, compact_row, quantize_int8
from index.shards import SHARD_ASSIGNMENT
from index.table import parquet_files
from index.update_policy import (
    REBUILD,
    REWRITE,
    UPSERT,
    Changes,
    IndexFacts,
    RunRequest,
    UpdateDecision,
    decide,
)
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
from pipelines.types import HashedImage, ImageRef, image_id_for_uri
from tests.index_args import fake_index_args

ENC = "fake/v1"
REUSED, NEEDS_JOINT = "reused", "needs_joint"
REWRITING = ReusePlan(
    index_dir="", previous_version="v1", encoder_id=ENC, decision=UpdateDecision(REWRITE, "t")
)


def _hashed(uri: str, sha: str = "aa") -> HashedImage:
    return HashedImage(ImageRef(uri, image_id_for_uri(uri), '{"k": 1}'), sha, 10)


def _stored(image_id: str = "old-id", encoder: str = ENC, **extra) -> dict:
    return {
        "image_id": image_id,
        "uri": "/old/place.jpg",
        "duplicate_uris": ["/old/dup.jpg"],
        "sha256": "aa",
        "num_bytes": 10,
        "width": 3,
        "height": 2,
        "embedding": [0.6, 0.8],
        "encoder": encoder,
        "metadata": "",
        **extra,
    }


def plan_rewrite(currents, stored_rows, joint_model_id=None, required=()):
    """Plan one content in a rewrite, and re-read its stored row as the diff does:
    ``(REUSED | NEEDS_JOINT, row)``, ``(ENCODE, UniqueImage)`` or None when it left."""
    plan = dataclasses.replace(REWRITING, joint_model_id=joint_model_id, required=required)
    keys = [{**row, SOURCE_FILE: "/v1/table/e-0.parquet"} for row in stored_rows]
    decision = plan_content("aa", currents, keys, plan)
    if decision.action is None:
        return None
    if decision.action == ENCODE:
        return ENCODE, decision.unique
    assert decision.action == REFRESH  # a rewrite writes every reused row again
    stored = next(r for r in stored_rows if r["image_id"] == decision.refresh.stored_id)
    row = refreshed_row(stored, decision.refresh)
    return (NEEDS_JOINT if decision.refresh.needs_joint else REUSED), row


def test_plan_reuses_stored_row_under_the_current_identity():
    currents = [_hashed("/new/place.jpg"), _hashed("/new/zdup.jpg")]
    action, row = plan_rewrite(currents, [_stored()])
    assert action == REUSED
    assert row["embedding"] == [0.6, 0.8] and (row["width"], row["height"]) == (3, 2)
    assert row["image_id"] == image_id_for_uri("/new/place.jpg") and row["uri"] == "/new/place.jpg"
    assert row["duplicate_uris"] == ["/new/zdup.jpg"] and row["metadata"] == '{"k": 1}'


def test_a_rewrite_writes_unchanged_rows_again_where_in_place_keeps_them():
    stored = _stored(image_id_for_uri("/c/a.jpg"), uri="/c/a.jpg", duplicate_uris=[])
    stored["metadata"] = '{"k": 1}'
    key = {**stored, SOURCE_FILE: "/v1/table/e-0.parquet"}
    in_place = dataclasses.replace(REWRITING, decision=UpdateDecision(UPSERT, "t"))
    assert plan_content("aa", [_hashed("/c/a.jpg")], [key], in_place).action == KEEP
    rewritten = plan_content("aa", [_hashed("/c/a.jpg")], [key], REWRITING)
    assert rewritten.action == REFRESH and rewritten.deleted == []
    assert rewritten.refresh.stored_id == rewritten.refresh.image_id == stored["image_id"]


def test_plan_hands_int8_rows_back_as_float32_for_the_writer():
    codes, scales = quantize_int8(np.array([[0.6, 0.8]], np.float32))
    stored = _stored(embedding=codes[0].tolist(), **{EMBEDDING_SCALE: float(scales[0])})
    action, row = plan_rewrite([_hashed("/new.jpg")], [stored])
    assert action == REUSED and EMBEDDING_SCALE not in row
    np.testing.assert_allclose(row["embedding"], [0.6, 0.8], atol=0.01)
    # Written as int8 again, the row gets back exactly the codes and scale it was stored with.
    again = compact_row(row, "int8")
    assert again["embedding"] == codes[0].tolist()
    assert again[EMBEDDING_SCALE] == pytest.approx(float(scales[0]), rel=1e-2)


def test_plan_reuses_only_rows_with_this_runs_tags_and_captions():
    required = (("tag_model", "head-2"), ("caption_model", "cap/1"))
    current = [_hashed("/new.jpg")]
    # Made without tags (an older run, its key records read as None) or by another head:
    # encoded again, with tags this time.
    untagged = _stored(tag_model=None, caption_model=None)
    assert plan_rewrite(current, [untagged], None, required)[0] == ENCODE
    stale = _stored(tag_model="head-1", caption_model="cap/1")
    assert plan_rewrite(current, [stale], None, required)[0] == ENCODE
    fresh = _stored(tag_model="head-2", caption_model="cap/1", tags=[], caption="a dog")
    action, row = plan_rewrite(current, [fresh], None, required)
    assert action == REUSED and row["caption"] == "a dog"
    # A run that adds no tags reuses rows whatever tags they carry (the writer drops them).
    assert plan_rewrite(current, [stale])[0] == REUSED


def test_plan_encodes_new_content_and_rows_of_another_encoder_version():
    action, unique = plan_rewrite([_hashed("/a.jpg")], [])
    assert action == ENCODE and unique.ref.uri == "/a.jpg"
    action, unique = plan_rewrite([_hashed("/a.jpg")], [_stored(encoder="fake/v0")])
    assert action == ENCODE and unique.ref.uri == "/a.jpg"


def test_plan_drops_content_that_left_the_corpus():
    assert plan_rewrite([], [_stored()]) is None


def test_plan_picks_one_stored_row_deterministically():
    rows = [_stored("b", embedding=[1.0, 0.0]), _stored("a", embedding=[0.0, 1.0])]
    _, row = plan_rewrite([_hashed("/x.jpg")], rows)
    assert row["embedding"] == [0.0, 1.0]


def test_plan_joint_model_version_decides_what_is_recomputed():
    current = [_hashed("/x.jpg")]
    same = _stored(joint_embedding=[1.0], joint_model="dual/v2")
    action, row = plan_rewrite(current, [same], "dual/v2")
    assert action == REUSED and row["joint_embedding"] == [1.0]
    # Another joint model version: keep the image embedding, recompute only the joint one.
    action, row = plan_rewrite(current, [same], "dual/v3")
    assert action == NEEDS_JOINT and "joint_embedding" not in row and row["embedding"] == [0.6, 0.8]
    # A run without a joint model writes no joint columns.
    action, row = plan_rewrite(current, [same], None)
    assert action == REUSED and "joint_model" not in row


def test_plan_dedupes_the_copies_of_one_content_itself():
    # Deduplication runs in the planner (one shuffle for both): one image, the rest duplicates.
    action, unique = plan_rewrite([_hashed("/b.jpg"), _hashed("/a.jpg")], [])
    assert action == ENCODE and unique.ref.uri == "/a.jpg" and unique.duplicate_uris == ("/b.jpg",)


def _facts(**changed) -> IndexFacts:
    facts = IndexFacts(
        version="v1",
        dim=16,
        quantize="float32",
        assignment=SHARD_ASSIGNMENT,
        shard_dirs=("index",),
        shard_kinds=("brute_force",),
        built_from="v1",
        built_count=100,
        changed_since_build=0,
    )
    return dataclasses.replace(facts, **changed)


def test_one_decision_before_the_job_and_after_it():
    asked = RunRequest(1)
    before = decide(_facts(), asked)
    assert before.way == UPSERT and before.in_place and before.changed_fraction is None
    mismatch = decide(_facts(table_mismatch="rows of f were not all made by encoder x"), asked)
    assert (mismatch.way, mismatch.reason) == (REWRITE, "rows of f were not all made by encoder x")
    assert decide(_facts(), RunRequest(2)).way == REWRITE
    assert "bfloat16" in decide(_facts(), RunRequest(1, "bfloat16")).reason
    assert "autotunes" in decide(_facts(), RunRequest(1, target_recall=0.9)).reason
    # After the job, with the change counts: the rebuild rule.
    assert decide(_facts(), asked, Changes(5, 0, (105,))).way == UPSERT
    many = decide(_facts(changed_since_build=8), asked, Changes(5, 0, (105,)))
    assert many.way == REBUILD and many.in_place and many.changed_fraction == pytest.approx(0.13)


def test_encoder_id_without_building_matches_the_built_encoder(mobilenet_weights):
    fake = EncoderSpec(name="fake", weights="none", image_size=64)
    assert image_encoder_id(fake) == create_image_encoder(fake).encoder_id
    # The Keras id is derived from the weights file without TensorFlow; compare it with the
    # version string the real encoder builds (the weights hash and size are in it).
    spec = EncoderSpec(name="mobilenet_v2", weights=str(mobilenet_weights), image_size=224)
    from encoders.keras_backbones import weights_file_sha256
    from encoders.keras_image import GRAPH_VERSION

    tag = weights_file_sha256(mobilenet_weights)[:12]
    assert image_encoder_id(spec) == f"mobilenet_v2/{GRAPH_VERSION}-{tag}-224"


def _table(out: Path) -> dict[str, dict]:
    table = pq.ParquetDataset(parquet_files(str(out / "table"))).read()
    return {row["uri"]: row for row in table.to_pylist()}


def _embedding_bytes(out: Path) -> dict[str, bytes]:
    table = pq.ParquetDataset(parquet_files(str(out / "table"))).read()
    flat = table.column("embedding").combine_chunks().values.to_numpy()
    dim = len(table.column("embedding")[0])
    uris = table.column("uri").to_pylist()
    return {uri: flat[i * dim : (i + 1) * dim].tobytes() for i, uri in enumerate(uris)}


def test_second_run_reuses_unchanged_rows_and_reflects_every_change(
    small_photo_dir, coco_photos, tmp_path
):
    corpus = small_photo_dir
    photos = sorted(corpus.glob("*.jpg"))
    first = index_job.run(fake_index_args(corpus, tmp_path / "v1", "v1"))
    assert first.counts["indexed"] == 6 and "reused" not in first.counts
    before = _embedding_bytes(tmp_path / "v1")

    added = corpus / "added.jpg"
    shutil.copy(coco_photos[7], added)
    changed, deleted, moved = photos[0], photos[1], photos[2]
    shutil.copy(coco_photos[6], changed)  # same uri, new bytes
    deleted.unlink()
    moved_to = corpus / "sub" / "moved.jpg"
    moved_to.parent.mkdir()
    moved.rename(moved_to)  # same bytes, new uri: reused under its new identity

    second = index_job.run(
        fake_index_args(corpus, tmp_path / "v2", "v2", "--previous", str(tmp_path / "v1"))
    )
    rows = _table(tmp_path / "v2")
    expected = {str(p) for p in photos[3:]} | {str(added), str(changed), str(moved_to)}
    assert set(rows) == expected
    assert {r["image_id"] for r in rows.values()} == {image_id_for_uri(u) for u in expected}
    c = second.counts
    assert (c["inputs"], c["indexed"], c["reused"], c["encoded"]) == (6, 6, 4, 2)
    assert c["previous_dropped"] == 2  # the deleted photo and the old bytes of the changed one
    assert second.manifest.counts["reused"] == 4

    after = _embedding_bytes(tmp_path / "v2")
    for photo in photos[3:]:
        assert after[str(photo)] == before[str(photo)]  # byte-identical, not re-encoded
    assert after[str(moved_to)] == before[str(moved)]
    assert after[str(changed)] != before[str(changed)]

    # The incremental table equals a full run over the same corpus, row for row.
    index_job.run(fake_index_args(corpus, tmp_path / "full", "full"))
    assert _table(tmp_path / "full") == rows


def test_another_encoder_version_in_the_previous_table_means_a_full_reencode(
    small_photo_dir, tmp_path
):
    index_job.run(fake_index_args(small_photo_dir, tmp_path / "v1", "v1"))
    # Stamp the stored rows as made by an older version of the encoder.
    for path in parquet_files(str(tmp_path / "v1" / "table")):
        table = pq.read_table(path)
        column = table.schema.get_field_index("encoder")
        older = pa.array(["fake/v0"] * table.num_rows, pa.string())
        pq.write_table(table.set_column(column, table.schema.field(column), older), path)
    second = index_job.run(
        fake_index_args(small_photo_dir, tmp_path / "v2", "v2", "--previous", str(tmp_path / "v1"))
    )
    assert (second.counts["reused"], second.counts["encoded"]) == (0, 6)
    assert {r["encoder"] for r in _table(tmp_path / "v2").values()} == {ENC}


def test_a_change_of_table_storage_between_runs_converts_reused_rows(small_photo_dir, tmp_path):
    from index.table import read_embedding_table

    index_job.run(
        fake_index_args(small_photo_dir, tmp_path / "v1", "v1", "--embedding_storage", "int8")
    )
    second = index_job.run(
        fake_index_args(small_photo_dir, tmp_path / "v2", "v2", "--previous", str(tmp_path / "v1"))
    )
    assert (second.counts["reused"], second.counts["encoded"]) == (6, 0)
    old = read_embedding_table(parquet_files(str(tmp_path / "v1" / "table")))
    new = read_embedding_table(parquet_files(str(tmp_path / "v2" / "table")))
    assert (
        pq.read_schema(parquet_files(str(tmp_path / "v2" / "table"))[0])
        .field("embedding")
        .type.value_type
        == pa.float32()
    )
    order = {image_id: row for row, image_id in enumerate(new.image_ids)}
    np.testing.assert_allclose(
        new.embeddings[[order[i] for i in old.image_ids]], old.embeddings, atol=1e-6
    )


def test_previous_must_be_a_complete_other_version(small_photo_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a publish root"):
        index_job.run(
            fake_index_args(small_photo_dir, tmp_path / "v2", "v2", "--previous", str(tmp_path))
        )
    index_job.run(fake_index_args(small_photo_dir, tmp_path / "v1", "v1"))
    with pytest.raises(ValueError, match="resolves to --out"):
        index_job.run(
            fake_index_args(
                small_photo_dir, tmp_path / "v1", "v1", "--previous", str(tmp_path / "v1")
            )
        )


def test_joint_model_rows_reuse_the_image_embedding_and_the_matching_joint_one(
    small_photo_dir, tmp_path
):
    from tests.pipelines.test_joint_index import KIND_DUAL, _save

    models = tmp_path / "models"
    model, folder = _save(models, "dual-test", KIND_DUAL)
    joint = ("--models", str(models), "--joint_model", "dual-test")
    index_job.run(fake_index_args(small_photo_dir, tmp_path / "v1", "v1"))  # no joint column yet
    second = index_job.run(
        fake_index_args(
            small_photo_dir, tmp_path / "v2", "v2", "--previous", str(tmp_path / "v1"), *joint
        )
    )
    c = second.counts
    assert (c["reused"], c["encoded"], c["joint_recomputed"]) == (6, 0, 6)
    assert _embedding_bytes(tmp_path / "v2") == _embedding_bytes(tmp_path / "v1")
    rows = _table(tmp_path / "v2")
    embedding = np.array([rows[u]["embedding"] for u in sorted(rows)], np.float32)
    expected = model.embed_image_features(embedding)
    np.testing.assert_allclose(
        [rows[u]["joint_embedding"] for u in sorted(rows)], expected, atol=1e-5
    )
    assert {r["joint_model"] for r in rows.values()} == {f"dual-test/{folder.name}"}
    # Same encoder and joint model version: the whole row is reused, joint column included.
    third = index_job.run(
        fake_index_args(
            small_photo_dir, tmp_path / "v3", "v3", "--previous", str(tmp_path / "v2"), *joint
        )
    )
    assert (third.counts["reused"], third.counts["joint_recomputed"]) == (6, 0)
    assert _table(tmp_path / "v3") == rows
