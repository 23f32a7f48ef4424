"""What the decode pool's pipes cost per image: 64 KiB pipes against pipes that hold an answer.

Run: ``.venv/bin/python benchmarks/bench_decode_pool.py [--photos 400] [--rounds 4]``

Two pools of one decode process each (``encoders.decode_pool``), one with the OS's default pipes
and one as the pool makes them (``PIPE_BYTES``), decode the same Flickr8k photos to 224 px in
alternating rounds, beside ``decode_image`` in this process (no pipes at all). Prints images/s
of each round and the milliseconds per image the pipes add over the in-process decode.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import machine_line
from encoders import decode_pool
from encoders.imaging import DecodeLimits, decode_image
from imgsearch import settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    assets = settings.assets_dir()
    if assets is None:
        print(settings.describe_assets_layout(), file=sys.stderr)
        return 2
    photos = sorted((assets / "datasets" / "flickr8k" / "images").glob("*.jpg"))[: args.photos]
    data = [p.read_bytes() for p in photos]
    print(machine_line())

    widen = decode_pool._widen
    decode_pool._widen = lambda pipe: None  # the OS's default pipe size (64 KiB on Linux)
    default = decode_pool.DecodePool(decode_pool.DecodeBudget(workers=1))
    decode_pool._widen = widen
    wide = decode_pool.DecodePool(decode_pool.DecodeBudget(workers=1))
    decoders = {
        "in this process": lambda d: decode_image(d, (224, 224), DecodeLimits()),
        "pool, 64 KiB pipes": lambda d: default.decode(d, (224, 224), DecodeLimits()),
        f"pool, {decode_pool.PIPE_BYTES >> 10} KiB pipes": lambda d: wide.decode(
            d, (224, 224), DecodeLimits()
        ),
    }
    for decode in decoders.values():
        for d in data[:20]:  # warm-up: the worker's imports and first allocations
            decode(d)
    seconds: dict[str, list[float]] = {name: [] for name in decoders}
    for _ in range(args.rounds):  # alternating: the same load for each
        for name, decode in decoders.items():
            start = time.perf_counter()
            for d in data:
                decode(d)
            seconds[name].append(time.perf_counter() - start)
    default.close()
    wide.close()
    base = float(np.median(seconds["in this process"]))
    for name, times in seconds.items():
        rates = ", ".join(f"{len(data) / t:.0f}" for t in times)
        extra = (float(np.median(times)) - base) / len(data) * 1000
        print(f"{name:22s} images/s by round: {rates}; pipes add {extra:.2f} ms per image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
