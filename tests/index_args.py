"""The argv of an index job over the fake encoder: fast, deterministic, no TensorFlow."""

from __future__ import annotations

from os import PathLike

FAKE_ENCODER = ("--encoder", "fake", "--weights", "none", "--image_size", "64")


def fake_index_args(
    corpus: str | PathLike, out: str | PathLike, version: str, *extra: str
) -> list[str]:
    """``--corpus``, ``--out``, the fake encoder, ``--run_version VERSION``, then ``extra``."""
    return [
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        *FAKE_ENCODER,
        "--run_version",
        version,
        *extra,
    ]
