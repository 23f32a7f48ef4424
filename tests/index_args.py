"""The argv of an index job over the fake encoder: fast, deterministic, no TensorFlow."""

from __future__ import annotations

from os import PathLike

FAKE_ENCODER = ("--encoder", "fake", "--weights", "none", "--image_size", "64")

# The near-duplicate step is a Beam job of its own (~1 s a run here): off unless a test turns
# it on (``--near_duplicates on`` in ``extra``: the last flag wins), as the step's own tests do.
NO_NEAR_DUPLICATES = ("--near_duplicates", "off")


def fake_index_args(
    corpus: str | PathLike, out: str | PathLike, version: str, *extra: str
) -> list[str]:
    """``--corpus``, ``--out``, the fake encoder, ``--run_version VERSION``, no near-duplicate
    step, then ``extra``."""
    return [
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        *FAKE_ENCODER,
        "--run_version",
        version,
        *NO_NEAR_DUPLICATES,
        *extra,
    ]
