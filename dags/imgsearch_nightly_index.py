"""Nightly reindexing of the image corpus: wiring only, the job lives in ``pipelines.index_job``.

Each run writes ``{output_root}/{ds_nodash}``, a fresh directory per logical date, so a retry or
rerun of the same date replaces that run's output and nothing else (the job removes its own
previous output first and writes the manifest last). DirectRunner by default; set the
``runner`` param to DataflowRunner (with ``beam_options`` such as project, region and
temp_location) to run the same pipeline code on Dataflow.
"""

from __future__ import annotations

import sys
from datetime import timedelta

import pendulum
from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.sdk import DAG, Param

from imgsearch.settings import dag_defaults

DEFAULTS = dag_defaults()

with DAG(
    dag_id="imgsearch_nightly_index",
    description="Index the image corpus into a Parquet embedding table and a ScaNN index",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    # Templates render to Python objects, so the beam_options param arrives as a dict.
    render_template_as_native_obj=True,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
    params={
        "corpus": Param(DEFAULTS["corpus"], type="string", minLength=1),
        "output_root": Param(DEFAULTS["output_root"], type="string", minLength=1),
        "runner": Param("DirectRunner", enum=["DirectRunner", "DataflowRunner"]),
        "encoder": Param("mobilenet_v2", type="string"),
        "weights": Param("auto", type="string"),
        "beam_options": Param({}, type="object", description="extra Beam/Dataflow options"),
    },
    tags=["imgsearch"],
) as dag:
    BeamRunPythonPipelineOperator(
        task_id="index_corpus",
        py_file="pipelines.index_job",
        py_options=["-m"],
        # The interpreter that parses this DAG has the project installed; Beam runs it as is.
        py_interpreter=sys.executable,
        runner="{{ params.runner }}",
        pipeline_options={
            "corpus": "{{ params.corpus }}",
            "out": "{{ params.output_root }}/{{ ds_nodash }}",
            "encoder": "{{ params.encoder }}",
            "weights": "{{ params.weights }}",
            "run_version": "{{ ds_nodash }}",
        },
        default_pipeline_options="{{ params.beam_options }}",
        execution_timeout=timedelta(hours=8),
    )
