"""``imgsearch demo`` (what ``make demo`` runs): index a real photo corpus, then search it.

Defaults come from the assets folder (``$IMGSEARCH_ASSETS`` or ``../shared/assets``): the
COCO val2017 mini photos are indexed with ImageNet MobileNetV2, then photos the index has
never seen (COCO train2017 mini) are used as queries; human captions, when the assets carry
them, are printed beside each result so a person can judge the matches.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from imgsearch import settings


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
    parser = argparse.ArgumentParser(prog="imgsearch demo", description=__doc__)
    parser.add_argument("--corpus", help="photos to index (default: assets coco-mini/val2017)")
    parser.add_argument("--queries", help="query photos (default: assets coco-mini/train2017)")
    parser.add_argument("--out", default="demo-out", help="index output folder")
    parser.add_argument("--weights", default="auto", help="auto, imagenet, none or a path")
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--num-queries", type=int, default=4)
    args, beam_args = parser.parse_known_args(argv)

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

    from pipelines import index_job
    from serving.searcher import ImageSearcher

    try:
        result = index_job.run(
            ["--corpus", corpus, "--out", args.out, "--weights", args.weights, *beam_args]
        )
    except FileNotFoundError as exc:  # weights not found: say what to provide
        print(f"imgsearch demo: {exc}", file=sys.stderr)
        return 2
    print(result.summary())

    captions = _coco_captions(assets)
    searcher = ImageSearcher.load(args.out)
    queries = sorted(queries_dir.glob("*.jpg"))[: args.num_queries] if queries_dir else []
    for query in queries:
        print(f"\nquery {query.name}: {captions.get(query.name, '')}")
        for rank, hit in enumerate(searcher.search_image_path(str(query), args.k), start=1):
            name = Path(hit.uri).name
            print(f"  {rank}. {hit.score:.3f}  {name}  {captions.get(name, '')}")
    print(f"\nindex at {args.out}; try: imgsearch search --index {args.out} --image PHOTO.jpg")
    return 0
