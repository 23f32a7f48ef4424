"""index_update: ScaNN upsert/delete on published shards, a new version, and the rebuild rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index.build import BuildConfig, build_index
from index.manifest import read_manifest, verify_files
from index.schema import embedding_table_schema
from index.shards import shard_of_ids
from index.update import UpdateRequest, main, update_index
from index.update_policy import Changes, IndexFacts, RunRequest, decide
from serving.searcher import ImageSearcher
from tests.index.test_build_index import ENCODER_SPEC, table_rows, write_embedding_table

DIM = 16


def write_rows(path: Path, rows: list[dict], dim: int = DIM) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=embedding_table_schema(dim)), path)
    return str(path)


def build_base(out: Path, num_rows: int = 300, num_shards: int = 1, dim: int = DIM):
    rows, embeddings = table_rows(num_rows, dim, seed=1)
    write_embedding_table(out, rows, dim, num_files=3)
    build_index(str(out), BuildConfig("v1", ENCODER_SPEC, k=10, num_shards=num_shards), {})
    return rows, embeddings


def ids_of(hits) -> list[str]:
    return [hit.image_id for hit in hits]


@pytest.mark.parametrize("num_shards", [1, 3])
def test_upserted_rows_are_found_and_deleted_rows_never_return(tmp_path: Path, num_shards) -> None:
    base, out = tmp_path / "v1", tmp_path / "v2"
    rows, embeddings = build_base(base, num_shards=num_shards)
    new_rows, new_vectors = table_rows(12, DIM, seed=2)  # other uris, so other ids
    # One existing image gets a new vector (a re-encoded photo): upsert replaces it.
    replaced, replacement = table_rows(1, DIM, seed=3)
    replaced[0]["image_id"], replaced[0]["uri"] = rows[40]["image_id"], rows[40]["uri"]
    added = write_rows(tmp_path / "new" / "rows.parquet", new_rows + replaced)
    deleted = [rows[i]["image_id"] for i in (0, 7, 99, 150, 299)]

    result = update_index(UpdateRequest(str(base), str(out), [added], deleted, "v2"))

    assert not result.decision.rebuild and result.upserted == 13 and result.deleted == 5
    manifest = read_manifest(str(out))
    verify_files(str(out), manifest)
    assert manifest.counts == {"indexed": 300 + 12 - 5, "upserted": 13, "deleted": 5}
    assert manifest.lineage == {
        "built_from": "v1",
        "built_count": 300,
        "updates": [{"version": "v2", "base": "v1", "upserted": 13, "deleted": 5}],
    }
    assert len(manifest.shards) == num_shards
    searcher = ImageSearcher.load(str(out))
    assert len(searcher) == 307
    # Exact self-match of every new vector, and the replaced image under its new vector.
    for hits, row in zip(searcher.search_vectors(new_vectors, 1), new_rows, strict=True):
        assert hits[0].image_id == row["image_id"] and hits[0].score == pytest.approx(1, abs=1e-5)
        assert hits[0].uri == row["uri"]
    assert ids_of(searcher.search_vector(replacement[0], 1)) == [rows[40]["image_id"]]
    row_of = {searcher.hit_for_row(r, 0).image_id: r for r in range(len(searcher))}
    np.testing.assert_array_equal(searcher.vectors[row_of[rows[40]["image_id"]]], replacement[0])
    # Deleted ids are gone from every answer, even when asking for the whole index.
    everything = searcher.search_vectors(embeddings[[0, 7, 99]], len(searcher))
    assert all(not set(deleted) & set(ids_of(hits)) for hits in everything)
    assert all(len(hits) == 307 for hits in everything)
    # New ids live in the shard the build's assignment gives them.
    if num_shards > 1:
        from index.shards import read_ids

        for number, shard in enumerate(manifest.shards):
            shard_ids, _ = read_ids(str(out / shard["ids_file"]))
            assert set(shard_of_ids(shard_ids, num_shards).tolist()) <= {number}
    # The base version is untouched and still serves its 300 images.
    verify_files(str(base), read_manifest(str(base)))
    assert len(ImageSearcher.load(str(base))) == 300


def test_untouched_shards_are_copied_byte_for_byte(tmp_path: Path) -> None:
    base, out = tmp_path / "v1", tmp_path / "v2"
    rows, _ = build_base(base, num_shards=3)
    deleted = rows[5]["image_id"]
    update_index(UpdateRequest(str(base), str(out), [], [deleted], "v2"))
    before, after = read_manifest(str(base)), read_manifest(str(out))
    holder = int(shard_of_ids([deleted], 3)[0])
    for number, (old, new) in enumerate(zip(before.shards, after.shards, strict=True)):
        assert (old == new) == (number != holder)
    assert after.counts["indexed"] == 299


def test_tree_ah_shard_takes_upserts(tmp_path: Path) -> None:
    """Above 20k rows the shard is a ScaNN tree: new rows go to existing leaves, still found."""
    base, out = tmp_path / "v1", tmp_path / "v2"
    rows, embeddings = build_base(base, num_rows=20_500, dim=8)
    assert read_manifest(str(base)).scann_params["kind"] == "tree_ah"
    new_rows, new_vectors = table_rows(100, 8, seed=5)
    added = write_rows(tmp_path / "new.parquet", new_rows, dim=8)
    deleted = [row["image_id"] for row in rows[:100]]
    update_index(UpdateRequest(str(base), str(out), [added], deleted, "v2"))
    searcher = ImageSearcher.load(str(out), verify=False)
    assert searcher.manifest.scann_params["kind"] == "tree_ah"
    found = searcher.search_vectors(new_vectors, 1)
    assert [hits[0].image_id for hits in found] == [row["image_id"] for row in new_rows]
    for hits in searcher.search_vectors(embeddings[:100], 10):
        assert not set(deleted) & set(ids_of(hits))


def test_rebuild_when_too_much_changed(tmp_path: Path) -> None:
    base, v2, v3 = tmp_path / "v1", tmp_path / "v2", tmp_path / "v3"
    build_base(base)
    first, first_vectors = table_rows(20, DIM, seed=6)  # 20 of 300: 6.7%, patched
    result = update_index(
        UpdateRequest(str(base), str(v2), [write_rows(tmp_path / "a.parquet", first)], [], "v2")
    )
    assert not result.decision.rebuild
    second, _ = table_rows(15, DIM, seed=7)  # 35 since the build: 11.7% > 10%, rebuilt
    result = update_index(
        UpdateRequest(str(v2), str(v3), [write_rows(tmp_path / "b.parquet", second)], [], "v3")
    )
    assert result.decision.rebuild and "exceeds" in result.decision.reason
    manifest = read_manifest(str(v3))
    assert manifest.lineage == {"built_from": "v3", "built_count": 335, "updates": []}
    assert manifest.counts["indexed"] == 335
    searcher = ImageSearcher.load(str(v3))
    assert ids_of(searcher.search_vector(first_vectors[3], 1)) == [first[3]["image_id"]]


def test_rebuild_rule_on_scann_kind_and_threshold(tmp_path: Path) -> None:
    base = tmp_path / "v1"
    build_base(base)
    manifest = read_manifest(str(base))
    facts = IndexFacts.of(manifest)

    def rule(upserted: int, deleted: int, counts: list[int], fraction: float = 0.5):
        request = RunRequest(1, max_changed_fraction=fraction, k=10)
        return decide(facts, request, Changes(upserted, deleted, tuple(counts)))

    assert not rule(10, 10, [300]).rebuild
    grown = rule(0, 0, [25_000])
    assert grown.rebuild and "tree_ah" in grown.reason
    assert rule(0, 0, [0]).rebuild
    assert rule(1, 0, [301], fraction=0.0).rebuild
    with pytest.raises(ValueError, match="max_changed_fraction"):
        RunRequest(1, max_changed_fraction=-0.1)


def test_bad_updates_are_refused(tmp_path: Path) -> None:
    base, out = tmp_path / "v1", tmp_path / "v2"
    rows, _ = build_base(base)
    with pytest.raises(ValueError, match="not in index version v1"):
        update_index(UpdateRequest(str(base), str(out), [], ["no-such-id"], "v2"))
    clash = write_rows(tmp_path / "clash.parquet", [rows[3]])
    with pytest.raises(ValueError, match="both deleted and upserted"):
        update_index(UpdateRequest(str(base), str(out), [clash], [rows[3]["image_id"]], "v2"))
    other, _ = table_rows(3, DIM, seed=9, encoder_id="other/2")
    with pytest.raises(ValueError, match="other/2"):
        update_index(
            UpdateRequest(
                str(base), str(out), [write_rows(tmp_path / "o.parquet", other)], [], "v2"
            )
        )
    with pytest.raises(ValueError, match="immutable"):
        update_index(UpdateRequest(str(base), str(base), [], [], "v2"))
    assert not (out / "manifest.json").exists()  # nothing above published a version
    published = tmp_path / "published"
    published.mkdir()
    (published / "manifest.json").write_bytes((base / "manifest.json").read_bytes())
    with pytest.raises(ValueError, match="already holds"):
        update_index(UpdateRequest(str(base), str(published), [], [], "v2"))


def test_command_line(tmp_path: Path, capsys) -> None:
    base, out = tmp_path / "v1", tmp_path / "v2"
    rows, _ = build_base(base)
    (tmp_path / "gone.txt").write_text(f"{rows[1]['image_id']}\n{rows[2]['image_id']}\n")
    main(["--base", str(base), "--out", str(out), "--delete", str(tmp_path / "gone.txt"),
          "--run_version", "v2"])  # fmt: skip
    assert "deleted 2" in capsys.readouterr().out
    assert len(ImageSearcher.load(str(out))) == 298


# --- gs:// end to end, on the GCS emulator -----------------------------------------------------


@pytest.fixture(scope="module")
def gcs_bucket():
    """A bucket on an in-process GCS emulator, reached through Beam's own gs:// filesystem."""
    import os
    import socket

    from apache_beam.internal.gcp import auth
    from gcp_storage_emulator.server import create_server

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="imgsearch-test")
    server.start()
    saved_env = os.environ.get("STORAGE_EMULATOR_HOST")
    saved_auth = (auth._Credentials._credentials_init, auth._Credentials._credentials)
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    # Anonymous, as the emulator wants: skips Beam's ~20 s of retried credential lookups.
    auth._Credentials._credentials_init, auth._Credentials._credentials = True, None
    try:
        yield "gs://imgsearch-test"
    finally:
        auth._Credentials._credentials_init, auth._Credentials._credentials = saved_auth
        if saved_env is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = saved_env
        server.stop()


