"""Typed options of the index job, parsed once and frozen into an ``IndexConfig``.

``IndexOptions`` is a Beam ``PipelineOptions`` view, so ``--corpus`` and ``--runner`` travel in
one argv; ``IndexConfig.from_options`` validates them at the edge and everything downstream
receives the frozen config, never the raw flags. ``check_known_args`` refuses, before that, an
argument that neither the job nor Beam knows (Beam itself would drop it with a log line).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import difflib
import logging
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from apache_beam.options.pipeline_options import PipelineOptions

from encoders.base import EncoderSpec
from encoders.decode_pool import DecodeBudget
from encoders.imaging import DecodeLimits
from encoders.precision_choice import PRECISIONS as ENCODER_PRECISIONS
from encoders.precision_choice import ChoiceContext, choose_encoder, int8_name
from encoders.tflite_image import TFLITE_ENCODERS, auto_weights_path
from index.hash_codes import HashCodes
from index.metadata_columns import MetadataColumn, infer_from_schema, parse_metadata_columns
from index.scann_index import QUANTIZE
from index.schema import EMBEDDING_STORAGES
from models.captioner import CaptionerRef, resolve_captioner
from models.hashing import resolve_hash_model
from models.image_encoder import fitting_tag_head
from models.joint import (
    JointModelRef,
    default_dual_model,
    flagged_image_encoder,
    resolve_joint_model,
)
from pipelines.workers import workers_have_gpu
from storage.fetch import FetchLimits
from storage.files import absolute_if_local, join_uri, open_file

if TYPE_CHECKING:
    from pipelines.incremental.plan import ReusePlan


logger = logging.getLogger(__name__)

CORPUS_FORMATS = ("auto", "files", "manifest")

NO_JOINT_MODEL = "none"  # --joint_model none: no joint column, even with --models

HELP_FLAGS = ("-h", "--help")

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


class IndexOptions(PipelineOptions):
    """Flags of ``imgsearch index`` (Beam's own flags are parsed beside them)."""

    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--corpus",
            help="a directory, glob or gs:// prefix of images, or a CSV/JSONL/Parquet manifest "
            "with a 'uri' column (plus optional 'id' and metadata columns)",
        )
        parser.add_argument("--out", help="output directory (local path or gs://)")
        parser.add_argument("--corpus_format", default="auto", choices=CORPUS_FORMATS)
        parser.add_argument(
            "--metadata_columns",
            default="auto",
            help="manifest columns stored typed and filterable, e.g. 'site:string,"
            "taken:timestamp,width:int' (types: string, int, float, bool, timestamp); 'auto': "
            "a Parquet manifest's own scalar columns, none for CSV/JSONL; 'none': no typed columns",
        )
        parser.add_argument(
            "--encoder",
            default=None,
            help="image encoder name (default: the --joint_model's, else mobilenet_v2)",
        )
        parser.add_argument(
            "--weights",
            default=None,
            help="'auto' (assets folder), 'imagenet' (Keras download), 'none', a path or gs:// "
            "uri (default: the --joint_model's, e.g. a fine-tuned encoder, else 'auto')",
        )
        parser.add_argument(
            "--precision",
            default="auto",
            choices=ENCODER_PRECISIONS,
            help="float32: the encoder as named; int8: its int8 version (LiteRT, from "
            "--int8_weights); auto: int8 on CPU workers when a calibrated file is at hand and "
            "nothing needs the float encoder (encoders/precision_choice.py), else float32",
        )
        parser.add_argument(
            "--int8_weights",
            default="auto",
            help="the int8 encoder's .tflite (`imgsearch quantize` makes it); 'auto': the assets "
            "folder's weights/<encoder>_int8.tflite if there is one",
        )
        parser.add_argument("--image_size", type=int, default=None)
        parser.add_argument("--batch_size", type=int, default=32, help="largest encode batch")
        parser.add_argument(
            "--table_shards",
            type=int,
            default=0,
            help="Parquet files in the table; 0 lets the runner decide (no extra shuffle)",
        )
        parser.add_argument(
            "--index_shards",
            type=int,
            default=1,
            help="ScaNN shards, built in parallel; rows go to shard sha256(image_id) mod N",
        )
        parser.add_argument(
            "--embedding_storage",
            default="float32",
            choices=EMBEDDING_STORAGES,
            help="how the table stores embeddings: float32 (exact), float16 (half the bytes), "
            "int8 + a per-row scale (a quarter); readers always get float32",
        )
        parser.add_argument(
            "--index_quantize",
            default="float32",
            choices=QUANTIZE,
            help="how ScaNN stores the vectors it scores exactly: float32, bfloat16 (half) or "
            "int8 (a quarter), at a small recall cost",
        )
        parser.add_argument("--max_pixels", type=int, default=DecodeLimits.max_pixels)
        parser.add_argument(
            "--decode_workers",
            type=int,
            default=DecodeBudget.workers,
            help="decode images in this many worker processes per Beam worker, each stopped "
            "past --decode_timeout_s or --decode_memory_mb (the file is a dead letter); "
            "0 decodes in the Beam worker itself, unguarded",
        )
        parser.add_argument("--decode_timeout_s", type=float, default=_INDEX_DECODE_TIMEOUT_S)
        parser.add_argument("--decode_memory_mb", type=int, default=_INDEX_DECODE_MEMORY_MB)
        parser.add_argument("--max_download_bytes", type=int, default=FetchLimits.max_bytes)
        parser.add_argument("--download_timeout_s", type=float, default=FetchLimits.read_timeout_s)
        parser.add_argument("--download_retries", type=int, default=FetchLimits.retries)
        parser.add_argument("--neighbors", type=int, default=10, help="default k of the index")
        parser.add_argument(
            "--target_recall",
            type=float,
            default=None,
            help="autotune the ScaNN index to this recall@k (e.g. 0.95); default: size rules",
        )
        parser.add_argument(
            "--max_changed_fraction",
            type=float,
            default=0.10,
            help="with --previous: update its index in place (ScaNN upsert/delete) while the rows "
            "changed since its last full build stay within this share of them; beyond, rebuild",
        )
        parser.add_argument("--run_version", default="", help="version name; default: UTC time")
        parser.add_argument(
            "--models",
            default="",
            help="models directory: its dual joint model adds the joint column (see "
            "--joint_model), and it holds the --captioner",
        )
        parser.add_argument(
            "--joint_model",
            default="",
            help="a dual joint model in --models: adds joint_embedding to the table and a joint "
            "ScaNN index (its LATEST version, pinned at launch); default with --models: its "
            "dual model (dual-* names first, then by name: the one serving and eval query), "
            "with --captioner only if it has one; 'none': no joint column",
        )
        parser.add_argument(
            "--previous",
            default="",
            help="incremental run: a publish root (its current version) or an index output "
            "whose rows are reused for unchanged content made by the same encoder version",
        )
        parser.add_argument(
            "--tag_head",
            default="",
            help="'auto' (the assets' ImageNet head) or an .npz classifier head over the "
            "encoder's pooled features: adds a tags column (top --tags_top_k, with scores)",
        )
        parser.add_argument("--tags_top_k", type=int, default=5, help="tags kept per image")
        parser.add_argument(
            "--captioner",
            default="",
            help="a captioner in --models: adds caption, caption_score, caption_model and "
            "captions (every distinct beam, best first) columns (beam search, --caption_beam "
            "wide); the models' dual model, if any, still adds the joint column (--joint_model "
            "none: captions only)",
        )
        parser.add_argument(
            "--caption_beam",
            type=int,
            default=3,
            help="beam width of the caption search, and the most captions kept per image",
        )
        parser.add_argument(
            "--hash_model",
            default="",
            help="a hashing model in --models (`imgsearch train hashing`, trained on this "
            "encoder's embeddings): adds hash_code (the embedding's binary code) and hash_model "
            "columns and copies the model into the version, so `imgsearch serve --image-search "
            "hamming` can search the codes",
        )


