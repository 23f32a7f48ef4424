"""The Keras backbones this project knows, and which weights each is built with.

``KERAS_ARCHITECTURES`` is the table of backbones (``keras.applications`` constructor, pooled
width, preprocessing); ``resolve_weights`` turns ``EncoderSpec.weights`` (a path, a gs:// uri,
``"auto"``, ``"imagenet"`` or ``"none"``) into Keras' ``weights=`` argument and the tag that
names the weights in every version string. Separate from the encoder (``encoders.keras_image``)
because all of it is decided before TensorFlow is touched: ``encoders.registry`` reads it to
size tables and reject bad specs cheaply, and importing it never imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from encoders.assets import assets_dir, describe_assets_layout
from storage.files import open_file, sha256_file

logger = logging.getLogger(__name__)

# Seed for weights="none": the same random network in every process, so two workers (or a test
# and the pipeline it checks) built without pretrained weights still agree on every vector.
RANDOM_INIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class KerasArchitecture:
    """One backbone from ``keras.applications`` and what its pretrained weights expect."""

    application: str  # constructor name in keras.applications
    dim: int  # width of the globally pooled features
    preprocessing: str  # "tf" (scale to [-1, 1]), "raw" (0-255 floats) or "caffe" (BGR - mean)
    auto_weights_file: str | None  # file name looked up under <assets>/weights for "auto"
    # Also encode the horizontally mirrored image and average the two pooled vectors. A photo
    # and its mirror mean the same to a caption ("a dog runs left" aside), so the average is a
    # steadier description of the image; it costs one more backbone pass per image.
    flip_average: bool = False


KERAS_ARCHITECTURES: dict[str, KerasArchitecture] = {
    "mobilenet_v2": KerasArchitecture(
        application="MobileNetV2",
        dim=1280,
        preprocessing="tf",
        auto_weights_file="mobilenet_v2_1.0_224_no_top.weights.h5",
    ),
    # EfficientNet carries its own Rescaling + Normalization layers and wants raw 0-255 floats.
    "efficientnet_b0": KerasArchitecture(
        application="EfficientNetB0", dim=1280, preprocessing="raw", auto_weights_file=None
    ),
    "resnet50": KerasArchitecture(
        application="ResNet50", dim=2048, preprocessing="caffe", auto_weights_file=None
    ),
    # The same MobileNetV2 weights with test-time mirroring (see KerasArchitecture): its own
    # name, hence its own encoder_id, so its rows never mix with plain mobilenet_v2 rows.
    "mobilenet_v2_flip": KerasArchitecture(
        application="MobileNetV2",
        dim=1280,
        preprocessing="tf",
        auto_weights_file="mobilenet_v2_1.0_224_no_top.weights.h5",
        flip_average=True,
    ),
}


@dataclasses.dataclass(frozen=True)
class ResolvedWeights:
    """What ``spec.weights`` means for one architecture, decided before TensorFlow is touched.

    ``keras_weights`` is the value handed to the ``keras.applications`` constructor (a file path,
    ``"imagenet"`` or None for random init); ``tag`` names the weights inside the version string.
    """

    keras_weights: str | None
    tag: str


def architecture_for(name: str) -> KerasArchitecture:
    """The table entry for ``name``, or ValueError listing the known ones."""
    try:
        return KERAS_ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(KERAS_ARCHITECTURES))
        raise ValueError(f"unknown Keras image encoder {name!r}; known: {known}") from None


@functools.lru_cache(maxsize=16)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    # Size and mtime are part of the cache key so a file replaced in place is hashed again.
    return sha256_file(path)


def weights_file_sha256(path: Path) -> str:
    """Hex sha256 of a weights file (cached per path, size and modification time)."""
    stat = path.stat()
    return _sha256_of(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _weights_file(path: Path) -> ResolvedWeights:
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {path} does not exist; pass the path of a Keras .weights.h5 file, "
            f'"imagenet", "none" or "auto".\n{describe_assets_layout()}'
        )
    if not path.name.endswith(".weights.h5"):
        # Keras 3 only loads weights from files with this suffix; say so before building.
        raise ValueError(f"weights file {path} must be a Keras '.weights.h5' file")
    return ResolvedWeights(keras_weights=str(path), tag=weights_file_sha256(path)[:12])


def fetch_remote_weights(uri: str, suffix: str = ".weights.h5") -> Path:
    """A local copy of a weights file at ``uri`` (gs:// or any Beam filesystem), cached.

    Keras loads weights from local files only. Dataflow workers and serving replicas read the
    weights from the bucket the job names, so nothing has to be baked into the image. The copy
    is keyed by uri, size and modification time (a replaced object is fetched again) and lands
    by rename, so threads or processes fetching at once never see half a file. The version tag
    is still the sha256 of the bytes, so a local and a gs:// copy of one file index alike.
    ``suffix`` is the file type the caller loads (``.tflite`` for ``encoders.tflite_image``).
    """
    from apache_beam.io.filesystems import FileSystems

    name = uri.rstrip("/").rsplit("/", 1)[-1]
    if not name.endswith(suffix):
        raise ValueError(f"weights file {uri} must be a '{suffix}' file")
    matched = FileSystems.match([uri])[0].metadata_list
    if not matched:
        raise FileNotFoundError(f"weights file {uri} does not exist")
    meta = matched[0]
    key = hashlib.sha256(f"{uri}|{meta.size_in_bytes}|{meta.last_updated_in_seconds}".encode())
    target = Path(tempfile.gettempdir()) / "imgsearch-weights" / key.hexdigest()[:24] / name
    if target.is_file() and target.stat().st_size == meta.size_in_bytes:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{name}.{uuid.uuid4().hex}")
    try:
        with (
            open_file(uri) as source,
            open(partial, "wb") as copy,
        ):
            shutil.copyfileobj(source, copy, 1 << 20)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    logger.info("fetched weights %s -> %s", uri, target)
    return target


def resolve_weights(name: str, weights: str) -> ResolvedWeights:
    """Turn ``EncoderSpec.weights`` into Keras' ``weights=`` argument and a version tag.

    Raises FileNotFoundError (saying what to provide) when ``"auto"`` finds nothing or a path is
    missing, ValueError for a name that is not an architecture.
    """
    architecture = architecture_for(name)
    if weights == "imagenet":
        return ResolvedWeights(keras_weights="imagenet", tag="keras-imagenet")
    if weights == "none":
        return ResolvedWeights(keras_weights=None, tag=f"random-seed{RANDOM_INIT_SEED}")
    if "://" in weights:
        return _weights_file(fetch_remote_weights(weights))
    if weights != "auto":
        return _weights_file(Path(weights).expanduser())

    assets = assets_dir()
    if assets is None:
        looked = "no assets folder was found"
    elif architecture.auto_weights_file is None:
        looked = f"no weights file for it is known in {assets / 'weights'}"
    else:
        candidate = assets / "weights" / architecture.auto_weights_file
        if candidate.is_file():
            return _weights_file(candidate)
        looked = f"{candidate} does not exist"
    raise FileNotFoundError(
        f'weights="auto" found no weights for {name!r} ({looked}). Pass weights=<path to a '
        f'Keras .weights.h5 file for {architecture.application} without top>, "imagenet" '
        f'(downloads, needs internet) or "none" (random, for tests).\n'
        f"{describe_assets_layout()}"
    )
