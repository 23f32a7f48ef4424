"""Hash only what changed: reuse a stored content hash when the listing's stamp is unchanged.

``ReuseStoredHashes`` joins the listing with the previous version's sources rows
(``index.sources``) by uri, one shuffle of small records::

    refs ----------------- KeyByUri --\\
                                       CoGroupByKey -> unchanged stamp: HashedImage (stored hash)
    previous sources ----- KeyByUri --/                 otherwise: the ref, to read and hash

so the bytes of an unchanged file are never read (no object GET on gs://), and what follows
(dedupe, the diff against the previous table) sees the same ``HashedImage`` it would have
made. ``WriteSources`` writes this run's rows for the next run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.parquetio import ReadAllFromParquet
from apache_beam.metrics import Metrics

from index.sources import SOURCES_PREFIX, SOURCES_SCHEMA, same_source
from pipelines import live_progress
from pipelines.io import WriteParquet
from pipelines.types import HashedImage, ImageRef

TO_HASH = "to_hash"


def reuse_or_hash(
    refs: Iterable[ImageRef], stored: Iterable[dict[str, Any]]
) -> Iterable[HashedImage | beam.pvalue.TaggedOutput]:
    """One uri's listed refs and stored sources rows -> a HashedImage per ref whose stamp is
    unchanged, the others tagged ``to_hash``."""
    record = next(iter(stored), None)  # a version has one row per uri
    for ref in refs:
        if same_source(ref.stamp, record):
            yield HashedImage(ref=ref, sha256=record["sha256"], num_bytes=record["num_bytes"])
        else:
            yield beam.pvalue.TaggedOutput(TO_HASH, ref)


class _ReuseFn(beam.DoFn):
    def __init__(self) -> None:
        self.reused = Metrics.counter("imgsearch", "hashes_reused")

    def process(self, keyed: tuple[str, dict[str, list]]) -> Iterable[Any]:
        _, grouped = keyed
        for out in reuse_or_hash(grouped["refs"], grouped["stored"]):
            if isinstance(out, HashedImage):
                self.reused.inc()
                live_progress.bump("hashed")
            yield out


class ReuseStoredHashes(beam.PTransform):
    """PCollection[ImageRef] -> (PCollection[ImageRef] to hash, PCollection[HashedImage] whose
    stored hash stands), against the previous version's sources ``files``."""

    def __init__(self, files: Sequence[str]) -> None:
        super().__init__()
        self.files = tuple(files)

    def expand(self, refs):
        stored = (
            refs.pipeline
            | "SourceFiles" >> beam.Create(self.files)
            | "ReadSources" >> ReadAllFromParquet(columns=SOURCES_SCHEMA.names)
            | "StoredByUri" >> beam.Map(lambda row: (row["uri"], row))
        )
        listed = refs | "RefsByUri" >> beam.Map(lambda ref: (ref.uri, ref))
        split = (
            {"refs": listed, "stored": stored}
            | "JoinByUri" >> beam.CoGroupByKey()
            | "ReuseOrHash" >> beam.ParDo(_ReuseFn()).with_outputs(TO_HASH, main="reused")
        )
        return split[TO_HASH], split.reused


def source_row(image: HashedImage) -> dict[str, Any]:
    return {
        "uri": image.ref.uri,
        "stamp": image.ref.stamp,
        "sha256": image.sha256,
        "num_bytes": image.num_bytes,
    }


class WriteSources(beam.PTransform):
    """PCollection[HashedImage] -> ``folder/sources-*.parquet``: the stamped ones (files and
    objects a listing saw), for the next run to skip."""

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = folder

    def expand(self, hashed):
        return (
            hashed
            | "Stamped" >> beam.Filter(lambda image: bool(image.ref.stamp))
            | "ToRows" >> beam.Map(source_row)
            # The runner picks the file count: one writer would hold up a billion-file corpus.
            | WriteParquet(self.folder, SOURCES_PREFIX, SOURCES_SCHEMA, num_shards=0)
        )
