"""``imgsearch demo`` (what ``make demo`` runs): index a real photo corpus, search it, serve it.

Defaults come from the assets folder (``$IMGSEARCH_ASSETS`` or ``../shared/assets``): the
COCO val2017 mini photos are indexed with ImageNet MobileNetV2, then photos the index has
never seen (COCO train2017 mini) are used as queries; human captions, when the assets carry
them, are printed beside each result so a person can judge the matches.

With Flickr8k in the assets, a joint text-image model is trained first (reused on later runs),
so the index also answers text queries. By default it is the small one that keeps the demo
under ten minutes on two cores: a TF-IDF + dual encoder on the frozen MobileNetV2, about a
minute of training. ``--full`` trains ``imgsearch train joint``'s default recipe instead (the
fine-tuned CNN, MiniLM + TF-IDF, ensembles; see the README for its time and figures), indexes
with its fine-tuned encoder and searches with ``mixed-minilm_tfidf``.

The index is published into a publish root (``OUT/root``); ``--serve`` then runs the
HTTP API and search page on it until interrupted (``make demo`` does).
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from imgsearch import settings
from runtime.arguments import command_parser, show_defaults

DEMO_MODEL = "dual-tfidf"
FULL_MODEL = "mixed-minilm_tfidf"
# Each names something a few COCO val2017-mini photos show (their captions say so), so a
# person can judge the top 5; benchmarks/demo_queries.py scores the same five.
TEXT_QUERIES = (
    "a dog running on the grass",
    "a plate of food with broccoli",
    "people riding bikes in the street",
    "a cat lying on a bed",
    "a pizza on a table",
)


def _coco_captions(assets: Path | None) -> dict[str, str]:
    """file name -> first human caption, from the COCO annotations in the assets folder."""
    captions: dict[str, str] = {}
    if assets is None:
        return captions
    for split in ("train2017", "val2017"):
        path = assets / "datasets" / "coco-mini" / "annotations" / f"captions_{split}.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        names = {img["id"]: img["file_name"] for img in data.get("images", [])}
        for ann in sorted(data.get("annotations", []), key=lambda a: a["id"]):
            name = names.get(ann["image_id"])
            if name and name not in captions:
                captions[name] = ann["caption"].strip()
    return captions


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser(
        "imgsearch demo",
        "Index the assets' COCO photos, search them with photos the index has never seen and "
        "with five text queries (training a small joint model on Flickr8k first, once), then "
        "--serve the search page. --full uses the default recipe's models instead.",
        ["imgsearch demo", "imgsearch demo --serve --port 8080", "imgsearch demo --full"],
    )
    parser.add_argument("--corpus", help="photos to index (default: assets coco-mini/val2017)")
    parser.add_argument("--queries", help="query photos (default: assets coco-mini/train2017)")
    parser.add_argument("--out", default="demo-out", help="index output folder")
    parser.add_argument("--weights", default="auto", help="auto, imagenet, none or a path")
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--num-queries", type=int, default=4)
    parser.add_argument("--serve", action="store_true", help="then serve it (Ctrl-C stops)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--train-seconds", type=float, default=60.0, help="joint model budget")
    parser.add_argument(
        "--full",
        action="store_true",
        help="train (once) and use the default recipe of `imgsearch train joint` instead of the "
        "one-minute model",
    )
    args, beam_args = show_defaults(parser).parse_known_args(argv)

    assets = settings.assets_dir()
    coco = assets / "datasets" / "coco-mini" if assets else None
    corpus = args.corpus or (
        str(coco / "val2017") if coco and (coco / "val2017").is_dir() else None
    )
    if corpus is None:
        print(
            "imgsearch demo: no corpus given and no assets folder found.\n"
            "Pass --corpus DIR (a folder of photos) or provide the assets folder.\n"
            + settings.describe_assets_layout(),
            file=sys.stderr,
        )
        return 2
    queries_dir = Path(args.queries) if args.queries else (coco / "train2017" if coco else None)

    from index.publish import version_dir, write_pointer
    from pipelines import index_job
    from serving.searcher import ImageSearcher

    out = Path(args.out)
    model_name = FULL_MODEL if args.full else DEMO_MODEL
    if args.full:
        models = _full_models(assets, out / "models-full", args.weights)
    else:
        models = _joint_models(assets, out / "models", args.weights, args.train_seconds)
    root = out / "root"
    version = f"demo-{_dt.datetime.now(_dt.UTC):%Y%m%dT%H%M%S}"
    index_dir = version_dir(str(root), version)
    joint_args = ["--models", str(models), "--joint_model", model_name] if models else []
    # The full recipe's model names its fine-tuned encoder, which the index job takes from it;
    # the ImageNet tag head fits only the stock CNN, so that index has no tags.
    encoder_args = [] if args.full and models else ["--weights", args.weights, "--tag_head", "auto"]
    try:
        result = index_job.run(
            ["--corpus", corpus, "--out", index_dir, "--run_version", version, *encoder_args,
             *joint_args, *beam_args]
        )  # fmt: skip
    except FileNotFoundError as exc:  # weights not found: say what to provide
        print(f"imgsearch demo: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    write_pointer(str(root), version)
    captions = _coco_captions(assets)
    searcher = ImageSearcher.load(index_dir)
    queries = sorted(queries_dir.glob("*.jpg"))[: args.num_queries] if queries_dir else []
    for query in queries:
        print(f"\nquery {query.name}: {captions.get(query.name, '')}")
        for rank, hit in enumerate(searcher.search_image_path(str(query), args.k), start=1):
            name = Path(hit.uri).name
            print(f"  {rank}. {hit.score:.3f}  {name}  {captions.get(name, '')}")
    if models:
        from serving.text_search import TextSearcher

        texts = TextSearcher.load(searcher, str(models), model_name)
        for text in TEXT_QUERIES:
            print(f"\ntext query: {text!r}")
            for rank, hit in enumerate(texts.search(text, args.k), start=1):
                name = Path(hit.uri).name
                print(f"  {rank}. {hit.score:.3f}  {name}  {captions.get(name, '')}")
    if not args.serve:
        print(
            f"\nserve it: imgsearch serve --index {root}"
            + (f" --models {models}" if models else "")
        )
        return 0
    from serving.config import ServeConfig
    from serving.server import serve

    print(f"\nserving {root} on http://127.0.0.1:{args.port}/ (Ctrl-C stops)")
    serve(ServeConfig(index=str(root), models_dir=str(models) if models else None,
                      joint_model=model_name if models else None, port=args.port))  # fmt: skip
    return 0


def _joint_models(assets: Path | None, models: Path, weights: str, seconds: float) -> Path | None:
    """A models dir holding ``DEMO_MODEL``: reused when present, else trained on Flickr8k train
    (None, and image search only, when the assets carry no Flickr8k)."""
    from models.artifacts import list_models

    if any(model.name == DEMO_MODEL for model in list_models(models)):
        return models
    flickr = assets / "datasets" / "flickr8k" if assets else None
    if flickr is None or not (flickr / "splits" / "train.txt").is_file():
        print("imgsearch demo: no Flickr8k in the assets, so no text search (image search only)")
        return None
    from training import train_joint_job

    print(
        f"training {DEMO_MODEL} on Flickr8k train (about {seconds:.0f} s, once): TF-IDF captions "
        f"and a dual encoder on the frozen MobileNetV2, the small model that keeps the demo "
        f"short; `imgsearch demo --full` trains and uses the default recipe instead"
    )
    code = train_joint_job.main(
        ["--dataset", str(flickr), "--split", "train", "--out", str(models),
         "--text-encoder", "tfidf", "--kind", "dual", "--weights", weights,
         "--encoder", "mobilenet_v2", "--finetune-blocks", "0", "--ensemble", "1", "--no-mixed",
         "--max-seconds", str(seconds)]
    )  # fmt: skip
    return models if code == 0 else None


def _full_models(assets: Path | None, models: Path, weights: str) -> Path | None:
    """A models dir holding ``FULL_MODEL``: reused when present, else ``imgsearch train joint``
    with its defaults on Flickr8k train (progress printed; the README gives the time)."""
    from models.artifacts import list_models

    if any(model.name == FULL_MODEL for model in list_models(models)):
        print(f"using {FULL_MODEL} from {models} (trained earlier)")
        return models
    flickr = assets / "datasets" / "flickr8k" if assets else None
    if flickr is None or not (flickr / "splits" / "train.txt").is_file():
        print("imgsearch demo: no Flickr8k in the assets, so no text search (image search only)")
        return None
    from training import train_joint_job

    print(
        "training the default recipe on Flickr8k train, once: the top five blocks of MobileNetV2 "
        "fine-tuned with MiniLM + TF-IDF captions, then W2VV and dual ensembles (see README)"
    )
    code = train_joint_job.main(
        ["--dataset", str(flickr), "--split", "train", "--out", str(models), "--weights", weights]
    )
    return models if code == 0 else None