# A batch job can wait longer than a query for one file (a 60 MP PNG takes a few seconds on
# one core); each decode worker may take the decode memory limit plus room for the resize.
_INDEX_DECODE_TIMEOUT_S = 30.0
_INDEX_DECODE_MEMORY_MB = 1536


@dataclasses.dataclass(frozen=True)
class IndexConfig:
    """Everything the index job needs, validated."""

    corpus: str
    out: str
    corpus_format: str  # "files" or "manifest" (never "auto" once resolved)
    encoder: EncoderSpec
    decode_limits: DecodeLimits
    fetch_limits: FetchLimits
    batch_size: int = 32
    table_shards: int = 0
    index_shards: int = 1
    embedding_storage: str = "float32"
    index_quantize: str = "float32"
    neighbors: int = 10
    target_recall: float | None = None
    max_changed_fraction: float = 0.10  # in-place updates beyond this share rebuild the index
    version: str = ""
    joint_model: JointModelRef | None = None  # a pinned dual model, or None: no joint column
    reuse: ReusePlan | None = None  # --previous: which stored rows may be reused
    tag_head: str | None = None  # resolved classifier-head file, or None: no tags column
    tags_top_k: int = 5
    captioner: CaptionerRef | None = None  # a pinned captioner, or None: no caption column
    hash_codes: HashCodes | None = None  # a pinned hashing model, or None: no hash_code column
    # Typed, filterable manifest columns (index.metadata_columns), the table's ``attributes``.
    metadata_columns: tuple[MetadataColumn, ...] = ()
    # Decoding in worker processes with a deadline and a memory cap (encoders.decode_pool);
    # None decodes in the Beam worker.
    decode_budget: DecodeBudget | None = None

    @property
    def updates_in_place(self) -> bool:
        """Whether this run updates ``--previous`` in place (``pipelines.incremental``)."""
        return self.reuse is not None and self.reuse.in_place

    @property
    def table_dir(self) -> str:
        return join_uri(self.out, "table")

    @property
    def duplicates_dir(self) -> str:
        return join_uri(self.out, "duplicates")

    @property
    def dead_letters_dir(self) -> str:
        return join_uri(self.out, "dead_letters")

    @classmethod
    def from_options(cls, options: PipelineOptions) -> IndexConfig:
        """Validate the flags; raises ValueError naming the flag that is wrong."""
        opts = options.view_as(IndexOptions)
        if not opts.corpus:
            raise ValueError("--corpus is required (a folder, glob, gs:// prefix or manifest)")
        if not opts.out:
            raise ValueError("--out is required (the output directory)")
        for flag in (
            "image_size", "batch_size", "max_pixels", "max_download_bytes", "neighbors",
            "tags_top_k",
        ):  # fmt: skip
            if getattr(opts, flag) is not None and getattr(opts, flag) <= 0:
                raise ValueError(f"--{flag} must be positive, got {getattr(opts, flag)}")
        if opts.decode_workers < 0:
            raise ValueError(f"--decode_workers must be >= 0, got {opts.decode_workers}")
        decode_budget = None
        if opts.decode_workers:
            decode_budget = DecodeBudget(
                opts.decode_workers, opts.decode_memory_mb * 2**20, opts.decode_timeout_s
            )
        if opts.table_shards < 0:
            raise ValueError(f"--table_shards must be >= 0, got {opts.table_shards}")
        if opts.index_shards < 1:
            raise ValueError(f"--index_shards must be >= 1, got {opts.index_shards}")
        if opts.index_shards > 1 and opts.target_recall is not None:
            raise ValueError("--target_recall autotunes one index; it needs --index_shards 1")
        if opts.index_quantize != "float32" and opts.target_recall is not None:
            raise ValueError("--target_recall autotunes float32 rescoring; drop --index_quantize")
        if opts.max_changed_fraction < 0:
            raise ValueError(
                f"--max_changed_fraction must be >= 0, got {opts.max_changed_fraction}"
            )
        if opts.download_retries < 0:
            raise ValueError(f"--download_retries must be >= 0, got {opts.download_retries}")
        if opts.joint_model and opts.joint_model != NO_JOINT_MODEL and not opts.models:
            raise ValueError("--models and --joint_model go together (a dual model in a folder)")
        if opts.captioner and not opts.models:
            raise ValueError("--captioner needs --models (the folder that holds it)")
        if opts.hash_model and not opts.models:
            raise ValueError("--hash_model needs --models (the folder that holds it)")
        if opts.target_recall is not None and not 0.0 < opts.target_recall <= 1.0:
            raise ValueError(f"--target_recall must be in (0, 1], got {opts.target_recall}")
        version = opts.run_version or dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", version):
            raise ValueError(f"--run_version may hold letters, digits, '.', '_', '-': {version!r}")
        joint_name, implicit = _joint_model_name(opts)
        encoder = flagged_image_encoder(
            opts.models, joint_name, opts.encoder, opts.weights, opts.image_size
        )
        encoder = _precision_encoder(options, encoder, joint_name)
        # A refusal caused by the default joint model (or the encoder taken from it) says so.
        because = ""
        if implicit:
            because = (
                f" ({joint_name} is --models' default joint model; --joint_model none drops it)"
            )
        joint_model = None
        if joint_name:
            try:
                joint_model = resolve_joint_model(opts.models, joint_name, encoder)
            except ValueError as exc:
                raise ValueError(f"{exc}{because}") from None
        tag_head = None
        if opts.tag_head:
            tag_head = str(fitting_tag_head(opts.tag_head, encoder))
        captioner = None
        if opts.captioner:
            try:
                captioner = resolve_captioner(
                    opts.models, opts.captioner, encoder, opts.caption_beam
                )
            except ValueError as exc:
                raise ValueError(f"{exc}{because}") from None
        hash_codes = None
        if opts.hash_model:
            hash_codes = resolve_hash_model(opts.models, opts.hash_model, encoder)
        # Uris are stored as listed (and manifest rows relative to the manifest's folder), so a
        # relative corpus would give uris that only resolve from this working directory.
        corpus = absolute_if_local(opts.corpus)
        corpus_format = resolve_corpus_format(corpus, opts.corpus_format)
        metadata_columns = _metadata_columns(opts.metadata_columns, corpus, corpus_format)
        reuse = None
        if opts.previous:
            reuse = _reuse_plan(
                opts, encoder, joint_model, tag_head, captioner, metadata_columns, hash_codes
            )
        return cls(
            hash_codes=hash_codes,
            metadata_columns=metadata_columns,
            captioner=captioner,
            tag_head=tag_head,
            tags_top_k=opts.tags_top_k,
            corpus=corpus,
            out=opts.out.rstrip("/"),
            corpus_format=corpus_format,
            encoder=encoder,
            decode_limits=DecodeLimits(max_pixels=opts.max_pixels),
            decode_budget=decode_budget,
            fetch_limits=FetchLimits(
                max_bytes=opts.max_download_bytes,
                read_timeout_s=opts.download_timeout_s,
                retries=opts.download_retries,
            ),
            batch_size=opts.batch_size,
            table_shards=opts.table_shards,
            index_shards=opts.index_shards,
            embedding_storage=opts.embedding_storage,
            index_quantize=opts.index_quantize,
            neighbors=opts.neighbors,
            target_recall=opts.target_recall,
            max_changed_fraction=opts.max_changed_fraction,
            version=version,
            joint_model=joint_model,
            reuse=reuse,
        )


