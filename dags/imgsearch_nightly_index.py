"""Nightly reindexing of the image corpus: incremental, gated by evaluation, published atomically.

Wiring only: the Beam job is ``pipelines.index_job`` and every other step is a function of
``imgsearch.nightly`` (imported inside the tasks, so parsing this file stays cheap)::

    discover -> index_needed -> index_corpus -> evaluate -> gate -> publish -> notify_serving
                         \\________(version already complete)___/                 -> retention

* ``discover`` names the version after the logical date (``{{ ds_nodash }}``) and finds the
  published version to build on. The index job then finds what is new, changed or deleted in
  the corpus itself (content hashes joined with the previous table's key columns in Beam, so
  discovery scales with the job) and encodes only that. When the published version was made
  the way this run makes rows (same models, storage, shards), the job writes only the changed
  rows and deleted ids, copies the untouched table files and updates the ScaNN index in place
  (upsert/delete), rebuilding it once changes since its last full build pass
  ``max_changed_fraction`` (``pipelines.incremental``).
* Each run writes ``{output_root}/versions/{ds_nodash}/`` (table, index, manifest, eval report).
  A rerun of the same logical date finds the version complete and skips the job, or, if a
  previous attempt died half-way, rebuilds it in place from the same inputs.
* ``evaluate`` runs ``python -m evaluation.eval_job`` only when the ``eval_dataset`` param is
  set; when it is empty the gate logs "no eval set configured" and passes.
* ``gate`` fails the run (no retries: the numbers will not change) when a gated metric is worse
  than the published version's by more than ``gate_tolerance``; ``latest.json`` is untouched.
* ``publish`` verifies every file against the manifest, then swaps ``latest.json`` atomically.
  Serving reads the pointer, so publishing is the notification; ``reload_url`` (optional) is
  POSTed ``{"root", "version"}`` for servers that should switch at once.
* ``retention`` keeps the ``keep_versions`` newest complete versions plus the current and
  previous ones. Rollback: ``imgsearch rollback --root {output_root} [--to VERSION]``.

DirectRunner by default; ``runner=DataflowRunner`` plus the ``dataflow_*`` params (project,
region, temp location, machine type, max workers, container image) runs the same pipeline code
on Dataflow. ``beam_options`` adds any other Beam/job flag (e.g. ``{"table_shards": 8}``).
"""

from __future__ import annotations

import logging
import sys
from datetime import timedelta
from typing import Any

import pendulum
from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.providers.google.cloud.operators.dataflow import DataflowConfiguration
from airflow.sdk import DAG, Param, TriggerRule, task
from airflow.sdk.exceptions import AirflowFailException

from imgsearch.settings import dag_defaults

log = logging.getLogger(__name__)
DEFAULTS = dag_defaults()
# Kept in step with evaluation.gate.DEFAULT_METRICS (a test checks); not imported here so that
# parsing this file never imports the project's packages beyond settings.
GATE_METRICS = ["text_to_image/R@1", "text_to_image/R@10", "text_to_image/MRR"]
# The index job's folders come from discover's plan (an XCom), rendered when the task runs.
OUT_DIR = "{{ ti.xcom_pull(task_ids='discover')['version_dir'] }}"
PREVIOUS_DIR = "{{ ti.xcom_pull(task_ids='discover')['previous'] }}"


def on_task_failure(context: dict[str, Any]) -> None:
    """One searchable line per failed task; alerting hooks in here (logs feed the alerts)."""
    ti = context.get("task_instance")
    log.error(
        "imgsearch nightly FAILED: task=%s run=%s try=%s error=%s",
        getattr(ti, "task_id", "?"),
        context.get("run_id"),
        getattr(ti, "try_number", "?"),
        context.get("exception"),
    )