def test_sharded_build_serve_and_update_on_gcs(gcs_bucket: str, tmp_path: Path) -> None:
    from apache_beam.io.filesystems import FileSystems

    base, out = f"{gcs_bucket}/v1", f"{gcs_bucket}/v2"
    rows, embeddings = table_rows(240, DIM, seed=11)
    for number, part in enumerate((rows[:120], rows[120:])):
        with FileSystems.create(f"{base}/table/embeddings-{number:05d}-of-00002.parquet") as f:
            pq.write_table(pa.Table.from_pylist(part, schema=embedding_table_schema(DIM)), f)
    build_index(base, BuildConfig("v1", ENCODER_SPEC, k=10, num_shards=2), {})
    searcher = ImageSearcher.load(base)
    assert len(searcher.manifest.shards) == 2 and len(searcher) == 240
    assert ids_of(searcher.search_vector(embeddings[5], 1)) == [rows[5]["image_id"]]

    new_rows, new_vectors = table_rows(6, DIM, seed=12)
    added = write_rows(tmp_path / "new.parquet", new_rows)
    update_index(UpdateRequest(base, out, [added], [rows[0]["image_id"]], "v2"))
    updated = ImageSearcher.load(out)
    assert len(updated) == 245
    found = updated.search_vectors(new_vectors, 1)
    assert [hits[0].image_id for hits in found] == [row["image_id"] for row in new_rows]
    assert rows[0]["image_id"] not in ids_of(updated.search_vector(embeddings[0], 20))


