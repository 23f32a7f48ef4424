"""Where benchmarks find their real data: the assets folder unless a flag names another."""

from __future__ import annotations

import argparse

from imgsearch import settings


def add_flickr8k_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default=None, help="Flickr8k folder (default: the assets)")


def flickr8k_dir(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """``--dataset``, else the assets' Flickr8k; a usage error when neither exists."""
    if args.dataset:
        return args.dataset
    assets = settings.assets_dir()
    if assets is None:
        parser.error("no assets folder found: pass --dataset")
    return str(assets / "datasets" / "flickr8k")
