"""The index job's near-duplicate step: a self-join over the built ScaNN index, as a Beam job.

Once the ScaNN shards exist, and before the manifest publishes the version, ``index.build``
calls the step ``beam_near_duplicates`` returns. It runs a Beam job of its own, with the index
job's options and runner (as ``pipelines.build_shards`` does)::

    TableSlice (row groups of one table file, listed from the footers)
      | Reshuffle | ReadVectors           -> VectorBatch (image ids, float32 embeddings)
      | RunInference(IndexNeighbours)     -> NeighbourBatch: each row's nearest, all shards
      | Pairs                             -> (image_id, image_id, cosine) at >= the threshold
      | AllPairs (one list: near-duplicates only, few) | Group -> near_duplicates rows
      | WriteNearDuplicates               -> OUT/near_duplicates/near_duplicates-*.parquet

The index (every shard) is loaded once per worker through RunInference's shared handle. The
grouping itself (union-find, chaining guard) is ``index.near_duplicates``. ``--near_duplicates
off`` skips the step; ``--near_duplicate_threshold`` sets the cosine (its default was measured:
``benchmarks/results/near_duplicates.md``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from index.manifest import IndexManifest, file_entry
from index.near_duplicates import (
    DEFAULT_THRESHOLD,
    MEASURED_THRESHOLDS,
    NEAR_DUPLICATE_GROUP,
    NEAR_DUPLICATES_DIR,
    NEIGHBOURS,
    CarriedGroups,
    NearDuplicateStep,
    carry_over,
    check_threshold,
    default_threshold,
    group_image_pairs,
    group_settings,
    near_duplicates_schema,
    read_group_table,
)
from index.scann_index import ScannParams, search_batched
from index.shards import load_shard
from index.table import TABLE_DIR, _decode_embeddings, parquet_files
from storage.files import copy_file, delete_tree, join_path, join_uri, open_file

logger = logging.getLogger(__name__)

METRICS_NAMESPACE = "imgsearch"

QUERIED = "near_duplicate_queries"

FAILED = "near_duplicate_failed_rows"

ON_OFF = ("on", "off")

# Rows read and queried per element: a few table row groups (the writer keeps them to ~16 MiB).
SLICE_ROWS = 4096

# Queries per ScaNN call: a brute-force shard scores queries x rows floats at once.
_QUERY_CHUNK = 256


class NearDuplicateOptions(PipelineOptions):
    """Flags of the near-duplicate step (parsed beside ``IndexOptions`` and Beam's own)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--near_duplicates",
            default="on",
            choices=ON_OFF,
            help="after the index is built, group near-duplicate images (crops, re-encodes, "
            "mirrors, brightness changes) by a self-join over it into near_duplicates/",
        )
        parser.add_argument(
            "--near_duplicate_threshold",
            type=float,
            default=None,
            help="the cosine at or above which two images are near-duplicates; default: the one "
            f"measured for the encoder ({_measured()}; others get {DEFAULT_THRESHOLD}, "
            "benchmarks/results/near_duplicates.md)",
        )


def _measured() -> str:
    return ", ".join(f"{name} {value}" for name, value in MEASURED_THRESHOLDS.items())


@dataclasses.dataclass(frozen=True)
class NearDuplicateConfig:
    """What the step is asked for, validated: the threshold and the neighbours per row."""

    threshold: float = DEFAULT_THRESHOLD
    neighbours: int = NEIGHBOURS

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", check_threshold(self.threshold))
        if isinstance(self.neighbours, bool) or not isinstance(self.neighbours, int):
            raise ValueError(f"neighbours must be an integer, got {self.neighbours!r}")
        if self.neighbours < 2:
            raise ValueError(f"neighbours counts the row itself: at least 2, got {self.neighbours}")

    @classmethod
    def from_options(
        cls, options: PipelineOptions, encoder_name: str
    ) -> NearDuplicateConfig | None:
        """The flags' config for ``encoder_name``'s vectors, or None with ``--near_duplicates
        off``; ValueError names the flag."""
        opts = options.view_as(NearDuplicateOptions)
        if opts.near_duplicates == "off":
            return None
        threshold = opts.near_duplicate_threshold
        if threshold is None:
            threshold = default_threshold(encoder_name)
        try:
            return cls(threshold=threshold)
        except ValueError as exc:
            raise ValueError(f"--near_duplicate_threshold: {exc}") from None


