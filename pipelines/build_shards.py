"""The index shards of a sharded build, each built by its own Beam worker.

``index.build`` decides what each shard holds and builds one shard (``build_shard``); this
module only spreads the shard specs over a Beam job, so ``--index_shards N`` builds N shards in
parallel on Dataflow as on the DirectRunner.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from index.build import ShardRunner, ShardSpec, build_shard, collect_shard_results

logger = logging.getLogger(__name__)


class BuildShards(beam.PTransform):
    """PBegin -> one result dict per shard, each shard built by ``build_shard`` on a worker.

    ``Reshuffle`` after ``Create`` lets the runner spread the specs over workers (without it a
    runner may fuse them into one bundle and build the shards one after another).
    """

    def __init__(self, specs: Sequence[ShardSpec]) -> None:
        super().__init__()
        self.specs = list(specs)

    def expand(self, pbegin):
        return (
            pbegin
            | "ShardSpecs" >> beam.Create(self.specs)
            | "Spread" >> beam.Reshuffle()
            | "BuildShard" >> beam.Map(build_shard)
        )


def beam_shard_runner(pipeline_options: PipelineOptions | None = None) -> ShardRunner:
    """A ``ShardRunner`` that builds the shards in a Beam job of their own (``BuildShards``)."""

    def run(out_dir: str, specs: Sequence[ShardSpec]) -> list[dict[str, Any]]:
        options = pipeline_options if pipeline_options is not None else PipelineOptions([])
        with beam.Pipeline(options=options) as pipeline:
            _ = pipeline | "BuildShards" >> BuildShards(specs)
        return collect_shard_results(out_dir, specs)

    return run
