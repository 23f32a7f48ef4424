"""What the job's workers run on, as far as the launcher can tell before any worker starts.

The encoder choice (``encoders.precision_choice``) is made once at launch, for every worker, so
it needs the workers' hardware without a worker: on Dataflow the GPU is asked for in the
pipeline options (``--dataflow_service_options worker_accelerator=...``, as
``infra/pipeline-options.yaml`` does); a local runner's workers are this machine, asked through
``nvidia-smi`` (the encoder's own GPU probe imports TensorFlow, seconds the launcher should not
spend).
"""

from __future__ import annotations

from collections.abc import Callable

from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    StandardOptions,
)

from encoders.inference_policy import gpu_memory_bytes

REMOTE_RUNNERS = ("DataflowRunner", "dataflow")


def local_gpu() -> bool:
    """Whether this machine has an NVIDIA GPU (``nvidia-smi`` answers)."""
    return gpu_memory_bytes(0) is not None


def workers_have_gpu(options: PipelineOptions, probe: Callable[[], bool] = local_gpu) -> bool:
    """Whether the workers of a job run with ``options`` have a GPU."""
    runner = options.view_as(StandardOptions).runner
    name = runner if isinstance(runner, str) else type(runner).__name__ if runner else ""
    if name in REMOTE_RUNNERS:
        service = options.view_as(GoogleCloudOptions).dataflow_service_options or []
        return any("worker_accelerator" in option for option in service)
    return probe()
