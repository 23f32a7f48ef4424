"""``imgsearch words``: similar words, analogies and the words nearest to an indexed image.

    imgsearch words --word dog [-k 10] [--json]
    imgsearch words --analogy athens greece oslo
    imgsearch words --image-id ID --index DIR --models MODELS_DIR [--model NAME]

Words and analogies search GloVe exactly with NumPy (``encoders.word_neighbours``), which for
one query is quicker than importing ScaNN's TensorFlow; image words load the index version and
the joint model as ``imgsearch serve`` does and answer through the same ``WordService``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from runtime.arguments import command_parser, show_defaults


def _parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "imgsearch words",
        "Words nearest to a word (GloVe 6B cosine), analogies (a is to b as c is to ?, "
        "3CosAdd), or the words nearest to an indexed image in a joint model's space. An "
        "unknown word fails with its nearest known spellings.",
        [
            "imgsearch words --word dog -k 5",
            "imgsearch words --analogy athens greece oslo --json",
            "imgsearch words --image-id 000000000139 --index out/root --models models",
        ],
    )
    query = parser.add_mutually_exclusive_group(required=True)
    query.add_argument("--word", help="a word")
    query.add_argument("--analogy", nargs=3, metavar=("A", "B", "C"), help="a is to b as c is to ?")
    query.add_argument("--image-id", help="an indexed image_id (needs --index and --models)")
    parser.add_argument("--index", help="a publish root or an index folder (for --image-id)")
    parser.add_argument("--models", help="models directory (for --image-id)")
    parser.add_argument("--model", help="joint model name (default: a dual encoder, else w2vv)")
    parser.add_argument(
        "--glove", default="auto", help="GloVe vectors: auto (the installed package) or a path"
    )
    parser.add_argument(
        "--vocabulary", type=int, default=20_000, help="--image-id: words the image is matched to"
    )
    parser.add_argument("-k", type=int, default=10, help="words to return")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return show_defaults(parser)


def main(argv: Sequence[str]) -> int:
    """Run ``imgsearch words``; -> the exit status. Unknown words raise ``UnknownWordError``
    (a KeyError, so the CLI prints it in one line with its spelling hints)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error(f"-k must be >= 1, got {args.k}")
    if args.image_id is not None:
        if not args.index or not args.models:
            parser.error("--image-id needs --index DIR and --models MODELS_DIR")
        answer = _image_words(args)
    else:
        from encoders.glove import load_glove
        from encoders.word_neighbours import WordNeighbours, normalise_word

        words = WordNeighbours(load_glove(args.glove))
        if args.word is not None:
            word = normalise_word(args.word)
            answer = {"word": word, "neighbours": words.neighbours(word, args.k)}
        else:
            a, b, c = (normalise_word(w) for w in args.analogy)
            answer = {"a": a, "b": b, "c": c, "neighbours": words.analogy(a, b, c, args.k)}
        answer["neighbours"] = [score.to_json() for score in answer["neighbours"]]
    _print(answer, args.json)
    return 0


def _image_words(args: argparse.Namespace) -> dict:
    from index.publish import resolve_index
    from serving.state import QueryModels, load_bundle
    from serving.word_routes import WordService, WordsUnavailable

    models = QueryModels.load(args.models, args.model)
    index_dir, version = resolve_index(args.index)
    bundle = load_bundle(index_dir, models, version)
    service = WordService(args.glove, models, args.vocabulary)
    try:
        return service.image_words(bundle, args.image_id, args.k)
    except WordsUnavailable as exc:
        raise ValueError(exc.reason) from exc
    except KeyError as exc:
        raise KeyError(
            f"image_id {args.image_id!r} is not in index version {bundle.version}"
        ) from exc


def _print(answer: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
        return
    if "image_id" in answer:
        print(f"words nearest to image {answer['image_id']} ({answer['model']}, "
              f"{answer['vocabulary']} words):")  # fmt: skip
    elif "a" in answer:
        print(f"{answer['a']} is to {answer['b']} as {answer['c']} is to:")
    else:
        print(f"words nearest to {answer['word']!r}:")
    for rank, neighbour in enumerate(answer["neighbours"], start=1):
        print(f"{rank:3d}  {neighbour['score']:.4f}  {neighbour['word']}")
    sys.stdout.flush()
