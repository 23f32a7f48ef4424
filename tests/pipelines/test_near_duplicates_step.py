"""The near-duplicate step on the real DirectRunner: Flickr8k photos and their variants indexed
by the real index job, and the step's Beam transform against the brute-force oracle."""

from __future__ import annotations

import shutil
from pathlib import Path

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from benchmarks.variant_corpus import variant_bytes
from index.build import BuildConfig, build_index
from index.manifest import read_manifest, verify_files
from index.near_duplicates import (
    DEFAULT_THRESHOLD,
    NEAR_DUPLICATES_DIR,
    NEIGHBOURS,
    exact_neighbour_pairs,
    exact_pairs,
    group_image_pairs,
    group_pairs,
    pair_precision_recall,
    read_group_table,
    read_groups,
)
from index.shards import read_ids
from index.table import parquet_files, read_embedding_table
from pipelines import index_job
from pipelines.near_duplicates import (
    FindNearDuplicates,
    NearDuplicateConfig,
    beam_near_duplicates,
    table_slices,
)
from pipelines.types import image_id_for_uri
from tests.index.test_build_index import ENCODER_SPEC, table_rows, write_embedding_table
from tests.index_args import fake_index_args

PHOTOS, VARIANTS = 5, 3
# The fake encoder (an 8x8 thumbnail) keeps crops and brightness changes close but not mirrors.
FAKE_THRESHOLD = ("--near_duplicates", "on", "--near_duplicate_threshold", "0.9")


@pytest.fixture(scope="module")
def variant_corpus(tmp_path_factory, assets_dir) -> tuple[Path, dict[str, str]]:
    """Five Flickr8k photos and three variants of each (odd ones mirrored): 20 images.

    -> (folder, {image_id: the photo it comes from}): the true groups, by construction.
    """
    images = assets_dir / "datasets" / "flickr8k" / "images"
    names = sorted(
        (assets_dir / "datasets" / "flickr8k" / "splits" / "dev.txt").read_text().split()
    )
    if not (images / names[0]).is_file():
        pytest.skip("Flickr8k photos missing from the assets folder")
    folder = tmp_path_factory.mktemp("variants")
    origin = {}
    for name in names[:PHOTOS]:
        photo = images / name
        shutil.copy(photo, folder / name)
        origin[image_id_for_uri(str(folder / name))] = photo.stem
        for k in range(1, VARIANTS + 1):
            target = folder / f"{photo.stem}-v{k}.jpg"
            target.write_bytes(variant_bytes(photo, k))
            origin[image_id_for_uri(str(target))] = photo.stem
    return folder, origin


@pytest.fixture(scope="module")
def mobilenet_version(tmp_path_factory, variant_corpus, mobilenet_weights) -> Path:
    """The 20 images indexed by the real job with MobileNetV2 and the default threshold."""
    out = tmp_path_factory.mktemp("mobilenet") / "v1"
    folder, _ = variant_corpus
    index_job.run(["--corpus", str(folder), "--out", str(out), "--weights",
                   str(mobilenet_weights), "--run_version", "v1"])  # fmt: skip
    return out


@pytest.fixture(scope="module")
def fake_version(tmp_path_factory, variant_corpus) -> Path:
    out = tmp_path_factory.mktemp("fake") / "v1"
    index_job.run(fake_index_args(variant_corpus[0], out, "v1", *FAKE_THRESHOLD))
    return out


