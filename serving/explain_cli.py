"""``imgsearch explain``: the "why this image" heatmap of an indexed image, as a PNG file.

    imgsearch explain --index DIR --image-id ID --text "a dog on a beach" --models MODELS
    imgsearch explain --index DIR --image-id ID --similar-to ID2 --out heat.png

The same explanation as ``GET /api/explain/{image_id}`` (``serving.explain_routes``): the index
version and the joint model are loaded as ``imgsearch serve`` loads them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from runtime.arguments import command_parser, show_defaults


def _parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "imgsearch explain",
        "Draw why an indexed image scores high for a text query (Grad-CAM of the joint "
        "model's similarity over the CNN's last feature map) or for another indexed image "
        "(the image-image cosine of 'more like this'). Writes a PNG of the photo with the "
        "heat over the part the encoder saw and prints the score and the peak as JSON.",
        [
            'imgsearch explain --index out/root --image-id 000000000139 --text "a dog" '
            "--models models --out heat.png",
            "imgsearch explain --index out/root --image-id 000000000139 "
            "--similar-to 000000000285 --out heat.png",
        ],
    )
    parser.add_argument("--index", required=True, help="a publish root or an index folder")
    parser.add_argument("--image-id", required=True, help="the indexed image to explain")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--text", help="a text query (needs --models)")
    target.add_argument("--similar-to", help="another indexed image_id")
    parser.add_argument("--models", help="models directory (for --text)")
    parser.add_argument("--model", help="joint model name (default: the models' default)")
    parser.add_argument(
        "--map", choices=("positive", "negative"), default="positive",
        help="positive: what raised the score; negative: what lowered it",
    )  # fmt: skip
    parser.add_argument("--out", default="heat.png", help="the PNG to write")
    parser.add_argument("--max-side", type=int, default=512, help="the PNG's longer side")
    return show_defaults(parser)


def main(argv: Sequence[str]) -> int:
    """Run ``imgsearch explain``; -> the exit status (2 on a refused explanation)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.text is not None and not args.models:
        parser.error("--text needs --models MODELS_DIR (the joint model embeds the text)")
    if args.max_side < 16:
        parser.error(f"--max-side must be at least 16, got {args.max_side}")
    from index.publish import resolve_index
    from serving.explain_routes import explain, explanation_png
    from serving.query_error import QueryError
    from serving.state import QueryModels, load_bundle
    from storage.files import write_bytes

    models = QueryModels.load(args.models, args.model) if args.text is not None else QueryModels()
    index_dir, version = resolve_index(args.index)
    bundle = load_bundle(index_dir, models, version)
    try:
        found = explain(
            bundle, args.image_id, args.text, args.similar_to,
            text_off=models.text_off_reason, max_side=args.max_side,
        )  # fmt: skip
    except QueryError as exc:
        parser.exit(2, f"imgsearch explain: {exc.message} (HTTP {exc.status})\n")
    data, headers = explanation_png(found, args.map)
    write_bytes(args.out, data)
    x, y = found.peak(args.map)
    answer = {
        "image_id": args.image_id,
        "score": round(found.score, 6),
        "peak": {"x": round(x, 1), "y": round(y, 1)},  # in the photo's own pixels
        "out": args.out,
        "png_peak": headers["X-Explain-Peak"],
    }
    print(json.dumps(answer))
    return 0
