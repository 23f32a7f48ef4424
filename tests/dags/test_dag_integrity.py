"""Every DAG file imports cleanly, quickly, and is wired as documented."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("airflow_home")
    mp.setenv("AIRFLOW_HOME", str(home))
    mp.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    mp.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home}/airflow.db")
    from airflow.dag_processing.dagbag import DagBag

    start = time.perf_counter()
    bag = DagBag(dag_folder=str(DAGS))
    bag.parse_seconds = time.perf_counter() - start
    yield bag
    mp.undo()


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "imgsearch_nightly_index" in dagbag.dags


def test_parsing_does_no_heavy_work(dagbag, tmp_path):
    """Parsing happens every few seconds in the scheduler: no TensorFlow, no pipeline import."""
    assert dagbag.parse_seconds < 10
    code = (
        "import runpy, sys; runpy.run_path(sys.argv[1]); "
        "heavy = [m for m in ('tensorflow', 'scann', 'pipelines.index_job') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(DAGS / "imgsearch_nightly_index.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]


def test_nightly_index_schedule_params_and_task(dagbag):
    dag = dagbag.dags["imgsearch_nightly_index"]
    assert dag.max_active_runs == 1 and not dag.catchup
    assert set(dag.params.keys()) >= {"corpus", "output_root", "runner", "encoder", "weights"}
    assert dag.params["runner"] == "DirectRunner"
    task = dag.get_task("index_corpus")
    assert task.py_file == "pipelines.index_job" and task.py_options == ["-m"]
    assert task.pipeline_options["out"] == "{{ params.output_root }}/{{ ds_nodash }}"
    assert task.retries == 2
