"""The capacity plan's arithmetic, and that it reads the committed benchmark results."""

from __future__ import annotations

import pytest

from benchmarks import capacity_plan as cp


def test_shards_and_replicas():
    assert cp.shards_for(100, 64) == 2 and cp.shards_for(64, 64) == 1 and cp.shards_for(1, 64) == 1
    assert cp.replicas_per_shard(1000, 400, replication=2) == 3
    assert cp.replicas_per_shard(10, 400, replication=2) == 2  # availability floor


def test_qps_and_worker_hours_scale_linearly():
    assert cp.shard_qps(10_000, 1_000_000, threads=1) == 10_000
    assert cp.shard_qps(10_000, 2_000_000, threads=4) == pytest.approx(20_000)
    assert cp.worker_hours(3600 * 100, 100) == 1


def test_plan_from_the_committed_results():
    encode, ann = cp.read_encode_rates(), cp.read_ann()
    assert ann["vectors"] == 1_000_000 and ann["qps_one_thread"] > 0 and ann["index_mib"] > 0
    assert encode["decode_full_size_per_core"] > 0 and encode["model_cpu_per_core"] > 0
    measured = {"table_bytes_per_image": 7000.0, "index_bytes_per_vector": 5200.0,
                "corpus_bytes_per_image": 20_000.0, "images": 300, "job_wall_s": 20.0}  # fmt: skip
    plan = cp.plan(measured, encode, ann)
    assert plan["table_total_tib"] == pytest.approx(7000 * 1e9 / 2**40)
    serving = {s["choice"]: s for s in plan["serving"]}
    today = serving["1280-d, float32 reorder (today's index)"]
    compact = serving["256-d PCA, int8 reorder"]
    assert today["shards"] > compact["shards"] and today["machines"] > compact["machines"]
    for row in plan["serving"]:
        assert row["vectors_per_shard"] * row["shards"] == pytest.approx(1e9)
        assert row["bytes_per_vector"] * row["vectors_per_shard"] <= 64 * 2**30
    cpu, gpu = plan["dataflow"]
    assert gpu["images_per_s_per_worker"] > cpu["images_per_s_per_worker"]
    assert cpu["incremental_worker_hours"] == pytest.approx(cpu["full_worker_hours"] / 100)
    text = cp.render(measured, encode, ann, plan, cp.ASSUMPTIONS, {"run_at": "t", "machine": "m"})
    assert "Where the plan breaks first" in text and "not measured" in text