def runner_options(params: dict[str, Any]) -> dict[str, Any]:
    """Beam options of the index job: ``beam_options`` plus, on Dataflow, the worker settings."""
    options = dict(params.get("beam_options") or {})
    if params.get("runner") == "DataflowRunner":
        mapping = {
            "dataflow_temp_location": "temp_location",
            "dataflow_staging_location": "staging_location",
            "dataflow_machine_type": "machine_type",
            "dataflow_max_workers": "max_num_workers",
            "dataflow_sdk_container_image": "sdk_container_image",
        }
        for param, option in mapping.items():
            if params.get(param):
                options.setdefault(option, params[param])
        # The project's code must reach the workers: a container image that has it, or a
        # setup file that packages it.
        if params.get("dataflow_setup_file") and not options.get("sdk_container_image"):
            options.setdefault("setup_file", params["dataflow_setup_file"])
    return options


class _DataflowConfig(DataflowConfiguration):
    # The provider does not template project_id; the DAG takes it from a param.
    template_fields = (*DataflowConfiguration.template_fields, "project_id")


def _task_args(retries: int, timeout: timedelta, retry_delay: timedelta) -> dict[str, Any]:
    return {
        "retries": retries,
        "retry_delay": retry_delay,
        "execution_timeout": timeout,
        "on_failure_callback": on_task_failure,
    }


