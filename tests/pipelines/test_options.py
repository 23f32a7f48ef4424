"""``check_known_args``: a flag neither the index job nor Beam knows is refused, with a hint."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation import eval_job
from imgsearch import cli
from pipelines.options import check_known_args
from tests.index_args import fake_index_args

DAG = Path(__file__).resolve().parents[2] / "dags" / "imgsearch_nightly_index.py"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--corpus_fromat", "files"],
            r"unknown flag --corpus_fromat \(did you mean --corpus_format\?\)",
        ),
        (["--direct_num_worker=2"], r"--direct_num_worker \(did you mean --direct_num_workers\?\)"),
        (["--runer", "DirectRunner"], r"--runer \(did you mean --runner\?\)"),
        (["--temp_locaton", "gs://b/tmp"], r"did you mean --temp_location\?"),
        (["--corp", "photos"], r"did you mean --corpus\?"),  # no abbreviations, as in Beam
        (["--save_main_sesion"], r"did you mean --save_main_session\?"),  # a boolean flag
        (["--nothing_like_it", "1", "--zzz"], r"unknown flags --nothing_like_it, --zzz: "),
        (["photos"], r"unexpected argument 'photos'"),
        (["--batch_size", "many"], r"argument --batch_size: invalid int value: 'many'"),
    ],
)
def test_unknown_flags_and_bad_values_are_refused(argv, message):
    with pytest.raises(ValueError, match=message):
        check_known_args(["--corpus", "photos", "--out", "out", *argv])


def test_the_jobs_and_beams_own_options_pass_in_both_forms():
    check_known_args(fake_index_args("photos", "out", "v1", "--table_shards=4", "--joint_model="))
    check_known_args(
        [
            "--runner", "DataflowRunner", "--direct_num_workers=2",  # StandardOptions, Direct
            "--project", "p", "--region=us-central1", "--temp_location", "gs://b/tmp",
            "--machine_type=n1-standard-4", "--max_num_workers", "20",  # WorkerOptions
            "--sdk_container_image=gcr.io/p/img", "--setup_file", "./setup.py",
            "--save_main_session", "--no_use_public_ips", "--streaming",  # on/off flags
            "--experiments=use_runner_v2", "--experiments", "no_use_multiple_sdk_containers",
            "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;",
            "--labels=team=search", "--environment_type", "LOOPBACK",  # PortableOptions
            "--help",  # left to Beam's parse
        ]
    )  # fmt: skip


def _dag_index_options() -> tuple[list[str], list[str]]:
    """The index task's pipeline_options keys and the Dataflow options runner_options maps."""
    tree = ast.parse(DAG.read_text())
    job, dataflow = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "pipeline_options":
            job = [key.value for key in node.value.keys]
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "mapping":
            dataflow = [value.value for value in node.value.values]
    return job, [*dataflow, "setup_file"]


def test_what_the_nightly_dag_and_the_beam_operator_pass_is_accepted(tmp_path):
    """The DAG's options plus what BeamRunPythonPipelineOperator adds (runner, labels, and on
    Dataflow job_name, project, region, the service account), rendered by the provider."""
    job, dataflow = _dag_index_options()
    assert {"corpus", "out", "models", "joint_model", "run_version"} <= set(job)
    rendered = {
        "previous": "",
        "joint_model": "",
        "index_shards": "1",
        "max_changed_fraction": "0.1",
        "precision": "auto",
    }
    options = {key: rendered.get(key, "float32" if "storage" in key else "x") for key in job}
    options |= {key: 20 if key == "max_num_workers" else "gs://b/x" for key in dataflow}
    options |= {"table_shards": 8}  # a beam_options param
    options |= {
        "job_name": "imgsearch-nightly-20260101", "project": "p", "region": "us-central1",
        "labels": ["airflow-version=v3-1-0"], "impersonate_service_account": "a@p.iam",
        "service_account_email": "w@p.iam", "use_public_ips": False, "save_main_session": True,
    }  # fmt: skip
    code = (
        "import json, sys\n"
        "from airflow.providers.apache.beam.hooks.beam import beam_options_to_args\n"
        "print(json.dumps(beam_options_to_args(json.loads(sys.argv[1]))))\n"
    )
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}  # never the user's ~/airflow
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(options)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    argv = json.loads(done.stdout.strip().splitlines()[-1])
    assert "--no_use_public_ips" in argv and "--labels=airflow-version=v3-1-0" in argv
    check_known_args(["--runner=DataflowRunner", *argv])  # the hook puts --runner first
    with pytest.raises(ValueError, match="did you mean --max_num_workers"):
        check_known_args([*argv, "--max_workers=3"])  # the Flex Template spelling


def test_the_cli_prints_one_line_and_exits_2_without_running(tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["index", *fake_index_args(tmp_path, out, "v1"), "--corpus_fromat", "files"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        "imgsearch index: error: unknown flag --corpus_fromat (did you mean --corpus_format?): "
        "neither the job's nor a Beam option"
    )
    assert not out.exists()  # refused before anything was cleared or launched


def test_the_eval_job_refuses_what_neither_it_nor_the_index_job_takes(tmp_path):
    base = ["--dataset", str(tmp_path), "--out", str(tmp_path / "out")]
    config = eval_job.parse_args([*base, "--top-k", "5", "--direct_num_workers=2"])
    assert config.beam_args == ("--direct_num_workers=2",)
    with pytest.raises(ValueError, match=r"--top_k \(did you mean --top-k\?\)"):
        eval_job.parse_args([*base, "--top_k", "5"])
    with pytest.raises(ValueError, match=r"did you mean --tag_head\?"):
        eval_job.parse_args([*base, "--tag_hed", "auto"])