@dataclasses.dataclass(frozen=True)
class TableSlice:
    """Row groups of one embedding-table file: what one element of the step reads."""

    path: str
    row_groups: tuple[int, ...]
    rows: int


@dataclasses.dataclass(frozen=True, eq=False)
class VectorBatch:
    """Rows of the table: ``vectors[i]`` (unit float32) is the embedding of ``image_ids[i]``."""

    image_ids: list[str]
    vectors: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class NeighbourBatch:
    """``neighbours[i]`` (best first) of ``image_ids[i]``, at cosines ``scores[i]``; a row
    found fewer than asked ends in ``""`` / NaN."""

    image_ids: list[str]
    neighbours: np.ndarray  # (M, k) object array of image ids
    scores: np.ndarray  # (M, k) float32


def table_slices(paths: Sequence[str], rows_per_slice: int = SLICE_ROWS) -> list[TableSlice]:
    """The table's row groups, consecutive ones together up to ``rows_per_slice`` rows."""
    slices = []
    for path in sorted(paths):
        with open_file(path) as handle:
            metadata = pq.ParquetFile(handle).metadata
        groups: list[int] = []
        rows = 0
        for group in range(metadata.num_row_groups):
            groups.append(group)
            rows += metadata.row_group(group).num_rows
            if rows >= rows_per_slice:
                slices.append(TableSlice(path, tuple(groups), rows))
                groups, rows = [], 0
        if groups and rows:
            slices.append(TableSlice(path, tuple(groups), rows))
    return slices


def read_vectors(table_slice: TableSlice, only: frozenset[str] | None = None) -> VectorBatch:
    """A slice's image ids and embeddings, decoded to unit float32 as the index reads them.

    ``only``: just these image ids (an in-place update's rows to join again); a slice holding
    none of them is not read past its id column.
    """
    with open_file(table_slice.path) as handle:
        parquet = pq.ParquetFile(handle)
        groups = list(table_slice.row_groups)
        keep = None
        if only is not None:
            ids = parquet.read_row_groups(groups, columns=["image_id"])["image_id"]
            keep = np.isin(np.asarray(ids.to_pylist(), dtype=object), list(only))
            if not keep.any():
                return VectorBatch([], np.zeros((0, 0), np.float32))
        columns = ["image_id", "embedding"]
        if "embedding_scale" in parquet.schema_arrow.names:
            columns.append("embedding_scale")
        part = parquet.read_row_groups(groups, columns=columns)
    if keep is not None:
        part = part.filter(keep)
    part = _decode_embeddings(part, table_slice.path)
    dim = part.schema.field("embedding").type.list_size
    vectors = part["embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return VectorBatch(
        part["image_id"].to_pylist(),
        np.ascontiguousarray(vectors.reshape(-1, dim), dtype=np.float32),
    )


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedShard:
    searcher: Any  # ScannSearcher
    params: ScannParams
    image_ids: np.ndarray  # object array: row -> image id


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedIndex:
    """Every image shard of a version, loaded (an object, so Beam's shared handle can hold it)."""

    shards: list[LoadedShard]


def load_index(out_dir: str, manifest: IndexManifest) -> LoadedIndex:
    """Every image shard of the (unpublished) version: searcher, params, row -> image id."""
    shards = []
    for shard in manifest.shards:
        searcher, image_ids, _ = load_shard(out_dir, manifest, shard)
        params = ScannParams.from_json(manifest.shard_params(shard))
        shards.append(LoadedShard(searcher, params, np.array(image_ids, dtype=object)))
    return LoadedIndex(shards)


