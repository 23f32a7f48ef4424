"""The index job builds a valid Dataflow job without a cloud project.

The DataflowRunner runs for real up to the point of calling the Dataflow API: with
``--template_location`` it stages the package (``--setup_file`` -> sdist) and the pipeline proto
to ``--staging_location`` (an emulator bucket) and writes the job description to a local file
instead of submitting it; ``--no_auth`` keeps it from looking for credentials. Runner v2 keeps
the graph in the staged ``pipeline.pb`` (the job JSON's ``steps`` are empty), so the graph
assertions read that proto, which is exactly what the Dataflow service reads.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from infra.options import beam_args, load_options
from pipelines.index_job import build_pipeline
from pipelines.options import IndexConfig

REPO = Path(__file__).resolve().parents[2]
INFRA = load_options()["dataflow"]
IMAGE = INFRA["sdk_container_image"]
GBK = common_urns.primitives.GROUP_BY_KEY.urn


@pytest.fixture(scope="module")
def dataflow_job(gcs_emulator, tmp_path_factory):
    """(job JSON, staged pipeline proto, {staged object name: size}) of a template build.

    The job is built from infra/pipeline-options.yaml (what users launch with), with the
    project and buckets pointed at the emulator, plus ``--setup_file`` so the staging of the
    package (the launch path without the custom image) is checked as well.
    """
    from google.cloud import storage as gcs

    bucket = "imgsearch-dataflow-dry-run"
    client = gcs.Client.create_anonymous_client()
    if client.lookup_bucket(bucket) is None:
        client.create_bucket(bucket)
    job_file = tmp_path_factory.mktemp("dataflow") / "job.json"
    settings = load_options(
        overrides=[
            "project=imgsearch-dry-run",
            f"temp_location=gs://{bucket}/tmp",
            f"staging_location=gs://{bucket}/staging",
            f"corpus=gs://{bucket}/corpus",
            f"out=gs://{bucket}/out/versions/v1",
            "run_version=v1",
            "weights=none",
        ]
    )
    argv = [
        *beam_args(settings),
        "--no_auth",
        f"--template_location={job_file}",
        f"--setup_file={REPO / 'setup.py'}",
    ]
    options = PipelineOptions(argv)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, IndexConfig.from_options(options))
    result = pipeline.run()
    assert result is not None and job_file.is_file()
    job = json.loads(job_file.read_text())
    staged = {b.name: b.size for b in client.list_blobs(bucket, prefix="staging/")}
    [proto_name] = [name for name in staged if name.endswith("/pipeline.pb")]
    proto = beam_runner_api_pb2.Pipeline.FromString(
        client.bucket(bucket).blob(proto_name).download_as_bytes()
    )
    return job, proto, staged


def _by_name(proto) -> dict[str, beam_runner_api_pb2.PTransform]:
    return {t.unique_name: t for t in proto.components.transforms.values()}


def _leaves_under(proto, prefix: str) -> list[beam_runner_api_pb2.PTransform]:
    return [
        t
        for t in proto.components.transforms.values()
        if not t.subtransforms
        and (t.unique_name == prefix or t.unique_name.startswith(prefix + "/"))
    ]


def _shuffles_between(proto, upstream: str, downstream: str) -> set[str]:
    """GroupByKeys on the paths from composite ``upstream``'s outputs into ``downstream``.

    Walks producers backwards from what ``downstream``'s leaf transforms read; raises if
    ``upstream`` is never reached (the two are not connected).
    """
    producer = {}
    for t in proto.components.transforms.values():
        if not t.subtransforms:
            for pcoll in t.outputs.values():
                producer[pcoll] = t
    inside = {t.unique_name for t in _leaves_under(proto, downstream)}
    todo = deque(
        pcoll
        for t in _leaves_under(proto, downstream)
        for pcoll in t.inputs.values()
        if producer[pcoll].unique_name not in inside
    )
    seen, shuffles, reached = set(), set(), False
    while todo:
        pcoll = todo.popleft()
        if pcoll in seen or pcoll not in producer:
            continue
        seen.add(pcoll)
        t = producer[pcoll]
        if t.unique_name == upstream or t.unique_name.startswith(upstream + "/"):
            reached = True
            continue
        if t.spec.urn == GBK:
            shuffles.add(t.unique_name)
        todo.extend(t.inputs.values())
    if not reached:
        raise AssertionError(f"{downstream} does not read from {upstream}")
    return shuffles


def test_worker_settings_and_container_in_the_job(dataflow_job):
    job, _, _ = dataflow_job
    env = job["environment"]
    assert "use_runner_v2" in env["experiments"]
    # One SDK process per VM: one model per GPU (infra/pipeline-options.yaml).
    assert "no_use_multiple_sdk_containers" in env["experiments"]
    assert env["serviceOptions"] == [INFRA["dataflow_service_options"]]
    assert "nvidia-l4" in INFRA["dataflow_service_options"]
    [pool] = env["workerPools"]
    assert pool["machineType"] == INFRA["machine_type"]
    assert pool["autoscalingSettings"]["maxNumWorkers"] == INFRA["max_num_workers"]
    assert pool["diskSizeGb"] == INFRA["disk_size_gb"]
    assert pool["numThreadsPerWorker"] == INFRA["number_of_worker_harness_threads"]
    assert pool["workerHarnessContainerImage"] == IMAGE
    assert {c["containerImage"] for c in pool["sdkHarnessContainerImages"]} == {IMAGE}


def test_the_package_is_staged_from_setup_py(dataflow_job):
    job, _, staged = dataflow_job
    [pool] = job["environment"]["workerPools"]
    packages = {p["name"] for p in pool["packages"]}
    assert "workflow.tar.gz" in packages  # the sdist of setup.py, pip-installed on each worker
    [sdist] = [name for name in staged if name.endswith("/workflow.tar.gz")]
    assert staged[sdist] > 1000


def test_composite_transforms_are_the_named_steps(dataflow_job):
    _, proto, _ = dataflow_job
    names = _by_name(proto)
    for step in (
        "ReadCorpus",
        "ReadCorpus/SpreadWork",
        "IndexImages",
        "IndexImages/Hash",
        "IndexImages/Dedupe",
        "IndexImages/Decode",
        "IndexImages/Encode",
        "WriteTable",
        "WriteDuplicates",
        "WriteDeadLetters",
    ):
        assert step in names, f"missing step {step}"
        assert names[step].subtransforms, f"{step} should be a composite"


def test_fusion_breaks_where_intended(dataflow_job):
    _, proto, _ = dataflow_job
    # The listing is reshuffled before any image is fetched: one listing bundle fans out.
    assert _shuffles_between(proto, "ReadCorpus/ToRefs", "IndexImages/Hash") == {
        "ReadCorpus/SpreadWork/ReshufflePerKey/GroupByKey"
    }
    # Dedupe groups by content hash: its GroupByKey sits between hashing and decoding.
    assert _shuffles_between(proto, "IndexImages/Hash", "IndexImages/Decode") == {
        "IndexImages/Dedupe/GroupByContent"
    }
    # Decoded pixels (150 KB an image at 224x224) go straight into the model, never shuffled.
    assert _shuffles_between(proto, "IndexImages/Decode", "IndexImages/Encode") == set()
    # Rows reach the Parquet sink without an extra shuffle (table_shards=0 lets Dataflow
    # choose the file count).
    assert _shuffles_between(proto, "IndexImages/Encode", "WriteTable") == set()


def test_no_large_side_inputs_or_payloads(dataflow_job):
    _, proto, staged = dataflow_job
    side_input_readers = []
    for t in proto.components.transforms.values():
        if t.spec.urn == common_urns.primitives.PAR_DO.urn:
            payload = beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload)
            if payload.side_inputs:
                side_input_readers.append(t.unique_name)
    # Only the file sinks' own bookkeeping (a handful of temp-file names) is a side input;
    # nothing on the image path reads one.
    assert side_input_readers, "expected the Parquet sinks' finalisation side inputs"
    sinks = ("WriteTable/", "WriteDuplicates/", "WriteDeadLetters/", "WriteSources/")
    assert all(name.startswith(sinks) for name in side_input_readers), side_input_readers
    # No model weights or data pickled into the graph: every transform's payload is small.
    largest = max(len(t.spec.payload) for t in proto.components.transforms.values())
    assert largest < 256 * 1024
    [proto_name] = [name for name in staged if name.endswith("/pipeline.pb")]
    assert staged[proto_name] < 2 * 2**20
