"""Every file under infra/ is exercised here: Dockerfile, worker pins, Flex Template, options,
launch script. (The Dataflow job built from infra/pipeline-options.yaml is checked in
test_dataflow_job.py.) No Docker daemon here, so the Dockerfile is checked statically against
the files and pins it refers to; gcloud builds the Flex Template spec offline (--print-only).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from encoders.precision_choice import PRECISIONS
from encoders.registry import IMAGE_ENCODER_NAMES
from infra import worker_requirements
from infra.options import beam_args, flex_args, load_options
from pipelines.options import IndexOptions

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
METADATA = INFRA / "flex-template" / "metadata.json"


def _dockerfile() -> str:
    return (INFRA / "Dockerfile").read_text()


def test_dockerfile_gpu_base_and_versions_match_the_lock():
    text = _dockerfile()
    args = dict(re.findall(r"^ARG (\w+)=(\S*)", text, flags=re.M))
    assert re.fullmatch(
        r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", args["CUDA_IMAGE"]
    )
    pins = worker_requirements.lock_pins()
    assert args["BEAM_VERSION"] == pins["apache-beam"]
    setup = (REPO / "setup.py").read_text()
    assert f'python_requires=">={args["PYTHON_VERSION"]}' in setup
    # The Flex launcher base is the one for the same Python.
    assert f"python{args['PYTHON_VERSION'].replace('.', '')}-template-launcher-base" in text
    assert re.search(r'^ENTRYPOINT \["/opt/apache/beam/boot"\]', text, flags=re.M)


def test_dockerfile_copies_only_what_exists_and_runs_the_index_job():
    text = _dockerfile()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.M):
        *sources, _ = line.replace("\\", "").split()
        for source in sources:
            assert (REPO / source).exists(), f"Dockerfile copies missing {source}"
    py_file = re.search(r"FLEX_TEMPLATE_PYTHON_PY_FILE=/app/(\S+)", text).group(1)
    assert (REPO / py_file).is_file()
    # Every package setup.py ships is copied into the image.
    shipped = re.findall(r'"(\w+)\*"', (REPO / "setup.py").read_text())
    assert {"imgsearch", "pipelines", "encoders", "index", "storage"} <= set(shipped)
    for package in shipped:
        assert f"COPY {package} ./{package}" in text


def test_worker_requirements_are_the_locks_pins_and_up_to_date():
    assert worker_requirements.main(["--check"]) == 0
    pins = worker_requirements.lock_pins()
    worker = worker_requirements.lock_pins(INFRA / "worker-requirements.txt")
    assert worker and all(pins[name] == version for name, version in worker.items())
    for needed in ("apache-beam", "tensorflow", "scann", "pyarrow", "pillow", "gcsfs",
                   "google-cloud-storage"):  # fmt: skip
        assert needed in worker
    for dev_only in ("apache-airflow", "pytest", "ruff", "playwright", "matplotlib", "faiss-cpu"):
        assert dev_only not in worker


def test_flex_template_parameters_are_the_jobs_flags():
    metadata = json.loads(METADATA.read_text())
    parser_flags = set(PipelineOptions([]).view_as(IndexOptions).get_all_options())
    names = [p["name"] for p in metadata["parameters"]]
    assert len(names) == len(set(names))
    assert set(names) <= parser_flags
    required = {p["name"] for p in metadata["parameters"] if not p.get("isOptional")}
    assert required == {"corpus", "out"}
    regex = {p["name"]: re.compile(p["regexes"][0]) for p in metadata["parameters"]
             if p.get("regexes")}  # fmt: skip
    assert regex["corpus"].match("gs://my-bucket/photos/*.jpg")
    assert not regex["corpus"].match("/local/photos")
    assert regex["out"].match("gs://my-bucket/index/versions/20260101T000000Z")
    assert regex["target_recall"].match("0.95") and not regex["target_recall"].match("1.5")
    for encoder in IMAGE_ENCODER_NAMES:  # every real encoder can be launched, the fake cannot
        assert bool(regex["encoder"].match(encoder)) == (encoder != "fake"), encoder
    assert all(regex["precision"].match(p) for p in PRECISIONS)


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="gcloud is not installed")
def test_gcloud_builds_the_flex_template_spec_offline(tmp_path):
    env = {**os.environ, "CLOUDSDK_CONFIG": str(tmp_path / "gcloud")}  # never the user's
    image = load_options()["dataflow"]["sdk_container_image"]
    built = subprocess.run(
        ["gcloud", "dataflow", "flex-template", "build", "gs://bucket/imgsearch-index.json",
         f"--image={image}", "--sdk-language=PYTHON", f"--metadata-file={METADATA}",
         "--print-only", "--project=imgsearch-dry-run"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    spec = json.loads(built.stdout[built.stdout.index("{") :])
    assert spec["image"] == image
    assert spec["sdkInfo"] == {"language": "PYTHON"}
    assert spec["metadata"]["name"] == "imgsearch-index"


def test_pipeline_options_are_all_known_to_beam():
    options = load_options()
    argv = beam_args(options)
    parsed = PipelineOptions(argv)
    known = parsed.get_all_options(retain_unknown_options=False)
    everything = parsed.get_all_options(retain_unknown_options=True)
    assert set(everything) == set(known), set(everything) - set(known)
    assert known["machine_type"] == options["dataflow"]["machine_type"]
    assert known["batch_size"] == 256


def test_options_overrides_and_flex_flags():
    options = load_options(overrides=["max_num_workers=7", "corpus=gs://b/c", "batch_size=64"])
    assert options["dataflow"]["max_num_workers"] == "7"
    assert options["job"]["corpus"] == "gs://b/c" and options["job"]["batch_size"] == "64"
    flags = flex_args(options)
    assert "--max-workers=7" in flags
    assert not any(flag.startswith("--runner") for flag in flags)
    [extra] = [f for f in flags if f.startswith("--additional-pipeline-options=^~^")]
    assert "dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;" in extra
    [params] = [f for f in flags if f.startswith("--parameters=^~^")]
    assert "corpus=gs://b/c" in params.split("~")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        load_options(overrides=["nonsense"])


def _launch(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable}
    return subprocess.run(["bash", str(INFRA / "launch.sh"), *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=60)  # fmt: skip


def test_launch_script_direct_mode_runs_the_job_then_publishes():
    assert subprocess.run(["bash", "-n", str(INFRA / "launch.sh")]).returncode == 0
    done = _launch("gs://b/corpus", "gs://b/root/", "v7", "--set", "max_num_workers=3")
    assert done.returncode == 0, done.stderr
    job, publish = [line for line in done.stdout.splitlines() if line.startswith("+ ")]
    assert "-m pipelines.index_job" in job and "--runner=DataflowRunner" in job
    assert "--out=gs://b/root/versions/v7" in job and "--max_num_workers=3" in job
    assert "write_pointer" in publish and "gs://b/root" in publish


def test_launch_script_flex_mode_and_bad_arguments():
    done = _launch("gs://b/corpus", "gs://b/root", "V_7", "--flex", "--build")
    assert done.returncode == 0, done.stderr
    commands = [line for line in done.stdout.splitlines() if line.startswith("+ ")]
    assert [c.split()[1:5] for c in commands] == [
        ["docker", "build", "-f", "infra/Dockerfile"],
        ["docker", "push", load_options()["dataflow"]["sdk_container_image"]],
        ["gcloud", "dataflow", "flex-template", "build"],
        ["gcloud", "dataflow", "flex-template", "run"],
    ]
    assert "--metadata-file infra/flex-template/metadata.json" in commands[2]
    assert "imgsearch-index-v-7 " in commands[3] and "--parameters=" in commands[3]
    assert _launch("/local/corpus", "gs://b/root").returncode == 2
    assert _launch("gs://b/corpus").returncode == 2
