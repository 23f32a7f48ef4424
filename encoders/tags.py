"""Image tags from an ImageNet classifier head over the encoder's pooled features.

The head is a linear layer (``kernel`` ``(dim, classes)``, ``bias``, ``labels``) trained on the
same globally pooled backbone features the image encoder already computes, so tagging an image
costs one matrix product, never a second CNN pass: ``logits = pooled @ kernel + bias``, softmax,
top-k. A tag is ``{"label": "golden retriever", "score": 0.61}``; the label is the class' first
synonym (ImageNet names are comma-separated synonym lists); ``TagHead.synonyms`` keeps the rest
for tag search (``encoders.tag_match``).

The shared assets hold ``mobilenet_v2_1.0_224_imagenet1001_head.npz`` (1001 classes, index 0
"background", which is never a tag); ``resolve_tag_head("auto")`` finds it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from encoders.assets import assets_dir, describe_assets_layout

AUTO_HEAD_FILE = Path("weights") / "mobilenet_v2_1.0_224_imagenet1001_head.npz"
DEFAULT_TOP_K = 5
# Classes that describe no content; never emitted as tags.
IGNORED_LABELS = frozenset({"background"})


def resolve_tag_head(head: str) -> Path:
    """``"auto"`` (the assets folder's MobileNetV2 ImageNet head) or a path -> an existing file.

    FileNotFoundError saying what to provide when nothing is there.
    """
    if head == "auto":
        assets = assets_dir()
        if assets is not None and (assets / AUTO_HEAD_FILE).is_file():
            return assets / AUTO_HEAD_FILE
        where = assets / AUTO_HEAD_FILE if assets else f"<assets>/{AUTO_HEAD_FILE}"
        raise FileNotFoundError(
            f"--tag_head auto found no classifier head at {where}. Pass the path of an .npz "
            f"with 'kernel' (dim x classes), 'bias' (classes) and 'labels' (classes strings), "
            f"trained on the image encoder's pooled features.\n{describe_assets_layout()}"
        )
    path = Path(head).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"tag head {path} does not exist (an .npz: kernel, bias, labels)")
    return path


def check_tag_head(path: str | Path, encoder: Any) -> None:
    """Fail before launch when the head cannot tag ``encoder``'s (an ``EncoderSpec``) images:
    a malformed file, or pooled features of another width (another CNN) or none at all (the
    fake encoder; an int8 encoder, whose quantized graph ends at the embedding)."""
    from encoders.registry import image_encoder_dim  # no TensorFlow
    from encoders.tflite_image import TFLITE_ENCODERS

    head = TagHead.load(path)
    dim = image_encoder_dim(encoder)
    no_pooled = encoder.name == "fake" or encoder.name in TFLITE_ENCODERS
    if no_pooled or head.dim != dim:
        raise ValueError(
            f"--tag_head {path} takes {head.dim}-d pooled features but the {encoder.name!r} "
            f"encoder gives {'no pooled features' if no_pooled else f'{dim}-d'}: "
            f"tag with the encoder the head was trained on (mobilenet_v2 for the ImageNet head)"
        )


@dataclasses.dataclass(frozen=True, eq=False)
class TagHead:
    """A linear classifier over pooled image features, and its class names."""

    kernel: np.ndarray  # (dim, classes) float32
    bias: np.ndarray  # (classes,) float32
    synonyms: tuple[tuple[str, ...], ...]  # per class, its names (first: the display label)
    version: str  # sha256 prefix of the file: changes whenever the tags would

    @property
    def dim(self) -> int:
        return int(self.kernel.shape[0])

    @property
    def labels(self) -> list[str]:
        """Display label of every class (its first synonym)."""
        return [names[0] for names in self.synonyms]

    @classmethod
    def load(cls, path: str | Path) -> TagHead:
        """Read an .npz with ``kernel``, ``bias`` and ``labels``; ValueError when malformed."""
        path = Path(path)
        with np.load(path, allow_pickle=False) as data:
            missing = {"kernel", "bias", "labels"} - set(data.files)
            if missing:
                raise ValueError(f"tag head {path} lacks {sorted(missing)}")
            kernel = np.asarray(data["kernel"], dtype=np.float32)
            bias = np.asarray(data["bias"], dtype=np.float32)
            labels = [str(label) for label in data["labels"]]
        if kernel.ndim != 2 or bias.shape != (kernel.shape[1],) or len(labels) != len(bias):
            raise ValueError(
                f"tag head {path}: kernel {kernel.shape}, bias {bias.shape} and "
                f"{len(labels)} labels do not agree (need (dim, C), (C,), C)"
            )
        digest = tag_head_version(path)
        synonyms = tuple(
            tuple(name.strip() for name in label.split(",") if name.strip()) or (label,)
            for label in labels
        )
        return cls(kernel=kernel, bias=bias, synonyms=synonyms, version=digest)

    def probabilities(self, pooled: np.ndarray) -> np.ndarray:
        """``(N, dim)`` pooled features (not L2-normalised) -> ``(N, classes)`` softmax."""
        pooled = np.asarray(pooled, dtype=np.float32)
        if pooled.ndim != 2 or pooled.shape[1] != self.dim:
            raise ValueError(f"tag head takes (N, {self.dim}) pooled features, got {pooled.shape}")
        logits = pooled @ self.kernel + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def tags(self, pooled: np.ndarray, k: int = DEFAULT_TOP_K) -> list[list[dict[str, Any]]]:
        """Top-``k`` tags per image, best first: ``[{"label": str, "score": float}, ...]``."""
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        probabilities = self.probabilities(pooled)
        ignored = [i for i, names in enumerate(self.synonyms) if names[0] in IGNORED_LABELS]
        probabilities[:, ignored] = -1.0
        k = min(k, probabilities.shape[1] - len(ignored))
        top = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        labels = self.labels
        return [
            [{"label": labels[c], "score": float(row[c])} for c in classes]
            for row, classes in zip(probabilities, top, strict=True)
        ]


def tag_lists(rows: Sequence[Any]) -> list[list[tuple[str, float]]]:
    """Table ``tags`` cells (lists of {label, score}; None for no tags) -> (label, score) lists."""
    return [[(tag["label"], float(tag["score"])) for tag in (row or [])] for row in rows]


SPATIAL_KEY = "_spatial"  # transient row key: the spatial map, removed before the table write


class FeatureEncoder:
    """An image encoder plus what else one backbone pass can give: tags and the spatial map.

    Wraps an encoder with ``encode_with_features`` (the Keras encoders); built once per worker
    by the model handler. ``analyze`` -> (embeddings, per-image extra row fields).
    """

    def __init__(
        self, encoder: Any, head: TagHead | None, top_k: int = DEFAULT_TOP_K, spatial: bool = False
    ) -> None:
        if not hasattr(encoder, "encode_with_features"):
            raise ValueError(
                f"{encoder.encoder_id} gives no pooled or spatial features; tags and captions "
                f"need a Keras encoder such as mobilenet_v2"
            )
        if head is not None and head.dim != encoder.dim:
            raise ValueError(
                f"the tag head takes {head.dim}-d pooled features but {encoder.encoder_id} "
                f"gives {encoder.dim}-d ones: use the head trained on this encoder's features"
            )
        self.encoder, self.head, self.top_k, self.spatial = encoder, head, top_k, spatial

    @property
    def encoder_id(self) -> str:
        return self.encoder.encoder_id

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        return self.encoder.encode(pixels)

    def analyze(self, pixels: np.ndarray) -> tuple[np.ndarray, list[dict[str, Any]]]:
        embeddings, pooled, spatial = self.encoder.encode_with_features(pixels)
        extras: list[dict[str, Any]] = [{} for _ in range(len(pixels))]
        if self.head is not None:
            for extra, tags in zip(extras, self.head.tags(pooled, self.top_k), strict=True):
                extra["tags"] = tags
                extra["tag_model"] = self.head.version
        if self.spatial:
            # float16 halves what crosses to the captioning step (a 7x7x1280 map: 125 KB).
            for extra, grid in zip(extras, spatial.astype(np.float16), strict=True):
                extra[SPATIAL_KEY] = grid
        return embeddings, extras


def tag_head_version(path: str | Path) -> str:
    """A head file's version (sha256 prefix): what the ``tag_model`` column records, and what
    an incremental run compares without loading the head."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