def _reuse_plan(
    opts: IndexOptions,
    encoder: EncoderSpec,
    joint_model: JointModelRef | None,
    tag_head: str | None = None,
    captioner: CaptionerRef | None = None,
    metadata_columns: tuple[MetadataColumn, ...] = (),
    hash_codes: HashCodes | None = None,
) -> ReusePlan:
    """Resolve ``--previous`` to a complete version, pin what its rows must match, and decide
    (``pipelines.incremental.decide``) whether this run updates it in place or rewrites it.

    Besides the encoder (and joint model) version, a stored row is reused only if it carries
    the tags and caption this run adds, made by the same head and captioner versions.
    """
    from encoders.registry import image_encoder_dim, image_encoder_id
    from encoders.tags import tag_head_version
    from index.schema import CAPTION_MODEL, TAG_MODEL, embedding_table_schema
    from index.update_policy import RunRequest
    from pipelines.incremental.decide import build_plan

    wanted_schema = embedding_table_schema(
        image_encoder_dim(encoder),
        joint_model.dim if joint_model is not None else None,
        opts.embedding_storage,
        tags=tag_head is not None,
        captions=captioner is not None,
        attributes=metadata_columns,
        hash_bits=hash_codes.bits if hash_codes is not None else None,
    )
    return build_plan(
        opts.previous,
        opts.out,
        encoder_id=image_encoder_id(encoder),
        joint_model_id=joint_model.model_id if joint_model is not None else None,
        # Codes are recomputed for every row written (cheap, from the stored embedding), so
        # they never stop a row's reuse; an in-place update needs the base coded the same way.
        hash_model_id=hash_codes.model_id if hash_codes is not None else None,
        required=tuple(
            (column, value)
            for column, value in (
                (TAG_MODEL, tag_head_version(tag_head) if tag_head else None),
                (CAPTION_MODEL, captioner.model_id if captioner is not None else None),
            )
            if value is not None
        ),
        wanted_schema=wanted_schema,
        request=RunRequest(
            opts.index_shards,
            opts.index_quantize,
            opts.target_recall,
            opts.max_changed_fraction,
            opts.neighbors,
        ),
    )


