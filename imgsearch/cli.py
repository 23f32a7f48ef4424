"""``imgsearch``: one console script, one subcommand per job.

    imgsearch index  --corpus SRC --out DIR [options] [Beam options]
    imgsearch search --index DIR (--image PATH | --image-id ID | --text "...") [-k 10] [--json]
                     [--models MODELS_DIR [--model NAME]]
    imgsearch search --index DIR --text "..." --models MODELS_DIR --fused   (joint+captions+tags)
    imgsearch train joint --dataset DIR --split train --out MODELS_DIR    (the default recipe)
    imgsearch train captioner --dataset DIR --split train --out MODELS_DIR [--max-seconds 600]
    imgsearch train fusion --dataset DIR --split dev --out MODELS_DIR
    imgsearch eval   --dataset DIR --out OUT [--models MODELS_DIR] [--split dev] [Beam options]
    imgsearch eval score --submission FILE --dataset DIR [--split dev]
    imgsearch serve  --index ROOT_OR_INDEX_DIR [--port 8080]
                     [--models MODELS_DIR [--model NAME] [--fused]]
    imgsearch demo   [--out DIR] [--full]
    imgsearch publish  --root ROOT --version VERSION [--no-verify]
    imgsearch rollback --root ROOT [--to VERSION]
    imgsearch versions --root ROOT [--prune --keep N]

Heavy imports (Beam, TensorFlow, ScaNN) happen inside each subcommand so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from runtime.log_setup import configure_logging, split_log_flags
from runtime.process_exit import run_as_process

logger = logging.getLogger("imgsearch")


def _index(argv: Sequence[str]) -> int:
    from pipelines import index_job

    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: imgsearch index --corpus SRC --out DIR [--encoder mobilenet_v2] "
            "[--weights auto|imagenet|none|PATH] [--batch_size 32] [--table_shards 0] "
            "[--models MODELS_DIR --joint_model DUAL_NAME] [--tag_head auto|PATH --tags_top_k 5] "
            "[--models MODELS_DIR --captioner NAME --caption_beam 3] "
            "[--previous ROOT_OR_DIR [--max_changed_fraction 0.1]] "
            "[Beam options, e.g. --runner DataflowRunner --direct_num_workers 2]"
        )
        return 0
    result = index_job.run(argv)
    print(result.summary())
    return 0


def _search(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="imgsearch search", description="similar-image search")
    parser.add_argument("--index", required=True, help="the --out folder of `imgsearch index`")
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", help="a query image file")
    query.add_argument("--image-id", help="an indexed image_id")
    query.add_argument("--text", help="a text query (needs --models)")
    parser.add_argument("--models", help="models directory (for --text)")
    parser.add_argument("--model", help="joint model name (default: a dual encoder, else w2vv)")
    parser.add_argument(
        "--fused",
        action="store_true",
        help="--text: fuse the joint model with the index's caption and tag columns (fitted "
        "weights from `imgsearch train fusion`, else reciprocal rank fusion); hits say why",
    )
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    from serving.searcher import ImageSearcher

    if args.text is not None and not args.models:
        parser.error("--text needs --models MODELS_DIR (see `imgsearch train joint`)")
    if args.fused and args.text is None:
        parser.error("--fused goes with --text")
    searcher = ImageSearcher.load(args.index)
    if args.fused:
        import dataclasses

        from serving.fused_search import FusedSearcher

        fused = FusedSearcher.load(searcher, args.index, args.models, args.model)
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
    if args.text is not None:
        from serving.text_search import TextSearcher

        hits = TextSearcher.load(searcher, args.models, args.model).search(args.text, args.k)
    elif args.image:
        hits = searcher.search_image_path(args.image, args.k)
    else:
        hits = searcher.similar_to_image_id(args.image_id, args.k)
    if args.json:
        print(json.dumps([hit.__dict__ for hit in hits], indent=2))
    else:
        for rank, hit in enumerate(hits, start=1):
            print(f"{rank:3d}  {hit.score:.4f}  {hit.image_id}  {hit.uri}")
    return 0


def _eval(argv: Sequence[str]) -> int:
    from evaluation import eval_job

    return eval_job.main(argv)


def _serve(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="imgsearch serve", description="HTTP search API and search page"
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
    parser.add_argument("--max-upload-mb", type=float, default=10.0)
    parser.add_argument("--no-verify", action="store_true", help="skip manifest checksums")
    args = parser.parse_args(argv)

    from index.manifest import ManifestVerificationError
    from serving.config import ServeConfig
    from serving.server import serve

    try:
        config = ServeConfig(
            index=args.index,
            models_dir=args.models,
            joint_model=args.model,
            fused=args.fused,
            host=args.host,
            port=args.port,
            poll_interval_s=args.poll_seconds,
            max_upload_bytes=int(args.max_upload_mb * 2**20),
            verify=not args.no_verify,
        )
        serve(config)
    except ManifestVerificationError as exc:
        # A damaged index must not start serving; say which file, without a traceback.
        print(f"imgsearch serve: error: {exc}", file=sys.stderr)
        return 2
    return 0


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
    if not argv or argv[0] != "joint":
        print(
            "usage: imgsearch train {joint,captioner,fusion} --dataset DIR --split SPLIT "
            "--out MODELS_DIR ..."
        )
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from training import train_joint_job

    return train_joint_job.main(argv[1:])


def _publish(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="imgsearch publish", description="serve ROOT/versions/VERSION (atomic pointer swap)"
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
    parser = argparse.ArgumentParser(
        prog="imgsearch rollback", description="serve an earlier version again (one pointer swap)"
    )
    parser.add_argument("--root", required=True, help="publish root (holds latest.json)")
    parser.add_argument("--to", help="version to serve (default: the previously published one)")
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
    parser = argparse.ArgumentParser(prog="imgsearch versions", description="list, prune")
    parser.add_argument("--root", required=True, help="publish root")
    parser.add_argument("--prune", action="store_true", help="apply retention (--keep)")
    parser.add_argument("--keep", type=int, default=7, help="complete versions to keep")
    args = parser.parse_args(argv)
    from index.publish import list_versions, prune_versions, read_pointer

    if args.prune:
        for name in prune_versions(args.root, args.keep):
            print(f"deleted {name}")
    pointer = read_pointer(args.root)
    for info in list_versions(args.root):
        mark = "*" if pointer is not None and pointer.version == info.version else " "
        print(f"{mark} {info.version}{'' if info.complete else '  (incomplete)'}")
    return 0


COMMANDS = {
    "index": _index,
    "search": _search,
    "train": _train,
    "eval": _eval,
    "serve": _serve,
    "demo": _demo,
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
    # Before any subcommand imports TensorFlow: its C++ log level is read once, at load.
    configure_logging(flags)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except (ValueError, FileNotFoundError, KeyError) as exc:
        # User errors (bad flags, missing weights, unknown ids): one clear line, no traceback.
        print(f"imgsearch {argv[0]}: error: {exc}", file=sys.stderr)
        return 2


def entry() -> NoReturn:
    """The ``imgsearch`` console script: ``main`` and then a clean end (runtime.process_exit)."""
    run_as_process(main)


if __name__ == "__main__":
    entry()
