"""Selective-int8 TFLite image encoders: the Keras embedding graph, quantized, on XNNPACK.

``mobilenet_v2_int8`` runs a ``.tflite`` file made by ``imgsearch quantize``
(``encoders.quantize_cli``) from the project's own MobileNetV2 graph: uint8 pixels in (the same
``encoders.imaging`` pixels every encoder takes), the same preprocessing inside, unit embeddings
out. About 3x float32's images/s on CPU at a mean cosine of ~0.99 to float32's vectors
(``benchmarks/results/encode.md``). Its version is the hash of the .tflite file, so its rows never
mix with float32 rows or with another calibration's.

Only embeddings: the quantized graph ends at the embedding, so there are no pooled features or
spatial maps (tags and the captioner refuse this encoder and name a Keras one instead).

The runtime is LiteRT (``ai_edge_litert``, the successor of the deprecated
``tf.lite.Interpreter``; same kernels, same vectors): running this encoder imports no TensorFlow.
Importing this module imports neither.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from encoders.assets import assets_dir, describe_assets_layout
from encoders.base import EncoderSpec, ImageEncoder, check_pixel_batch, l2_normalize
from encoders.keras_backbones import fetch_remote_weights, weights_file_sha256

logger = logging.getLogger(__name__)

TFLITE_SUFFIX = ".tflite"

# Images per interpreter call: bounds the activation memory on large batches. The input tensor
# is resized to each chunk's length instead of padding to a fixed batch: measured on 2 cores,
# resizing costs ~1 ms while padding one query image to 32 costs a 32-image pass (~100 ms), and
# XNNPACK gives the same row whatever the batch size (checked by tests/encoders).
CHUNK_SIZE = 32


@dataclasses.dataclass(frozen=True)
class TfliteVariant:
    """One quantized encoder: which Keras encoder it is made from, and where "auto" looks."""

    source: str  # the Keras encoder name (encoders.keras_backbones) quantize_cli converts
    dim: int
    auto_file: str  # file name under <assets>/weights that weights="auto" means


TFLITE_ENCODERS: dict[str, TfliteVariant] = {
    "mobilenet_v2_int8": TfliteVariant(
        source="mobilenet_v2", dim=1280, auto_file="mobilenet_v2_int8.tflite"
    ),
}


def variant_for(name: str) -> TfliteVariant:
    try:
        return TFLITE_ENCODERS[name]
    except KeyError:
        known = ", ".join(sorted(TFLITE_ENCODERS))
        raise ValueError(f"unknown TFLite image encoder {name!r}; known: {known}") from None


def variant_from_source(source: str) -> tuple[str, TfliteVariant]:
    """The int8 encoder made from Keras encoder ``source`` (what ``imgsearch quantize`` makes)."""
    for name, variant in TFLITE_ENCODERS.items():
        if variant.source == source:
            return name, variant
    known = ", ".join(sorted(variant.source for variant in TFLITE_ENCODERS.values()))
    raise ValueError(f"no int8 encoder is made from {source!r}; quantizable: {known}")


def auto_weights_path(name: str) -> Path | None:
    """Where ``weights="auto"`` looks for ``name``'s .tflite file (None: no assets folder)."""
    assets = assets_dir()
    return None if assets is None else assets / "weights" / variant_for(name).auto_file


def quantize_hint(name: str, out: Path | str = "FILE.tflite") -> str:
    """The command that makes ``name``'s weights file (quoted in every "not found" error)."""
    source = variant_for(name).source
    return (
        f"make one with: imgsearch quantize --encoder {source} --weights auto "
        f"--calibration DIR_OF_PHOTOS --out {out}"
    )


@dataclasses.dataclass(frozen=True)
class ResolvedTflite:
    path: Path
    tag: str  # the first 12 hex digits of the file's sha256