with DAG(
    dag_id="imgsearch_nightly_index",
    description="Incremental nightly reindex: encode what changed, evaluate, gate, publish",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # one writer per publish root
    # Templates render to Python objects, so the beam_options param arrives as a dict.
    render_template_as_native_obj=True,
    user_defined_macros={"runner_options": runner_options},
    default_args={"owner": "imgsearch", "on_failure_callback": on_task_failure},
    params={
        "corpus": Param(DEFAULTS["corpus"], type="string", minLength=1),
        "output_root": Param(
            DEFAULTS["output_root"], type="string", minLength=1, description="publish root"
        ),
        "runner": Param("DirectRunner", enum=["DirectRunner", "DataflowRunner"]),
        "encoder": Param("mobilenet_v2", type="string"),
        "weights": Param("auto", type="string"),
        "precision": Param(
            "auto",
            enum=["auto", "float32", "int8"],
            description="auto: the int8 encoder on CPU workers when int8_weights is at hand",
        ),
        "int8_weights": Param(
            "auto", type="string", description="the int8 encoder's .tflite (imgsearch quantize)"
        ),
        "models": Param("", type="string", description="models directory (joint model, eval)"),
        "joint_model": Param("", type="string", description="dual joint model in models"),
        "tag_head": Param("", type="string", description="'auto' or an .npz: a tags column"),
        "captioner": Param("", type="string", description="captioner in models: captions"),
        "hash_model": Param(
            "", type="string", description="hashing model in models: hash_code column"
        ),
        "index_shards": Param(1, type="integer", minimum=1),
        "embedding_storage": Param("float32", enum=["float32", "float16", "int8"]),
        "max_changed_fraction": Param(
            0.1,
            type="number",
            minimum=0,
            description="update the published index in place while changes since its last "
            "full build stay under this share; rebuild beyond",
        ),
        "beam_options": Param({}, type="object", description="extra Beam/job options"),
        "dataflow_project": Param("", type="string"),
        "dataflow_region": Param("us-central1", type="string"),
        "dataflow_temp_location": Param("", type="string", description="gs://bucket/tmp"),
        "dataflow_staging_location": Param("", type="string"),
        "dataflow_machine_type": Param("n1-standard-4", type="string"),
        "dataflow_max_workers": Param(20, type="integer", minimum=1),
        "dataflow_sdk_container_image": Param("", type="string"),
        "dataflow_setup_file": Param("", type="string"),
        "eval_dataset": Param("", type="string", description="empty: no eval, the gate passes"),
        "eval_args": Param([], type="array", description="extra flags of the eval job"),
        "gate_metrics": Param(GATE_METRICS, type="array"),
        "gate_tolerance": Param(0.01, type="number", minimum=0),
        "reload_url": Param("", type="string", description="optional: POSTed after publish"),
        "keep_versions": Param(7, type="integer", minimum=1),
    },
    tags=["imgsearch"],
) as dag:

    @task(**_task_args(2, timedelta(minutes=10), timedelta(minutes=1)))
    def discover(params: dict[str, Any], ds_nodash: str) -> dict[str, Any]:
        from imgsearch.nightly import plan_run

        return plan_run(params["output_root"], ds_nodash)

    @task.branch(**_task_args(1, timedelta(minutes=5), timedelta(minutes=1)))
    def index_needed(plan: dict[str, Any]) -> str:
        if plan["complete"]:
            log.info("version %s is already complete: not indexing again", plan["version"])
            return "evaluate"
        return "index_corpus"

    index_corpus = BeamRunPythonPipelineOperator(
        task_id="index_corpus",
        py_file="pipelines.index_job",
        py_options=["-m"],
        # The interpreter that parses this DAG has the project installed; Beam runs it as is.
        py_interpreter=sys.executable,
        runner="{{ params.runner }}",
        pipeline_options={
            "corpus": "{{ params.corpus }}",
            "out": OUT_DIR,
            "previous": PREVIOUS_DIR,  # "" when nothing is published: a full run
            "encoder": "{{ params.encoder }}",
            "weights": "{{ params.weights }}",
            "precision": "{{ params.precision }}",
            "int8_weights": "{{ params.int8_weights }}",
            "models": "{{ params.models }}",
            "joint_model": "{{ params.joint_model }}",
            "tag_head": "{{ params.tag_head }}",
            "captioner": "{{ params.captioner }}",
            "hash_model": "{{ params.hash_model }}",
            "index_shards": "{{ params.index_shards }}",
            "embedding_storage": "{{ params.embedding_storage }}",
            "max_changed_fraction": "{{ params.max_changed_fraction }}",
            "run_version": "{{ ds_nodash }}",
        },
        default_pipeline_options="{{ runner_options(params) }}",
        dataflow_config=_DataflowConfig(
            job_name="imgsearch-nightly-{{ ds_nodash }}",
            project_id="{{ params.dataflow_project }}",
            location="{{ params.dataflow_region }}",
        ),
        **_task_args(2, timedelta(hours=8), timedelta(minutes=10)),
    )

    @task(
        trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
        **_task_args(1, timedelta(hours=2), timedelta(minutes=5)),
    )
    def evaluate(plan: dict[str, Any], params: dict[str, Any]) -> bool:
        from imgsearch.nightly import evaluate as run_eval

        metrics = run_eval(
            plan["version_dir"], params["eval_dataset"], params["models"], params["eval_args"]
        )
        return metrics is not None

    @task(**_task_args(0, timedelta(minutes=10), timedelta(minutes=1)))
    def gate(plan: dict[str, Any], evaluated: bool, params: dict[str, Any]) -> dict[str, Any]:
        from imgsearch.nightly import GateFailed, run_gate

        try:
            result = run_gate(
                params["output_root"],
                plan["version"],
                evaluated,
                params["gate_metrics"],
                float(params["gate_tolerance"]),
            )
        except GateFailed as exc:
            raise AirflowFailException(str(exc)) from exc  # retrying cannot change the numbers
        return result.to_json()

    @task(**_task_args(3, timedelta(minutes=30), timedelta(minutes=1)))
    def publish(plan: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        from imgsearch.nightly import publish as publish_version

        return publish_version(params["output_root"], plan["version"])

    @task(**_task_args(3, timedelta(minutes=5), timedelta(minutes=1)))
    def notify_serving(pointer: dict[str, Any], params: dict[str, Any]) -> str:
        from imgsearch.nightly import notify

        return notify(params["output_root"], pointer["version"], params["reload_url"])

    @task(**_task_args(2, timedelta(minutes=30), timedelta(minutes=5)))
    def retention(pointer: dict[str, Any], params: dict[str, Any]) -> list[str]:
        from imgsearch.nightly import retention as prune

        return prune(params["output_root"], int(params["keep_versions"]))

    plan = discover()
    branch = index_needed(plan)
    evaluated = evaluate(plan)
    branch >> [index_corpus, evaluated]
    index_corpus >> evaluated
    pointer = publish(plan)
    gate(plan, evaluated) >> pointer
    notify_serving(pointer) >> retention(pointer)
