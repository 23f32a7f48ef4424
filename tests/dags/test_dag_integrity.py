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
        "heavy = [m for m in ('tensorflow', 'scann', 'apache_beam', 'pipelines.index_job', "
        "'imgsearch.nightly') if m in sys.modules]; "
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
    assert dag.schedule == "@daily"
    assert set(dag.params.keys()) >= {
        "corpus", "output_root", "runner", "encoder", "weights", "models", "joint_model",
        "beam_options", "dataflow_project", "dataflow_region", "dataflow_temp_location",
        "dataflow_machine_type", "dataflow_max_workers", "eval_dataset", "gate_metrics",
        "gate_tolerance", "reload_url", "keep_versions", "tag_head", "captioner",
        "index_shards", "embedding_storage", "max_changed_fraction", "hash_model",
    }  # fmt: skip
    assert dag.get_task("index_corpus").pipeline_options["hash_model"] == "{{ params.hash_model }}"
    assert dag.params["runner"] == "DirectRunner"
    assert dag.params["eval_dataset"] == ""  # no eval set by default: the gate passes
    task = dag.get_task("index_corpus")
    assert task.py_file == "pipelines.index_job" and task.py_options == ["-m"]
    assert "version_dir" in task.pipeline_options["out"]
    assert "previous" in task.pipeline_options["previous"]
    assert task.pipeline_options["run_version"] == "{{ ds_nodash }}"


def test_nightly_index_task_order_retries_timeouts_and_callbacks(dagbag):
    dag = dagbag.dags["imgsearch_nightly_index"]
    downstream = {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}
    assert downstream == {
        "discover": ["evaluate", "gate", "index_needed", "publish"],
        "index_needed": ["evaluate", "index_corpus"],
        "index_corpus": ["evaluate"],
        "evaluate": ["gate"],
        "gate": ["publish"],
        "publish": ["notify_serving", "retention"],
        "notify_serving": ["retention"],
        "retention": [],
    }
    assert dag.get_task("evaluate").trigger_rule == "none_failed_min_one_success"
    for task in dag.tasks:
        assert task.execution_timeout is not None, task.task_id
        assert task.on_failure_callback, task.task_id
    assert dag.get_task("gate").retries == 0  # a failed gate is final: the numbers won't change
    assert dag.get_task("index_corpus").retries == 2
    assert dag.get_task("publish").retries >= 1


def test_runner_options_map_dataflow_params():
    from dags.imgsearch_nightly_index import GATE_METRICS, runner_options
    from evaluation.gate import DEFAULT_METRICS

    assert GATE_METRICS == list(DEFAULT_METRICS)
    params = {
        "runner": "DataflowRunner", "beam_options": {"table_shards": 8},
        "dataflow_temp_location": "gs://b/tmp", "dataflow_machine_type": "n1-standard-8",
        "dataflow_max_workers": 50, "dataflow_sdk_container_image": "",
        "dataflow_setup_file": "./setup.py",
    }  # fmt: skip
    assert runner_options(params) == {
        "table_shards": 8,
        "temp_location": "gs://b/tmp",
        "machine_type": "n1-standard-8",
        "max_num_workers": 50,
        "setup_file": "./setup.py",
    }
    # DirectRunner: only the extra options, no Dataflow settings leak into a local run.
    assert runner_options({**params, "runner": "DirectRunner"}) == {"table_shards": 8}