def _metadata_columns(spec: str, corpus: str, corpus_format: str) -> tuple[MetadataColumn, ...]:
    """``--metadata_columns``: declared, inferred from a Parquet manifest ("auto"), or none."""
    spec = (spec or "auto").strip()
    if spec.lower() == "none":
        return ()
    if spec.lower() != "auto":
        if corpus_format != "manifest":
            raise ValueError("--metadata_columns names manifest columns: --corpus is no manifest")
        try:
            return parse_metadata_columns(spec)
        except ValueError as exc:
            raise ValueError(f"--metadata_columns: {exc}") from None
    if corpus_format != "manifest" or not corpus.lower().endswith(".parquet"):
        return ()
    import pyarrow.parquet as pq

    try:
        with open_file(corpus) as handle:
            return infer_from_schema(pq.ParquetFile(handle).schema_arrow)
    except (OSError, ValueError):  # a glob, or unreadable: check_corpus_exists says why
        return ()


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every ``--flag`` ``parser`` takes (``PipelineOptions`` reads ``_actions`` the same way)."""
    return [flag for action in parser._actions for flag in action.option_strings]


def beam_option_parser() -> argparse.ArgumentParser:
    """The parser Beam builds from every registered ``PipelineOptions`` subclass (its own and its
    runners' options, Dataflow's included, ``IndexOptions``, any a loaded module adds), the one
    ``PipelineOptions.get_all_options`` parses argv with before it drops what is left over."""
    built: list[argparse.ArgumentParser] = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=built.append)
    return built[0]


def check_known_args(argv: Sequence[str] | None, also_known: Sequence[str] = ()) -> None:
    """ValueError unless every argument (None: ``sys.argv[1:]``, as Beam reads it) is a known
    flag (``--name value``, ``--name=value``, a bare boolean ``--name``) whose value parses.

    Known: a flag of any registered ``PipelineOptions`` (``IndexOptions``, Beam's, its
    runners'), or one of ``also_known`` (a job's own flags, parsed before). Beam would log
    "Discarding unparseable args" and run without it; here the message names the flag and the
    closest known one. ``-h``/``--help`` are left to the parse that follows.
    """
    parser = beam_option_parser()
    parser.exit_on_error = False  # a bad value raises ArgumentError instead of exiting
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        _, unknown = parser.parse_known_args([a for a in args if a not in HELP_FLAGS])
    except argparse.ArgumentError as exc:
        raise ValueError(str(exc)) from None
    flags = [arg.split("=", 1)[0] for arg in unknown if arg.startswith("-")]
    if not flags and unknown:
        raise ValueError(
            f"unexpected argument {unknown[0]!r}: flags take one value (--name value or "
            f"--name=value)"
        )
    if flags:
        known = sorted({*option_strings(parser), *also_known} - set(HELP_FLAGS))
        named = []
        for flag in dict.fromkeys(flags):
            close = difflib.get_close_matches(flag, known, n=1)
            named.append(f"{flag} (did you mean {close[0]}?)" if close else flag)
        raise ValueError(
            f"unknown flag{'s' if len(named) > 1 else ''} {', '.join(named)}: neither the "
            f"job's nor a Beam option"
        )


def resolve_corpus_format(corpus: str, corpus_format: str = "auto") -> str:
    """``files`` or ``manifest``: a manifest is named by its table suffix unless told otherwise."""
    if corpus_format not in CORPUS_FORMATS:
        raise ValueError(f"corpus format must be one of {CORPUS_FORMATS}, got {corpus_format!r}")
    if corpus_format != "auto":
        return corpus_format
    return "manifest" if corpus.lower().endswith(MANIFEST_SUFFIXES) else "files"


def _joint_model_name(opts: Any) -> tuple[str, bool]:
    """The joint model the run adds (``""``: none) and whether it is ``--models``' default.

    ``--models`` alone means its dual model; with ``--captioner`` or ``--hash_model`` too, its
    dual model if it has one. ValueError, saying how to train one, when ``--models`` alone
    holds no dual model.
    """
    if opts.joint_model == NO_JOINT_MODEL or not opts.models:
        return "", False
    if opts.joint_model:
        return opts.joint_model, False
    name = default_dual_model(opts.models)
    if name is None and not (opts.captioner or opts.hash_model):
        raise ValueError(
            f"--models {opts.models} holds no published dual joint model, which the joint "
            f"column needs; train one with `imgsearch train joint --dataset DIR --split train "
            f"--out {opts.models}` (it saves dual-*), or pass --joint_model NAME or none"
        )
    if name is not None:
        logger.info("joint column by %s, the dual model of --models %s", name, opts.models)
    return name or "", name is not None


def _precision_encoder(
    options: PipelineOptions, spec: EncoderSpec, joint_model: str
) -> EncoderSpec:
    """``--precision``'s encoder for these workers (``encoders.precision_choice``), logged."""
    opts = options.view_as(IndexOptions)
    if opts.precision == "float32" or spec.name in TFLITE_ENCODERS:
        return spec  # nothing to decide: skip the GPU probe and the --previous manifest read
    target = int8_name(spec.name)
    if target is None and opts.precision == "auto":
        return spec  # no int8 version to choose (int8 forced is refused below, with the reason)
    int8_weights = opts.int8_weights if target is not None else None
    if int8_weights == "auto":
        found = auto_weights_path(target)
        int8_weights = str(found) if found is not None and found.is_file() else None
    pinned = [f"joint model {joint_model}"] if joint_model else []
    pinned += [f"hashing model {opts.hash_model}"] if opts.hash_model else []
    context = ChoiceContext(
        workers_have_gpu=opts.precision == "auto" and workers_have_gpu(options),
        int8_weights=int8_weights or None,
        needs_pooled_features=bool(opts.tag_head or opts.captioner),
        pinned_by=", ".join(pinned),
        previous_encoder=_previous_encoder(opts.previous) if opts.previous else None,
    )
    choice = choose_encoder(spec, opts.precision, context)
    logger.info("image encoder %s", choice.reason)
    return choice.spec


def _previous_encoder(previous: str) -> str | None:
    """The encoder name of the ``--previous`` version (None when it has no readable manifest:
    the reuse plan reports that properly later)."""
    from index.manifest import read_manifest
    from pipelines.incremental.decide import resolve_previous

    try:
        index_dir, _ = resolve_previous(previous)
        return read_manifest(index_dir).encoder_spec.get("name")
    except (OSError, ValueError):
        return None