def resolve_tflite_weights(name: str, weights: str) -> ResolvedTflite:
    """``EncoderSpec.weights`` (a path, a gs:// uri or "auto") -> the local .tflite and its tag.

    Cheap (no TensorFlow, no interpreter): the registry calls it to check a spec and compute its
    ``encoder_id``. FileNotFoundError says how to make the file.
    """
    variant_for(name)
    if weights in ("imagenet", "none"):
        raise ValueError(
            f"{name} runs a quantized .tflite file, not weights={weights!r}; pass its path or "
            f'"auto" ({quantize_hint(name)})'
        )
    if "://" in weights:
        path = fetch_remote_weights(weights, suffix=TFLITE_SUFFIX)
    elif weights == "auto":
        found = auto_weights_path(name)
        if found is None or not found.is_file():
            where = "no assets folder was found" if found is None else f"{found} does not exist"
            raise FileNotFoundError(
                f'weights="auto" found no .tflite for {name!r} ({where}); '
                f"{quantize_hint(name, found or 'FILE.tflite')}\n{describe_assets_layout()}"
            )
        path = found
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist; {quantize_hint(name)}")
    if not path.name.endswith(TFLITE_SUFFIX):
        raise ValueError(f"weights file {path} for {name} must be a '{TFLITE_SUFFIX}' file")
    return ResolvedTflite(path=path, tag=weights_file_sha256(path)[:12])


def tflite_version(tag: str, image_size: int) -> str:
    return f"tflite-{tag}-{image_size}"


def cpu_budget() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit readable: the affinity mask is the budget
    return max(1, cpus)


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as error:
        raise ImportError(
            "the int8 image encoder needs LiteRT: pip install ai-edge-litert==2.3.0 "
            "(pinned in requirements.txt)"
        ) from error
    return Interpreter


class TfliteImageEncoder(ImageEncoder):
    """A quantized ``.tflite`` embedding graph as an ``ImageEncoder`` (see the module docstring).

    Build once per process (``load_model`` in Beam, startup in serving) and reuse: ``encode`` is
    thread-safe (one interpreter, calls serialised by a lock) and runs on ``num_threads``
    threads (default: the process's CPU budget).
    """

    def __init__(self, spec: EncoderSpec, num_threads: int | None = None) -> None:
        variant = variant_for(spec.name)
        resolved = resolve_tflite_weights(spec.name, spec.weights)
        self.spec = spec
        self.name = spec.name
        self.dim = variant.dim
        self.input_size = (spec.image_size, spec.image_size)
        self.version = tflite_version(resolved.tag, spec.image_size)
        self.num_threads = num_threads if num_threads is not None else cpu_budget()
        self.path = resolved.path

        interpreter = _interpreter_class()(
            model_path=str(resolved.path), num_threads=self.num_threads
        )
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{resolved.path} is not an embedding model (one input, one output)")
        shape = tuple(int(side) for side in inputs[0]["shape"][1:])
        if shape != (*self.input_size, 3) or inputs[0]["dtype"] != np.uint8:
            raise ValueError(
                f"{resolved.path} takes {inputs[0]['dtype'].__name__}{shape} pixels, not "
                f"uint8({spec.image_size}, {spec.image_size}, 3): pass image_size "
                f"{shape[0] if shape else '?'} or quantize at this size"
            )
        if int(outputs[0]["shape"][-1]) != self.dim:
            raise ValueError(
                f"{resolved.path} gives {outputs[0]['shape'][-1]}-d vectors, {spec.name} is "
                f"{self.dim}-d"
            )
        self._interpreter = interpreter
        self._input = inputs[0]["index"]
        self._output = outputs[0]["index"]
        self._batch = 0  # the batch size the input tensor is allocated for
        self._lock = threading.Lock()
        logger.info(
            "built image encoder %s (%d-d, LiteRT XNNPACK, %d threads)",
            self.encoder_id, self.dim, self.num_threads,
        )  # fmt: skip

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3)`` uint8 at ``input_size`` -> ``(N, dim)`` float32 unit vectors."""
        pixels = check_pixel_batch(pixels, self.input_size)
        if len(pixels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        outputs = []
        with self._lock:
            for start in range(0, len(pixels), CHUNK_SIZE):
                outputs.append(self._invoke(pixels[start : start + CHUNK_SIZE]))
        return l2_normalize(np.concatenate(outputs))

    def pooled_features(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError(
            f"{self.encoder_id} gives embeddings only (its quantized graph ends at the "
            f"embedding); use {variant_for(self.name).source} for pooled features"
        )

    def _invoke(self, chunk: np.ndarray) -> np.ndarray:
        if len(chunk) != self._batch:
            self._interpreter.resize_tensor_input(self._input, [len(chunk), *chunk.shape[1:]])
            self._interpreter.allocate_tensors()
            self._batch = len(chunk)
        self._interpreter.set_tensor(self._input, np.ascontiguousarray(chunk))
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output).astype(np.float32, copy=True)

    def __repr__(self) -> str:
        return f"TfliteImageEncoder({self.encoder_id!r}, input_size={self.input_size})"
