"""A real Airflow run of the nightly DAG: `airflow dags test` on SQLite, Beam DirectRunner."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def _run(cmd: list[str], env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    # Own process group: on a timeout the Beam subprocess the operator started dies too.
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{cmd[:3]} timed out after {timeout}s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def _table(version: Path) -> dict[str, tuple[str, bytes]]:
    """uri -> (sha256, embedding bytes) of a version's table."""
    table = pq.ParquetDataset(sorted(str(p) for p in (version / "table").glob("*.parquet"))).read()
    flat = table.column("embedding").combine_chunks().values.to_numpy()
    dim = len(table.column("embedding")[0])
    return {
        uri: (sha, flat[i * dim : (i + 1) * dim].tobytes())
        for i, (uri, sha) in enumerate(
            zip(table.column("uri").to_pylist(), table.column("sha256").to_pylist(), strict=True)
        )
    }


def _dags_test(env: dict[str, str], date: str, conf: dict) -> str:
    cmd = [AIRFLOW, "dags", "test", "imgsearch_nightly_index", date, "-c", json.dumps(conf)]
    ran = _run(cmd, env, timeout=300)
    assert ran.returncode == 0, ran.stdout[-5000:]
    return ran.stdout


@pytest.mark.slow
def test_nightly_dag_full_then_incremental_run_publishes_each_version(tmp_path: Path, coco_photos):
    """Run 1 indexes everything; run 2 (next logical date, after adding, changing and deleting
    photos) encodes only what changed, reuses the rest byte for byte, and switches the pointer.
    """
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    photos = [corpus / p.name for p in coco_photos[:4]]
    for source, photo in zip(coco_photos[:4], photos, strict=True):
        shutil.copy(source, photo)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        # The tasks import the project: this checkout, not another copy installed in the venv.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    migrated = _run([AIRFLOW, "db", "migrate"], env, timeout=180)
    assert migrated.returncode == 0, migrated.stdout[-3000:]
    root = tmp_path / "published"
    conf = {"corpus": str(corpus), "output_root": str(root), "encoder": "fake",
            "weights": "none", "beam_options": {"table_shards": 2},
            "embedding_storage": "float16",
            # Four photos, three changes: let the second run update the index in place anyway.
            "max_changed_fraction": 2.0}  # fmt: skip

    out = _dags_test(env, "2026-11-22", conf)
    assert "no eval set configured" in out
    v1 = root / "versions" / "20261122"
    manifest = json.loads((v1 / "manifest.json").read_text())
    assert manifest["version"] == "20261122"
    assert manifest["counts"]["inputs"] == manifest["counts"]["indexed"] == 4
    assert "reused" not in manifest["counts"]  # nothing published before: a full run
    tables = sorted((v1 / "table").glob("*.parquet"))
    assert len(tables) == 2  # beam_options reached the job
    embedding = pq.read_schema(tables[0]).field("embedding").type
    assert embedding.value_type == pa.float16()  # and so did the embedding_storage param
    assert json.loads((root / "latest.json").read_text())["version"] == "20261122"
    assert json.loads((v1 / "eval" / "gate.json").read_text())["passed"] is True
    before = _table(v1)

    added = corpus / "added.jpg"
    shutil.copy(coco_photos[5], added)
    shutil.copy(coco_photos[6], photos[0])  # changed: same name, other bytes
    photos[1].unlink()  # deleted
    out = _dags_test(env, "2026-11-23", conf)
    v2 = root / "versions" / "20261123"
    manifest = json.loads((v2 / "manifest.json").read_text())
    counts = manifest["counts"]
    assert (counts["indexed"], counts["reused"], counts["encoded"]) == (4, 2, 2)
    # Only the changed rows were written: v1's index updated in place (upsert 2, delete 1).
    assert manifest["lineage"]["updates"] == [
        {"version": "20261123", "base": "20261122", "upserted": 2, "deleted": 1}
    ]
    after = _table(v2)
    assert set(after) == {str(photos[0]), str(photos[2]), str(photos[3]), str(added)}
    for unchanged in photos[2:]:
        assert after[str(unchanged)] == before[str(unchanged)]  # reused byte for byte
    assert after[str(photos[0])][0] != before[str(photos[0])][0]  # re-encoded from new bytes
    pointer = json.loads((root / "latest.json").read_text())
    assert (pointer["version"], pointer["previous"]) == ("20261123", "20261122")
    assert (v1 / "manifest.json").is_file()  # the old version is kept for rollback

    # A rerun of the same logical date finds the version complete and does no work again.
    created = json.loads((v2 / "manifest.json").read_text())["created_at"]
    out = _dags_test(env, "2026-11-23", conf)
    assert "already complete" in out
    assert json.loads((v2 / "manifest.json").read_text())["created_at"] == created
    assert json.loads((root / "latest.json").read_text()) == pointer
