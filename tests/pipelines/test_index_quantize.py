"""Quantized ScaNN indexes (``--index_quantize``): compact exact-scoring copies, real ScaNN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index.build import BuildConfig, build_index
from index.scann_index import ScannParams, exact_top_k
from index.update import UpdateRequest, update_index
from serving.searcher import ImageSearcher
from tests.index.test_build_index import ENCODER_SPEC, table_rows, write_embedding_table
from tests.index.test_index_update import write_rows

DIM = 32


def test_quantize_is_validated_and_omitted_from_json_when_float32() -> None:
    assert "quantize" not in ScannParams(kind="brute_force", num_neighbors=5).to_json()
    params = ScannParams(kind="brute_force", num_neighbors=5, quantize="int8")
    assert ScannParams.from_json(params.to_json()) == params
    assert ScannParams.from_json({"kind": "brute_force", "num_neighbors": 5}).quantize == "float32"
    with pytest.raises(ValueError, match="quantize"):
        ScannParams(kind="brute_force", num_neighbors=5, quantize="int4")


@pytest.mark.parametrize("quantize", ["bfloat16", "int8"])
def test_quantized_index_is_smaller_keeps_recall_and_takes_updates(
    tmp_path: Path, quantize: str
) -> None:
    rows, embeddings = table_rows(2000, DIM, seed=4)
    plain, small = tmp_path / "float32", tmp_path / quantize
    for out in (plain, small):
        write_embedding_table(out, rows, DIM, num_files=2)
    build_index(str(plain), BuildConfig("f", ENCODER_SPEC, k=10), {})
    manifest = build_index(
        str(small), BuildConfig("q", ENCODER_SPEC, k=10, num_shards=2, quantize=quantize), {}
    )
    assert all(s["scann_params"]["quantize"] == quantize for s in manifest.shards)
    names = {entry["path"].rsplit("/", 1)[1] for entry in manifest.files_under("index")}
    assert "dataset.npy" not in names and f"{quantize}_dataset.npy" in names
    # The exact-scoring copy is what shrinks (ids, AH codes and the rest stay as they are).
    stored = sum(e["bytes"] for e in manifest.files_under("index") if e["path"].endswith(
        f"/{quantize}_dataset.npy"))  # fmt: skip
    plain_stored = sum(
        e["bytes"] for e in _index_files(plain) if e["path"].endswith("/dataset.npy")
    )
    assert stored < {"bfloat16": 0.55, "int8": 0.3}[quantize] * plain_stored

    searcher = ImageSearcher.load(str(small))
    queries = embeddings[:300] + 0.3 * np.random.default_rng(1).standard_normal((300, DIM))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    truth, _ = exact_top_k(embeddings, queries, 10)
    row_of = {row["image_id"]: i for i, row in enumerate(rows)}
    found = searcher.search_vectors(queries, 10)
    recall = np.mean(
        [
            len({row_of[h.image_id] for h in hits} & set(t)) / 10
            for hits, t in zip(found, truth, strict=True)
        ]
    )
    assert recall >= 0.95

    new_rows, new_vectors = table_rows(5, DIM, seed=8)
    added = write_rows(tmp_path / "n.parquet", new_rows, DIM)
    update_index(
        UpdateRequest(str(small), str(tmp_path / "v2"), [added], [rows[0]["image_id"]], "v2")
    )
    updated = ImageSearcher.load(str(tmp_path / "v2"))
    assert [h[0].image_id for h in updated.search_vectors(new_vectors, 1)] == [
        row["image_id"] for row in new_rows
    ]


def _index_files(out: Path) -> list[dict]:
    from index.manifest import read_manifest

    return read_manifest(str(out)).files_under("index")


def test_quantize_with_target_recall_is_refused(tmp_path: Path) -> None:
    rows, _ = table_rows(20, DIM)
    write_embedding_table(tmp_path, rows, DIM, num_files=1)
    with pytest.raises(ValueError, match="float32 rescoring"):
        BuildConfig("v", ENCODER_SPEC, quantize="int8", target_recall=0.9)
    with pytest.raises(ValueError, match="quantize must be one of"):
        BuildConfig("v", ENCODER_SPEC, quantize="fp8")
