"""Which image encoder an index job runs on its workers: the float graph, or its int8 version.

``encoders.inference_policy`` decides how the float (Keras) graph runs on the hardware a worker
finds: on a GPU, mixed float16 with XLA. This is the CPU branch of the same decision, made once
per job at launch because it changes the vectors: an int8 encoder is its own encoder version,
so every row of a table must come from the same one, whichever worker encoded it.

``--precision`` of the index job:

* ``float32``: the encoder as named (the GPU policy still picks mixed float16 on a GPU).
* ``int8``: the encoder's int8 version (``mobilenet_v2`` -> ``mobilenet_v2_int8``), run on
  LiteRT/XNNPACK from the ``--int8_weights`` file; refused, with the reason, where it cannot
  stand in for the float graph.
* ``auto`` (the default): int8 where it is the better choice, else float32. On CPU workers the
  int8 MobileNetV2 is 3.1-3.8x the float graph's images/s in a tight loop and 2.2-2.4x for a whole
  index run over 3,000 photos (``benchmarks/results/encode.md``, ``index.md``), at a mean cosine
  of 0.991 to its vectors and the same retrieval quality (text->image and image->text R@10 on
  Flickr8k dev within 0.006, ``benchmarks/results/int8_retrieval.md``); on a GPU worker the
  float graph runs on the GPU in mixed float16, where LiteRT would leave the GPU idle and
  encode on the host's cores (the vCPUs that decode). So ``auto`` picks int8
  exactly when the workers have no GPU, a calibrated file is at hand, and nothing pins the
  float encoder:

  - the encoder has no int8 version, or its weights are not the stock ones (a fine-tuned or
    custom weights file has no int8 file made from it);
  - the run needs the CNN's pooled features (tags, captions): the int8 graph ends at the
    embedding;
  - a model in the run was trained on the float encoder's vectors (joint, hashing) and would
    refuse int8 vectors;
  - the ``--previous`` version was encoded by the float encoder: switching would re-encode
    every stored row once; a nightly job keeps its encoder unless told (``--precision int8``).

Pure logic over what the launcher knows; no TensorFlow, no interpreter.
"""

from __future__ import annotations

import dataclasses

from encoders.base import EncoderSpec
from encoders.tflite_image import TFLITE_ENCODERS, variant_from_source

PRECISIONS = ("auto", "float32", "int8")
STOCK_WEIGHTS = ("auto", "imagenet")


@dataclasses.dataclass(frozen=True)
class EncoderChoice:
    spec: EncoderSpec
    reason: str  # one line, logged by the launcher


@dataclasses.dataclass(frozen=True)
class ChoiceContext:
    """What the launcher knows about the run, as far as the choice depends on it."""

    workers_have_gpu: bool
    int8_weights: str | None  # the calibrated .tflite (path or uri), None when none is at hand
    needs_pooled_features: bool = False  # tags or captions
    pinned_by: str = ""  # e.g. "joint model dual-tfidf", trained on the float encoder's vectors
    previous_encoder: str | None = None  # the --previous version's encoder name


def int8_name(name: str) -> str | None:
    """The int8 version of Keras encoder ``name``, or None when it has none."""
    try:
        return variant_from_source(name)[0]
    except ValueError:
        return None


def choose_encoder(spec: EncoderSpec, precision: str, context: ChoiceContext) -> EncoderChoice:
    """The encoder the job runs for ``--precision`` (see the module docstring for the rules)."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {PRECISIONS}, got {precision!r}")
    if spec.name in TFLITE_ENCODERS or precision == "float32":
        return EncoderChoice(spec, f"{spec.name} as named")
    target = int8_name(spec.name)
    blockers = _blockers(spec, target, context)
    if precision == "int8":
        if blockers:
            raise ValueError(f"--precision int8 cannot replace {spec.name}: {blockers[0]}")
        return EncoderChoice(_int8_spec(spec, target, context), f"{target}: --precision int8")
    if context.workers_have_gpu:
        return EncoderChoice(spec, f"{spec.name}: the workers have a GPU (mixed float16 there)")
    if not blockers and context.previous_encoder == spec.name:
        blockers = [
            f"--previous was encoded by {context.previous_encoder}; int8 would re-encode every "
            "stored row (--precision int8 switches on purpose)"
        ]
    if blockers:
        return EncoderChoice(spec, f"{spec.name} (not int8: {blockers[0]})")
    return EncoderChoice(
        _int8_spec(spec, target, context),
        f"{target}: CPU workers, and the int8 encoder is ~3x the float graph's images/s at the "
        f"same retrieval quality ({context.int8_weights})",
    )


def _blockers(spec: EncoderSpec, target: str | None, context: ChoiceContext) -> list[str]:
    """Why the int8 version cannot stand in for ``spec`` in this run (empty: it can)."""
    if target is None:
        return [f"{spec.name} has no int8 version"]
    found = []
    if spec.weights not in STOCK_WEIGHTS:
        found.append(f"its weights {spec.weights} are not the stock ones the int8 file is made of")
    if context.needs_pooled_features:
        found.append("tags and captions need the float graph's pooled features")
    if context.pinned_by:
        found.append(f"{context.pinned_by} was trained on {spec.name}'s vectors")
    if not context.int8_weights:
        found.append(
            "no int8 file: pass --int8_weights FILE.tflite (imgsearch quantize --calibration "
            "DIR --out FILE.tflite makes one)"
        )
    return found


def _int8_spec(spec: EncoderSpec, target: str | None, context: ChoiceContext) -> EncoderSpec:
    assert target is not None and context.int8_weights
    return EncoderSpec(name=target, weights=context.int8_weights, image_size=spec.image_size)
