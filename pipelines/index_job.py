"""The index job: corpus -> Parquet embedding table -> ScaNN index + manifest.

``run(argv)`` parses and validates flags into an ``IndexConfig``; ``build_pipeline`` only wires
transforms; the ScaNN build runs after the Beam job, over the table the job wrote (in the
launching process, or one Beam worker per shard with ``--index_shards``).

With ``--previous``, one diff (``pipelines.incremental.diff``) says per content what changed
since the previous version, and the way decided at the edge (``config.reuse.decision``)
picks the applier: in place, the job writes only a delta and
``pipelines.incremental.apply.apply_in_place`` updates the previous version's table and index;
otherwise the job rewrites the whole table (unchanged rows re-read, not re-encoded) and the
index is built over it as for a full run.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from encoders.decode_pool import GuardedDecoder
from encoders.registry import check_image_encoder, image_encoder_dim
from index.build import BuildConfig, build_index
from index.hash_codes import write_hash_model
from index.manifest import IndexManifest, read_manifest, write_manifest
from index.near_duplicates import with_near_duplicates
from index.sources import sources_dir
from index.update import UpdateResult
from pipelines.build_shards import beam_shard_runner
from pipelines.captions import AddCaptions
from pipelines.corpus import ReadCorpus, check_corpus_exists
from pipelines.incremental.apply import (
    WriteDeletedIds,
    apply_in_place,
    delta_dir,
    delta_table_dir,
)
from pipelines.incremental.diff import DELETED, DUPLICATES, NEEDS_JOINT, REFRESHED, DiffPrevious
from pipelines.incremental.plan import ENCODE
from pipelines.io import (
    WriteDeadLetters,
    WriteDuplicates,
    WriteEmbeddingTable,
    clear_previous_output,
    count_rows,
    dead_letter_reasons,
)
from pipelines.live_progress import live_progress
from pipelines.near_duplicates import (
    NearDuplicateConfig,
    beam_near_duplicates,
    carried_groups,
    remove_near_duplicates,
    unchanged_near_duplicates,
)
from pipelines.options import IndexConfig, check_known_args
from pipelines.sources import ReuseStoredHashes, WriteSources
from pipelines.transforms import (
    AddJointEmbeddings,
    DecodeImages,
    DedupeImages,
    EncodeImages,
    HashImages,
)
from runtime.entry import run_module_main

logger = logging.getLogger(__name__)


class IndexImages(beam.PTransform):
    """PCollection[ImageRef] -> dict of ``rows``, ``duplicates`` and ``dead_letters``."""

    def __init__(self, config: IndexConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, refs):
        size = (self.config.encoder.image_size, self.config.encoder.image_size)
        source_files = self.config.reuse.source_files if self.config.reuse is not None else ()
        if source_files:
            # Files whose listing stamp is unchanged keep their stored hash, unread.
            to_hash, stored = refs | "StoredHashes" >> ReuseStoredHashes(source_files)
            fresh, unreadable = to_hash | "Hash" >> HashImages(self.config.fetch_limits)
            hashed = (fresh, stored) | "AllHashed" >> beam.Flatten()
        else:
            hashed, unreadable = refs | "Hash" >> HashImages(self.config.fetch_limits)
        reused = needs_joint = deleted = None
        if self.config.reuse is None:
            unique, duplicates = hashed | "Dedupe" >> DedupeImages()
        else:
            # Dedupe and diff in one shuffle: only content the previous version lacks (or made
            # otherwise) is encoded; stored rows to write again come back re-labelled.
            diff = hashed | "DiffPrevious" >> DiffPrevious(self.config.reuse)
            unique, duplicates = diff[ENCODE], diff[DUPLICATES]
            reused, needs_joint = diff[REFRESHED], diff[NEEDS_JOINT]
            if self.config.updates_in_place:
                deleted = diff[DELETED]
        budget = self.config.decode_budget
        decoded, undecodable = unique | "Decode" >> DecodeImages(
            size, self.config.decode_limits, self.config.fetch_limits,
            decode=None if budget is None else GuardedDecoder(budget),
        )  # fmt: skip
        rows, unencodable = decoded | "Encode" >> EncodeImages(
            self.config.encoder,
            self.config.batch_size,
            tag_head=self.config.tag_head,
            tags_top_k=self.config.tags_top_k,
            spatial=self.config.captioner is not None,
        )
        if self.config.captioner is not None:
            rows = rows | "Captions" >> AddCaptions(self.config.captioner)
        if self.config.joint_model is not None:
            if needs_joint is not None:
                rows = (rows, needs_joint) | "NeedJoint" >> beam.Flatten()
            rows = rows | "JointEmbed" >> AddJointEmbeddings(self.config.joint_model)
        if reused is not None:
            rows = (rows, reused) | "WithReused" >> beam.Flatten()
        dead_letters = (unreadable, undecodable, unencodable) | "AllDeadLetters" >> beam.Flatten()
        return {
            "rows": rows,
            "duplicates": duplicates,
            "dead_letters": dead_letters,
            "deleted": deleted,  # image ids an in-place update removes, else None
            "hashed": hashed,  # every readable input with its content hash (for sources/)
        }


def build_pipeline(pipeline: beam.Pipeline, config: IndexConfig) -> None:
    """Wire the job into ``pipeline``; no I/O happens until it runs."""
    refs, unlisted = pipeline | "ReadCorpus" >> ReadCorpus(
        config.corpus, config.corpus_format, config.metadata_columns
    )
    outputs = refs | "IndexImages" >> IndexImages(config)
    dead_letters = (unlisted, outputs["dead_letters"]) | "DeadLetters" >> beam.Flatten()
    dim = image_encoder_dim(config.encoder)
    joint_dim = config.joint_model.dim if config.joint_model is not None else None
    in_place = outputs["deleted"] is not None
    if in_place:
        _ = outputs["deleted"] | "WriteDeleted" >> WriteDeletedIds(delta_dir(config.out))
    _ = outputs["rows"] | "WriteTable" >> WriteEmbeddingTable(
        delta_table_dir(config.out) if in_place else config.table_dir,
        dim,
        config.table_shards,
        joint_dim,
        config.embedding_storage,
        tags=config.tag_head is not None,
        captions=config.captioner is not None,
        attributes=config.metadata_columns,
        hash_codes=config.hash_codes,
    )
    _ = outputs["duplicates"] | "WriteDuplicates" >> WriteDuplicates(config.duplicates_dir)
    _ = outputs["hashed"] | "WriteSources" >> WriteSources(sources_dir(config.out))
    _ = dead_letters | "WriteDeadLetters" >> WriteDeadLetters(config.dead_letters_dir)


@dataclasses.dataclass(frozen=True)
class IndexResult:
    config: IndexConfig
    counts: dict[str, int]
    top_dead_letter_reasons: list[tuple[str, int]]
    manifest: IndexManifest
    update: UpdateResult | None = None  # of an in-place update (pipelines.incremental)

    def summary(self) -> str:
        c = self.counts
        lines = [
            f"indexed {c['indexed']} images into {self.config.out} (version {self.config.version})",
            f"  inputs        {c['inputs']}",
            f"  table rows    {c['indexed']}",
            f"  duplicates    {c['duplicates']}",
            f"  dead letters  {c['dead_letters']}",
        ]
        if self.config.reuse is not None:
            lines.append(
                f"  incremental over {self.config.reuse.previous_version}: "
                f"{c['reused']} rows reused, {c['encoded']} encoded, "
                f"{c['previous_dropped']} previous rows dropped (deleted or changed); "
                f"{c.get('hashes_reused', 0)} files unchanged since then, not read"
            )
        if self.update is not None:
            how = "rebuilt" if self.update.decision.rebuild else "ScaNN upsert/delete in place"
            lines.append(
                f"  index updated from {self.config.reuse.previous_version}: {how}, "
                f"{self.update.upserted} upserted, {self.update.deleted} deleted "
                f"({self.update.decision.reason})"
            )
        m = self.manifest.counts
        if "near_duplicate_groups" in m:
            lines.append(
                f"  near-duplicates {m['near_duplicate_images']} images in "
                f"{m['near_duplicate_groups']} groups ({m['near_duplicate_singletons']} singletons)"
                + (f", {m['near_duplicate_rows_joined']} rows joined again"
                   if m.get("near_duplicate_rows_joined", m["indexed"]) != m["indexed"] else "")
            )  # fmt: skip
        if self.manifest.hashing is not None:
            h = self.manifest.hashing
            lines.append(
                f"  hash codes    {h['bits']} bits ({h['method']}) by "
                f"{h['model']}/{h['model_version']}"
            )
        if c.get("hidden_files_skipped"):
            lines.append(f"  hidden files skipped (not inputs)  {c['hidden_files_skipped']}")
        lines.extend(f"    {n:6d}  {reason}" for reason, n in self.top_dead_letter_reasons)
        return "\n".join(lines)


def _counter(result, name: str) -> int | None:
    counters = result.metrics().query(MetricsFilter().with_namespace("imgsearch").with_name(name))
    values = [c.committed for c in counters["counters"] if c.committed is not None]
    return sum(values) if values else None


def collect_counts(config: IndexConfig, result) -> dict[str, int]:
    """Where every input ended up, from the written files; inputs from the job's counters.

    Raises RuntimeError when the three outputs do not add up to the inputs: an input lost
    between stages is a bug, never something to publish over.
    """
    counts = {
        "duplicates": count_rows(config.duplicates_dir),
        "dead_letters": count_rows(config.dead_letters_dir),
    }
    inputs = _counter(result, "inputs")
    if config.updates_in_place:
        # The table is written after the job (apply_in_place). What it must hold follows from the
        # inputs; update_index checks that against the updated index before writing anything.
        if inputs is None:
            raise RuntimeError("the runner reported no 'inputs' counter: cannot account for rows")
        counts["indexed"] = inputs - counts["duplicates"] - counts["dead_letters"]
    else:
        counts["indexed"] = count_rows(config.table_dir)
    accounted = sum(counts.values())
    counts["inputs"] = accounted if inputs is None else inputs
    counts["hidden_files_skipped"] = _counter(result, "hidden_files_skipped") or 0
    if config.reuse is not None:
        # Every table row was either reused from the previous version or encoded by this run.
        counts["reused"] = _counter(result, "reused") or 0
        counts["encoded"] = counts["indexed"] - counts["reused"]
        counts["joint_recomputed"] = _counter(result, "joint_recomputed") or 0
        counts["previous_dropped"] = _counter(result, "previous_dropped") or 0
        # Inputs whose listing stamp matched the previous version's: their bytes were not read.
        counts["hashes_reused"] = _counter(result, "hashes_reused") or 0
    if inputs is not None and inputs != accounted:
        raise RuntimeError(
            f"{inputs} inputs but {accounted} accounted for "
            f"(table {counts['indexed']}, duplicates {counts['duplicates']}, "
            f"dead letters {counts['dead_letters']})"
        )
    return counts


def run(argv: Sequence[str] | None = None) -> IndexResult:
    """Parse flags, run the Beam job, build the index; the manifest is written last."""
    flags = list(argv) if argv is not None else None  # None: sys.argv, as Beam reads it
    check_known_args(flags)  # a typo is an error here, not a flag Beam drops with a log line
    options = PipelineOptions(flags)
    config = IndexConfig.from_options(options)
    # None with --near_duplicates off; the default threshold is the one measured for the encoder.
    near_duplicates = NearDuplicateConfig.from_options(options, config.encoder.name)
    check_corpus_exists(config.corpus, config.corpus_format)
    check_image_encoder(config.encoder)  # unknown names, missing weights: fail before any work
    clear_previous_output(config.out)
    remove_near_duplicates(config.out)
    if config.hash_codes is not None:
        # Beside the table before the job writes it: build_index / update_index list it in the
        # manifest, so the version codes its queries with the model that coded its rows.
        write_hash_model(config.out, config.hash_codes)
    logger.info("indexing %s -> %s with %s", config.corpus, config.out, config.encoder)
    if config.reuse is not None:
        way = "in place" if config.updates_in_place else "by a rewrite"
        logger.info("reusing unchanged rows of %s %s", config.reuse.table_dir, way)

    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, config)
    # What is loaded by now (Beam, pyarrow, the job's modules) lives as long as the process:
    # keep it out of the full collections that per-image work triggers (cf. load_model).
    gc.freeze()
    with live_progress():  # a status line on a terminal while the local run goes on
        result = pipeline.run()
        result.wait_until_finish()

    counts = collect_counts(config, result)
    if config.updates_in_place:
        update = apply_in_place(
            config.reuse,
            config.out,
            config.version,
            counts,
            k=config.neighbors,
            max_changed_fraction=config.max_changed_fraction,
        )
        counts = {**counts, "indexed": update.manifest.counts["indexed"]}
        reasons = dead_letter_reasons(config.dead_letters_dir)
        manifest = update.manifest
        if near_duplicates is not None:
            # Every version has its groups, or serving would show near-duplicates side by side
            # until the next full build. In place, only the changed rows and the members of
            # the groups they touch are joined again (the self-join of every row costs about
            # twice a +1% upsert at 100k rows: benchmarks/results/near_duplicates.md).
            carried = None
            if not update.decision.rebuild:
                base = read_manifest(config.reuse.index_dir)
                carried = carried_groups(config.reuse.index_dir, base, update.upserted_ids,
                                         update.deleted_ids, near_duplicates)  # fmt: skip
            if carried is not None and not carried.requery:
                step = unchanged_near_duplicates(config.reuse.index_dir, base)
            else:
                step = beam_near_duplicates(near_duplicates, options, carried)
            manifest = with_near_duplicates(config.out, manifest, step)
            write_manifest(config.out, manifest)
        return IndexResult(config, counts, reasons, manifest, update)
    manifest = build_index(
        config.out,
        BuildConfig(
            config.version,
            config.encoder.to_json(),
            k=config.neighbors,
            target_recall=config.target_recall,
            num_shards=config.index_shards,
            quantize=config.index_quantize,
        ),
        counts,
        run_shards=beam_shard_runner(options),
        near_duplicates=(
            beam_near_duplicates(near_duplicates, options) if near_duplicates is not None else None
        ),
    )
    return IndexResult(config, counts, dead_letter_reasons(config.dead_letters_dir), manifest)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m pipelines.index_job --corpus ... --out ...``, as the Beam operator runs it."""
    print(run(argv).summary())


if __name__ == "__main__":
    run_module_main(main)
