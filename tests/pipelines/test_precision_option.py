"""``--precision`` / ``--int8_weights`` of the index job: the launcher's encoder choice, wired.

The rules are tested in tests/encoders/test_precision_choice.py; a real int8 run of the job is in
tests/encoders/test_tflite_image.py. Here: which hardware the workers are taken to have, and
that ``IndexConfig`` carries the choice (no job runs).
"""

from __future__ import annotations

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import options as index_options
from pipelines.options import IndexConfig
from pipelines.workers import workers_have_gpu

L4 = "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"


def test_dataflow_workers_have_a_gpu_only_when_the_options_attach_one() -> None:
    never = lambda: pytest.fail("a Dataflow job must not probe the launcher's GPU")  # noqa: E731
    gpu = PipelineOptions(["--runner", "DataflowRunner", "--dataflow_service_options", L4])
    assert workers_have_gpu(gpu, probe=never)
    cpu = PipelineOptions(["--runner", "DataflowRunner", "--dataflow_service_options", "other"])
    assert not workers_have_gpu(cpu, probe=never)
    assert not workers_have_gpu(PipelineOptions(["--runner", "DataflowRunner"]), probe=never)


def test_a_local_runners_workers_are_this_machine() -> None:
    assert workers_have_gpu(PipelineOptions([]), probe=lambda: True)
    assert not workers_have_gpu(PipelineOptions(["--runner", "DirectRunner"]), probe=lambda: False)


def _config(tmp_path, monkeypatch, gpu: bool, *flags: str) -> IndexConfig:
    monkeypatch.setattr(index_options, "workers_have_gpu", lambda options: gpu)
    monkeypatch.setenv("IMGSEARCH_ASSETS", str(tmp_path / "no-assets"))  # no auto .tflite
    argv = ["--corpus", str(tmp_path), "--out", str(tmp_path / "out"), *flags]
    return IndexConfig.from_options(PipelineOptions(argv))


def test_auto_runs_int8_on_cpu_workers_given_a_file(tmp_path, monkeypatch, assets_dir) -> None:
    tflite = str(tmp_path / "m.tflite")
    config = _config(tmp_path, monkeypatch, False, "--int8_weights", tflite)
    assert (config.encoder.name, config.encoder.weights) == ("mobilenet_v2_int8", tflite)
    assert _config(tmp_path, monkeypatch, True, "--int8_weights", tflite).encoder.name == (
        "mobilenet_v2"
    )
    assert _config(tmp_path, monkeypatch, False).encoder.name == "mobilenet_v2"  # no file
    forced_off = _config(tmp_path, monkeypatch, False, "--int8_weights", tflite, "--precision",
                         "float32")  # fmt: skip
    assert forced_off.encoder.name == "mobilenet_v2"
    head = str(assets_dir / "weights" / "mobilenet_v2_1.0_224_imagenet1001_head.npz")
    tags = _config(tmp_path, monkeypatch, False, "--int8_weights", tflite, "--tag_head", head)
    assert tags.encoder.name == "mobilenet_v2"  # tags need the float graph's pooled features


def test_int8_forced_without_a_file_is_refused_with_the_command(tmp_path, monkeypatch) -> None:
    with pytest.raises(ValueError, match="imgsearch quantize"):
        _config(tmp_path, monkeypatch, False, "--precision", "int8")