def test_joint_shards_take_the_new_rows_too(tmp_path: Path) -> None:
    base, out = tmp_path / "v1", tmp_path / "v2"
    rng = np.random.default_rng(13)

    def with_joint(rows: list[dict]) -> np.ndarray:
        joint = rng.standard_normal((len(rows), 6)).astype(np.float32)
        joint /= np.linalg.norm(joint, axis=1, keepdims=True)
        for row, vector in zip(rows, joint, strict=True):
            row["joint_embedding"], row["joint_model"] = vector.tolist(), "dual/2"
        return joint

    rows, _ = table_rows(80, DIM, seed=14)
    with_joint(rows)
    schema = embedding_table_schema(DIM, 6)
    (base / "table").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), base / "table" / "e-0.parquet")
    build_index(str(base), BuildConfig("v1", ENCODER_SPEC, k=5), {})
    new_rows, _ = table_rows(4, DIM, seed=15)
    new_joint = with_joint(new_rows)
    added = tmp_path / "new.parquet"
    pq.write_table(pa.Table.from_pylist(new_rows, schema=schema), added)
    # Rows without the index's joint column are refused: the joint shard would lose them.
    plain, _ = table_rows(2, DIM, seed=16)
    with pytest.raises(ValueError, match="joint_embedding"):
        update_index(
            UpdateRequest(
                str(base), str(out), [write_rows(tmp_path / "p.parquet", plain)], [], "v2"
            )
        )

    update_index(UpdateRequest(str(base), str(out), [str(added)], [rows[1]["image_id"]], "v2"))
    searcher = ImageSearcher.load(str(out))
    assert searcher.joint_index["shard"]["count"] == 83
    found = searcher.search_joint_vectors(new_joint, 1)
    assert [hits[0].image_id for hits in found] == [row["image_id"] for row in new_rows]


def test_command_line_on_a_publish_root(tmp_path: Path, capsys) -> None:
    from index.publish import read_pointer, resolve_index, version_dir, write_pointer

    root = tmp_path / "root"
    build_base(Path(version_dir(str(root), "v1")))
    write_pointer(str(root), "v1")
    new_rows, new_vectors = table_rows(3, DIM, seed=17)
    added = write_rows(tmp_path / "new.parquet", new_rows)
    main(["--root", str(root), "--add", added, "--run_version", "v2"])
    assert "upserted 3" in capsys.readouterr().out
    pointer = read_pointer(str(root))
    assert (pointer.version, pointer.previous) == ("v2", "v1")
    searcher = ImageSearcher.load(resolve_index(str(root))[0])
    assert ids_of(searcher.search_vector(new_vectors[0], 1)) == [new_rows[0]["image_id"]]
    with pytest.raises(SystemExit):
        main(["--root", str(root), "--base", str(root), "--run_version", "v3"])