def nearest_over_shards(
    index: LoadedIndex, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``k`` nearest over all shards: ``(ids (M, k) object, scores (M, k))``."""
    found_ids, found_scores = [], []
    for shard in index.shards:
        indices, scores = search_batched(shard.searcher, queries, k, shard.params)
        ids = np.where(indices >= 0, shard.image_ids[np.maximum(indices, 0)], "")
        found_ids.append(ids)
        found_scores.append(np.where(indices >= 0, scores, np.nan).astype(np.float32))
    ids = np.concatenate(found_ids, axis=1)
    scores = np.concatenate(found_scores, axis=1)
    ranked = np.where(np.isnan(scores), -np.inf, scores)
    order = np.argsort(-ranked, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)


class IndexNeighboursModelHandler(ModelHandler[VectorBatch, NeighbourBatch, LoadedIndex]):
    """``VectorBatch`` -> ``NeighbourBatch``: the ``k`` nearest rows of the version's own index.

    Holds the output dir and the manifest (small, picklable); ``load_model`` loads every shard
    once per worker. Elements are already batches (a table slice each): one per call.
    """

    def __init__(self, out_dir: str, manifest: IndexManifest, k: int) -> None:
        super().__init__(min_batch_size=1, max_batch_size=1)
        self.out_dir, self.manifest, self.k = out_dir, manifest, k

    def load_model(self) -> LoadedIndex:
        return load_index(self.out_dir, self.manifest)

    def run_inference(
        self,
        batch: Sequence[VectorBatch],
        model: LoadedIndex,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[NeighbourBatch]:
        results = []
        for element in batch:
            ids, scores = [], []
            for start in range(0, len(element.image_ids), _QUERY_CHUNK):
                found = nearest_over_shards(
                    model, element.vectors[start : start + _QUERY_CHUNK], self.k
                )
                ids.append(found[0])
                scores.append(found[1])
            if not ids:
                continue
            results.append(
                NeighbourBatch(element.image_ids, np.concatenate(ids), np.concatenate(scores))
            )
        return results

    def validate_inference_args(self, inference_args: dict[str, Any] | None) -> None:
        if inference_args:
            raise ValueError(f"the index neighbour handler takes no inference_args, got "
                             f"{sorted(inference_args)}")  # fmt: skip

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return dict(self._batching_kwargs)

    def get_num_bytes(self, batch: Sequence[VectorBatch]) -> int:
        return sum(int(element.vectors.nbytes) for element in batch)

    def get_metrics_namespace(self) -> str:
        return "imgsearch_near_duplicates"


def pairs_above(found: NeighbourBatch, threshold: float) -> Iterator[tuple[str, str, float]]:
    """``(a, b, cosine)`` with ``a < b`` for each neighbour at or above ``threshold``."""
    queries = np.array(found.image_ids, dtype=object)[:, None]
    keep = (found.scores >= threshold) & (found.neighbours != "") & (found.neighbours != queries)
    rows, cols = np.nonzero(keep)
    for query, other, score in zip(
        queries[rows, 0].tolist(),
        found.neighbours[rows, cols].tolist(),
        found.scores[rows, cols].tolist(),
        strict=True,
    ):
        yield (query, other, score) if query < other else (other, query, score)


def _count_queried(batch: VectorBatch) -> VectorBatch:
    Metrics.counter(METRICS_NAMESPACE, QUERIED).inc(len(batch.image_ids))
    return batch


def _count_failed(failure: tuple[Any, Any]) -> None:
    """A slice the index could not answer: counted, so the driver fails the step on it (groups
    over part of the table would hide near-duplicates without a word)."""
    batch, error = failure
    elements = batch if isinstance(batch, list | tuple) else [batch]
    rows = sum(len(e.image_ids) for e in elements if isinstance(e, VectorBatch))
    Metrics.counter(METRICS_NAMESPACE, FAILED).inc(max(rows, 1))
    logger.error("the near-duplicate self-join failed on %d rows: %s", rows, error)


class FindNearDuplicates(beam.PTransform):
    """PCollection[TableSlice] -> PCollection[near_duplicates row dict] (one per grouped image).

    ``carried``: after an in-place update, only its ``requery`` rows are looked up, and its
    ``pairs`` (the untouched groups of the previous version) join the pairs they find.
    """

    def __init__(
        self,
        out_dir: str,
        manifest: IndexManifest,
        config: NearDuplicateConfig,
        carried: CarriedGroups | None = None,
    ) -> None:
        super().__init__()
        self.handler = IndexNeighboursModelHandler(out_dir, manifest, config.neighbours)
        self.threshold = config.threshold
        self.carried = carried

    def expand(self, slices):
        only = self.carried.requery if self.carried is not None else None
        vectors = (
            slices
            | "Spread" >> beam.Reshuffle()
            | "ReadVectors" >> beam.Map(read_vectors, only)
            | "SkipEmpty" >> beam.Filter(lambda batch: len(batch.image_ids) > 0)
            | "CountQueried" >> beam.Map(_count_queried)
        )
        found, failed = (
            vectors | "Neighbours" >> RunInference(self.handler).with_exception_handling()
        )
        _ = failed.failed_inferences | "CountFailed" >> beam.Map(_count_failed)
        pairs = found | "Pairs" >> beam.FlatMap(pairs_above, self.threshold)
        if self.carried is not None:
            kept = slices.pipeline | "CarriedPairs" >> beam.Create(self.carried.pairs)
            pairs = (pairs, kept) | "WithCarried" >> beam.Flatten()
        return (
            pairs
            | "AllPairs" >> beam.combiners.ToList()
            | "Group" >> beam.FlatMap(group_image_pairs)
        )


class WriteNearDuplicates(beam.PTransform):
    """PCollection[row dict] -> ``folder/near_duplicates-00000-of-00001.parquet``."""

    def __init__(self, folder: str, config: NearDuplicateConfig) -> None:
        super().__init__()
        self.folder, self.config = folder, config

    def expand(self, rows):
        return rows | beam.io.WriteToParquet(
            file_path_prefix=join_uri(self.folder, NEAR_DUPLICATES_DIR),
            schema=near_duplicates_schema(self.config.threshold, self.config.neighbours),
            file_name_suffix=".parquet",
            num_shards=1,
        )


def _counter(result, name: str) -> int | None:
    counters = result.metrics().query(
        MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(name)
    )
    values = [c.committed for c in counters["counters"] if c.committed is not None]
    return sum(values) if values else None


def near_duplicates_dir(out_dir: str) -> str:
    return join_uri(out_dir, NEAR_DUPLICATES_DIR)


def remove_near_duplicates(out_dir: str) -> None:
    """Delete ``OUT/near_duplicates`` (what an earlier run, or attempt, wrote)."""
    delete_tree(near_duplicates_dir(out_dir))


def carried_groups(
    base_dir: str,
    base_manifest: IndexManifest,
    upserted: Iterable[str],
    deleted: Iterable[str],
    config: NearDuplicateConfig,
) -> CarriedGroups | None:
    """What an in-place update of ``base_dir`` keeps of its groups (``index.near_duplicates.
    carry_over``); None when the base has none, or made them with other settings: then every
    row is joined again."""
    settings = group_settings(base_dir, base_manifest)
    if settings is None:
        logger.info("the previous version has no near-duplicate groups: joining every row")
        return None
    if abs(settings[0] - config.threshold) > 1e-9 or settings[1] != config.neighbours:
        logger.info("the previous version's groups were made at cosine %.3f with %d neighbours, "
                    "not %.3f with %d: joining every row", *settings, config.threshold,
                    config.neighbours)  # fmt: skip
        return None
    table = read_group_table(base_dir, base_manifest)
    return carry_over(table.to_pylist() if table is not None else [], upserted, deleted)


def beam_near_duplicates(
    config: NearDuplicateConfig,
    pipeline_options: PipelineOptions | None = None,
    carried: CarriedGroups | None = None,
) -> NearDuplicateStep:
    """The step ``index.build.build_index`` runs before publishing: a Beam job of its own.

    ``carried`` (``carried_groups``): an in-place update's groups, joining only its changed
    rows and the members of the groups they touch.
    """

    def run(out_dir: str, manifest: IndexManifest) -> tuple[list[dict[str, Any]], dict[str, int]]:
        folder = near_duplicates_dir(out_dir)
        delete_tree(folder)  # a retried build rewrites the same file; nothing stale stays
        table = [join_path(out_dir, entry["path"]) for entry in manifest.files_under(TABLE_DIR)]
        slices = table_slices(table)
        options = pipeline_options if pipeline_options is not None else PipelineOptions([])
        pipeline = beam.Pipeline(options=options)
        _ = (
            pipeline
            | "TableSlices" >> beam.Create(slices)
            | "FindNearDuplicates" >> FindNearDuplicates(out_dir, manifest, config, carried)
            | "WriteNearDuplicates" >> WriteNearDuplicates(folder, config)
        )
        result = pipeline.run()
        result.wait_until_finish()
        failed = _counter(result, FAILED)
        if failed:
            raise RuntimeError(f"the near-duplicate self-join failed on {failed} rows (see the "
                               f"log): no groups are published for part of a version")  # fmt: skip
        expected = None if carried is None else len(carried.requery)
        counts = _account(
            folder, manifest, sum(s.rows for s in slices), _counter(result, QUERIED), expected
        )
        logger.info(
            "near-duplicates at cosine >= %.3f: %d images in %d groups, %d singletons",
            config.threshold,
            counts["near_duplicate_images"],
            counts["near_duplicate_groups"],
            counts["near_duplicate_singletons"],
        )
        return [file_entry(path, out_dir) for path in parquet_files(folder)], counts

    return run


def unchanged_near_duplicates(base_dir: str, base_manifest: IndexManifest) -> NearDuplicateStep:
    """The step of an in-place update that changed no group (``CarriedGroups.requery`` empty:
    nothing upserted, no deleted row was grouped): the base's groups file, copied as it is,
    with no Beam job (a nightly run over an unchanged corpus would otherwise start one)."""

    def run(out_dir: str, manifest: IndexManifest) -> tuple[list[dict[str, Any]], dict[str, int]]:
        folder = near_duplicates_dir(out_dir)
        delete_tree(folder)
        for entry in base_manifest.files_under(NEAR_DUPLICATES_DIR):
            copy_file(join_path(base_dir, entry["path"]), join_path(out_dir, entry["path"]))
        counts = _account(folder, manifest, manifest.shard_rows, 0, expected=0)
        logger.info("near-duplicates unchanged: %d groups carried over without a join",
                    counts["near_duplicate_groups"])  # fmt: skip
        return [file_entry(path, out_dir) for path in parquet_files(folder)], counts

    return run


def _account(
    folder: str,
    manifest: IndexManifest,
    table_rows: int,
    queried: int | None,
    expected: int | None = None,
) -> dict[str, int]:
    """The step's counts; RuntimeError when a row that should have been queried was not (every
    row, or ``expected`` rows after an in-place update) or a member is not one of the table's
    rows: groups over part of the version would hide near-duplicates silently."""
    indexed = manifest.shard_rows
    wanted = indexed if expected is None else expected
    if table_rows != indexed or (queried is not None and queried != wanted) or wanted > indexed:
        raise RuntimeError(
            f"the near-duplicate step read {table_rows} table rows of an index of {indexed} "
            f"and queried {queried} of the {wanted} it should have"
        )
    members: list[str] = []
    groups: list[str] = []
    for path in parquet_files(folder):
        with open_file(path) as handle:
            part = pq.read_table(handle, columns=["image_id", NEAR_DUPLICATE_GROUP])
        members += part["image_id"].to_pylist()
        groups += part[NEAR_DUPLICATE_GROUP].to_pylist()
    if len(set(members)) != len(members) or len(members) > indexed:
        raise RuntimeError(f"{len(members)} near-duplicate rows, {len(set(members))} distinct "
                           f"images, for {indexed} indexed")  # fmt: skip
    return {
        "near_duplicate_images": len(members),
        "near_duplicate_groups": len(set(groups)),
        "near_duplicate_singletons": indexed - len(members),
        "near_duplicate_rows_joined": wanted,
    }