def _truth_and_groups(out: Path, origin: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    groups = read_groups(str(out), read_manifest(str(out)))
    ids = sorted(origin)
    photos = sorted(set(origin.values()))
    truth = np.array([photos.index(origin[i]) for i in ids])
    names = sorted(set(groups.values()))
    predicted = np.array([names.index(groups[i]) if i in groups else -1 for i in ids])
    return predicted, truth


@pytest.mark.slow
def test_mobilenet_groups_each_photo_with_its_variants(mobilenet_version, variant_corpus):
    out, (_, origin) = mobilenet_version, variant_corpus
    predicted, truth = _truth_and_groups(out, origin)
    assert pair_precision_recall(predicted, truth) == (1.0, 1.0)  # mirrors included
    manifest = read_manifest(str(out))
    verify_files(str(out), manifest)  # the near_duplicates file is listed and checked
    assert [e["path"] for e in manifest.files_under(NEAR_DUPLICATES_DIR)] == [
        f"{NEAR_DUPLICATES_DIR}/near_duplicates-00000-of-00001.parquet"
    ]
    c = manifest.counts
    assert (c["near_duplicate_images"], c["near_duplicate_groups"]) == (20, PHOTOS)
    assert c["near_duplicate_images"] + c["near_duplicate_singletons"] == c["indexed"] == 20


@pytest.mark.slow
def test_written_groups_are_the_exact_oracles(mobilenet_version):
    out = mobilenet_version
    table = read_embedding_table(parquet_files(str(out / "table")))
    found = exact_neighbour_pairs(table.embeddings, DEFAULT_THRESHOLD, NEIGHBOURS)
    # Under 20k rows the index is brute force: its pairs are every pair (k exceeds the groups).
    assert len(found) == len(exact_pairs(table.embeddings, DEFAULT_THRESHOLD))
    groups = group_pairs(len(table), found)
    ids = table.image_ids
    expected = {ids[m]: ids[r] for m, r in zip(groups.member, groups.representative, strict=True)}
    assert read_groups(str(out), read_manifest(str(out))) == expected
    written = read_group_table(str(out), read_manifest(str(out))).to_pylist()
    row_of = {image_id: row for row, image_id in enumerate(ids)}
    for row in written:
        cosine = (
            table.embeddings[row_of[row["image_id"]]]
            @ table.embeddings[row_of[row["representative"]]]
        )
        assert row["score"] == pytest.approx(float(cosine), abs=1e-5)
        assert row["score"] >= DEFAULT_THRESHOLD


def test_the_summary_counts_and_a_rerun_without_groups(fake_version, variant_corpus, tmp_path):
    out = tmp_path / "v1"
    shutil.copytree(fake_version, out)
    assert read_groups(str(out), read_manifest(str(out)))  # the fake encoder finds some too
    result = index_job.run(
        fake_index_args(variant_corpus[0], out, "v1", "--near_duplicates", "off")
    )
    assert "near-duplicates" not in result.summary()
    assert "near_duplicate_groups" not in result.manifest.counts
    assert read_groups(str(out), result.manifest) is None  # not computed: not "no groups"
    assert not (out / NEAR_DUPLICATES_DIR).exists()  # the earlier run's file is gone

    again = index_job.run(fake_index_args(variant_corpus[0], out, "v1", *FAKE_THRESHOLD))
    c = again.manifest.counts
    assert f"near-duplicates {c['near_duplicate_images']} images in " in again.summary()
    assert read_groups(str(out), again.manifest) == read_groups(
        str(fake_version), read_manifest(str(fake_version))
    )


def test_a_sharded_index_gives_the_groups_of_one_shard(fake_version, variant_corpus, tmp_path):
    out = tmp_path / "sharded"
    index_job.run(
        fake_index_args(variant_corpus[0], out, "v1", "--index_shards", "2", *FAKE_THRESHOLD)
    )
    manifest = read_manifest(str(out))
    assert len(manifest.shards) == 2
    verify_files(str(out), manifest)
    assert read_groups(str(out), manifest) == read_groups(
        str(fake_version), read_manifest(str(fake_version))
    )


def test_an_upsert_a_rebuild_and_a_rewrite_all_make_the_groups_of_a_fresh_build(
    fake_version, variant_corpus, tmp_path, monkeypatch
):
    folder = tmp_path / "corpus"
    shutil.copytree(variant_corpus[0], folder)
    last = sorted(folder.glob("*-v1.jpg"))[-1].name.split("-v")[0]
    held_back = sorted(folder.glob(f"{last}*"))
    for path in held_back:
        path.rename(tmp_path / path.name)
    index_job.run(fake_index_args(folder, tmp_path / "v1", "v1", *FAKE_THRESHOLD))
    assert read_groups(str(tmp_path / "v1"), read_manifest(str(tmp_path / "v1")))
    for path in held_back:
        (tmp_path / path.name).rename(path)
    previous = ("--previous", str(tmp_path / "v1"), *FAKE_THRESHOLD)
    upserted = index_job.run(
        fake_index_args(folder, tmp_path / "v2", "v2", *previous, "--max_changed_fraction", "2")
    )
    assert upserted.update is not None and not upserted.update.decision.rebuild
    manifest = read_manifest(str(tmp_path / "v2"))
    assert manifest == upserted.manifest
    verify_files(str(tmp_path / "v2"), manifest)
    assert "near-duplicates" in upserted.summary()

    # Ids derive from uris and the copied corpus has other ids (so other representatives
    # where scores tie): compare the groups by file name.
    full = _groups_by_name(fake_version)
    assert any(name.startswith(last) for group in full for name in group)
    # The upserted rows (the held-back photo and its variants) are grouped like the rest, by
    # joining them alone (the untouched groups carried over): the groups of a full build.
    assert _groups_by_name(tmp_path / "v2") == full
    assert manifest.counts["near_duplicate_rows_joined"] == len(held_back)
    assert f"{len(held_back)} rows joined again" in upserted.summary()
    # In place, but the changes are over --max_changed_fraction: the index is rebuilt, and the
    # groups with it.
    rebuilt = index_job.run(
        fake_index_args(folder, tmp_path / "v3", "v3", *previous, "--max_changed_fraction", "0")
    )
    assert rebuilt.update is not None and rebuilt.update.decision.rebuild
    assert read_manifest(str(tmp_path / "v3")) == rebuilt.manifest
    verify_files(str(tmp_path / "v3"), rebuilt.manifest)
    assert _groups_by_name(tmp_path / "v3") == full
    # A rewrite (another embedding storage: the table is written again) builds afresh too.
    rewritten = index_job.run(
        fake_index_args(folder, tmp_path / "v4", "v4", *previous, "--embedding_storage", "float16")
    )
    assert rewritten.update is None and rewritten.config.reuse is not None
    assert _groups_by_name(tmp_path / "v4") == full

    # Nothing changed since v2: its groups are copied, no self-join runs.
    def no_join(*args, **kwargs):
        raise AssertionError("a no-change update started the near-duplicate Beam job")

    monkeypatch.setattr(index_job, "beam_near_duplicates", no_join)
    again = ("--previous", str(tmp_path / "v2"), *FAKE_THRESHOLD, "--max_changed_fraction", "2")
    unchanged = index_job.run(fake_index_args(folder, tmp_path / "v5", "v5", *again))
    assert unchanged.update is not None and unchanged.counts["encoded"] == 0
    verify_files(str(tmp_path / "v5"), unchanged.manifest)
    assert _groups_by_name(tmp_path / "v5") == full
    assert unchanged.manifest.counts["near_duplicate_rows_joined"] == 0


def _groups_by_name(out: Path) -> set[frozenset[str]]:
    manifest = read_manifest(str(out))
    names = {}
    for shard in manifest.shards:
        ids, uris = read_ids(str(out / shard["ids_file"]))
        names.update({i: Path(u).name for i, u in zip(ids, uris, strict=True)})
    groups: dict[str, set[str]] = {}
    for image_id, group in read_groups(str(out), manifest).items():
        groups.setdefault(group, set()).add(names[image_id])
    return {frozenset(members) for members in groups.values()}


def test_int8_tables_are_decoded_before_the_self_join(fake_version, variant_corpus, tmp_path):
    out = tmp_path / "int8"
    index_job.run(fake_index_args(variant_corpus[0], out, "v1", "--embedding_storage", "int8",
                                  *FAKE_THRESHOLD))  # fmt: skip
    groups = read_groups(str(out), read_manifest(str(out)))
    assert groups == read_groups(str(fake_version), read_manifest(str(fake_version)))


def _planted_table(out: Path, seed: int = 4) -> tuple[list[str], np.ndarray]:
    """A table of 120 rows: 20 clusters of 3 tight copies, then 60 lone rows, in 3 files."""
    rng = np.random.default_rng(seed)
    rows, _ = table_rows(120, 32, seed=seed)
    centres = rng.standard_normal((80, 32)).astype(np.float32)
    vectors = np.concatenate([np.repeat(centres[:20], 3, axis=0), centres[20:]])
    vectors += 0.05 * rng.standard_normal(vectors.shape).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for row, vector in zip(rows, vectors, strict=True):
        row["embedding"] = vector.tolist()
    write_embedding_table(out, rows, 32, num_files=3, seed=seed)
    return [row["image_id"] for row in rows], vectors


@pytest.mark.parametrize("num_shards", [1, 3])
def test_the_transform_matches_the_oracle_over_shards(tmp_path, num_shards):
    ids, vectors = _planted_table(tmp_path)
    manifest = build_index(
        str(tmp_path), BuildConfig("v1", ENCODER_SPEC, num_shards=num_shards), {}
    )
    oracle = exact_pairs(vectors, 0.9)
    expected = group_image_pairs(
        (ids[a], ids[b], s) for a, b, s in zip(oracle.left, oracle.right, oracle.score, strict=True)
    )
    assert len({row["near_duplicate_group"] for row in expected}) == 20
    slices = table_slices(parquet_files(str(tmp_path / "table")), rows_per_slice=16)
    assert sum(s.rows for s in slices) == 120 and len(slices) >= 3

    def rounded(rows):
        return [{**row, "score": round(row["score"], 4)} for row in rows]

    with TestPipeline() as p:
        rows = (
            p
            | "Slices" >> beam.Create(slices)
            | FindNearDuplicates(str(tmp_path), manifest, NearDuplicateConfig(threshold=0.9))
        )
        assert_that(rows | beam.Map(lambda r: rounded([r])[0]), equal_to(rounded(expected)))


def test_the_step_accounts_for_every_row(tmp_path):
    ids, _ = _planted_table(tmp_path)
    manifest = build_index(
        str(tmp_path), BuildConfig("v1", ENCODER_SPEC), {},
        near_duplicates=beam_near_duplicates(NearDuplicateConfig(threshold=0.9)),
    )  # fmt: skip
    assert manifest.counts["near_duplicate_images"] == 60
    assert manifest.counts["near_duplicate_groups"] == 20
    assert manifest.counts["near_duplicate_singletons"] == 60
    assert read_manifest(str(tmp_path)) == manifest
    verify_files(str(tmp_path), manifest)
    assert set(read_groups(str(tmp_path), manifest)) == set(ids[:60])


def test_bad_thresholds_are_refused_before_any_work(tmp_path):
    for bad in ("0", "1.5", "-1"):
        with pytest.raises(ValueError, match="--near_duplicate_threshold"):
            index_job.run(fake_index_args(tmp_path, tmp_path / "o", "v1", "--near_duplicates",
                                          "on", "--near_duplicate_threshold", bad))  # fmt: skip
    with pytest.raises(ValueError, match="neighbours"):
        NearDuplicateConfig(neighbours=1)
