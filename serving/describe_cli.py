"""``imgsearch describe``: the captions and tags of a photo, as ``POST /api/describe`` gives them.

    imgsearch describe --image photo.jpg --models MODELS
    imgsearch describe --image gs://bucket/photo.jpg --models MODELS --index out/root --json

The photo goes through ``serving.describe.Describer`` on the image encoder named by ``--index``
(its manifest's, as the server would use) or by ``--encoder``/``--weights``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from runtime.arguments import command_parser, show_defaults


def _parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "imgsearch describe",
        "Caption and tag one photo with the models the index job uses: the captioner in "
        "--models (trained on the encoder's spatial maps) and the ImageNet tag head (stock "
        "MobileNetV2). Prints the captions, best first, and the tags.",
        [
            "imgsearch describe --image photo.jpg --models models",
            "imgsearch describe --image photo.jpg --models models --index out/root --json",
        ],
    )
    parser.add_argument("--image", required=True, help="a local path or gs:// uri")
    parser.add_argument("--models", help="models directory holding the captioner")
    parser.add_argument("--captioner", default="captioner", help="the captioner's model name")
    parser.add_argument("--index", help="use this index's image encoder (a publish root or folder)")
    parser.add_argument("--encoder", default="mobilenet_v2", help="image encoder without --index")
    parser.add_argument("--weights", default="auto", help="its weights without --index")
    parser.add_argument("--beam", type=int, default=3, help="beam width of the caption search")
    parser.add_argument("--count", type=int, default=3, help="captions to print at most")
    parser.add_argument("--json", action="store_true", help="print the answer as JSON")
    return show_defaults(parser)


def main(argv: Sequence[str]) -> int:
    """Run ``imgsearch describe``; -> the exit status (2 when nothing can describe it)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.beam < 1 or args.count < 1:
        parser.error("--beam and --count must be at least 1")
    from encoders.base import EncoderSpec
    from encoders.imaging import decode_image
    from encoders.registry import create_image_encoder
    from serving.describe import Describer
    from serving.query_error import QueryError
    from storage.files import open_file

    if args.index:
        from index.manifest import read_manifest
        from index.publish import resolve_index

        index_dir, _ = resolve_index(args.index)
        spec = EncoderSpec.from_json(read_manifest(index_dir).encoder_spec)
    else:
        spec = EncoderSpec(name=args.encoder, weights=args.weights)
    encoder = create_image_encoder(spec)
    with open_file(args.image) as handle:
        data = handle.read()
    pixels, width, height = decode_image(data, size=encoder.input_size)
    try:
        describer = Describer(encoder, spec, args.models, args.captioner, "auto", args.beam,
                              args.count)  # fmt: skip
    except QueryError as exc:
        parser.exit(2, f"imgsearch describe: {exc.message}\n")
    answer = {"image": {"uri": args.image, "width": width, "height": height},
              **describer.describe(pixels)}  # fmt: skip
    if args.json:
        print(json.dumps(answer, indent=1))
        return 0
    for caption in answer["captions"]:
        print(f"{caption['score']:7.3f}  {caption['text']}")
    print("tags: " + ", ".join(f"{t['label']} {t['score']:.2f}" for t in answer["tags"]))
    for part, reason in answer["missing"].items():
        print(f"no {part}: {reason}")
    return 0
