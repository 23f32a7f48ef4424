"""A real Airflow run of the nightly DAG: `airflow dags test` on SQLite, Beam DirectRunner."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.slow
def test_airflow_dags_test_indexes_the_logical_date(tmp_path: Path, coco_photos):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for photo in coco_photos[:4]:
        shutil.copy(photo, corpus / photo.name)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    migrated = _run([AIRFLOW, "db", "migrate"], env, timeout=180)
    assert migrated.returncode == 0, migrated.stdout[-3000:]

    conf = {"corpus": str(corpus), "output_root": str(tmp_path / "out"), "encoder": "fake",
            "weights": "none", "beam_options": {"table_shards": 2}}  # fmt: skip
    ran = _run(
        [AIRFLOW, "dags", "test", "imgsearch_nightly_index", "2026-11-22", "-c", json.dumps(conf)],
        env,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stdout[-4000:]
    out = tmp_path / "out" / "20261122"  # one directory per logical date
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["version"] == "20261122"
    assert manifest["counts"]["inputs"] == manifest["counts"]["indexed"] == 4
    assert len(list((out / "table").glob("*.parquet"))) == 2  # beam_options reached the job
