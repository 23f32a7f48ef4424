"""Joint text-image embedding models at inference time, in plain NumPy.

A ``JointModel`` maps text features (a ``TextEncoder``'s unit rows) and image features (an
``ImageEncoder``'s unit rows) into one space where a dot product ranks images for a caption:

- ``kind="w2vv"`` (Word2VisualVec): an MLP maps text features into the image-feature space; the
  image side is the image embedding itself (identity + ``l2_normalize``), so an existing image
  index serves text queries without re-embedding anything.
- ``kind="dual"``: a projection tower per side (linear or a small MLP) into a shared space.

Both towers are chains of dense layers, so inference is matmuls and activations from the saved
weights: serving and the Beam job apply the model without TensorFlow or building a Keras graph,
and ``training.joint`` exports its Keras towers into exactly these layers (a test checks the two
agree to 1e-5).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from encoders.base import l2_normalize
from encoders.query_bank import QueryBank

KIND_W2VV = "w2vv"
KIND_DUAL = "dual"
JOINT_KINDS = (KIND_W2VV, KIND_DUAL)

# Bump when the meaning of config.json or weights.npz changes in a way old readers would misread.
JOINT_FORMAT_VERSION = 1

TEXT_TOWER = "text_tower"
IMAGE_TOWER = "image_tower"
QUERY_BANK = "query_bank"

ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "tanh": np.tanh,
}


@dataclasses.dataclass(frozen=True, eq=False)
class DenseLayer:
    """``activation(x @ kernel + bias)`` with ``kernel`` ``(in, out)`` and ``bias`` ``(out,)``."""

    kernel: np.ndarray
    bias: np.ndarray
    activation: str = "linear"

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; known: {sorted(ACTIVATIONS)}"
            )
        kernel = np.asarray(self.kernel, dtype=np.float32)
        bias = np.asarray(self.bias, dtype=np.float32)
        if kernel.ndim != 2 or bias.shape != (kernel.shape[1],):
            raise ValueError(
                f"a dense layer needs an (in, out) kernel and an (out,) bias, got "
                f"{kernel.shape} and {bias.shape}"
            )
        object.__setattr__(self, "kernel", kernel)
        object.__setattr__(self, "bias", bias)

    @property
    def input_dim(self) -> int:
        return int(self.kernel.shape[0])

    @property
    def units(self) -> int:
        return int(self.kernel.shape[1])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ACTIVATIONS[self.activation](x @ self.kernel + self.bias)


def _check_chain(name: str, layers: Sequence[DenseLayer], input_dim: int) -> int:
    """The output width of ``layers`` fed ``input_dim`` features, or ValueError on a mismatch."""
    width = input_dim
    for position, layer in enumerate(layers):
        if layer.input_dim != width:
            raise ValueError(
                f"{name} layer {position} expects {layer.input_dim} inputs, gets {width}"
            )
        width = layer.units
    return width


def _layer_config(layer: DenseLayer) -> dict[str, Any]:
    return {"units": layer.units, "activation": layer.activation}


@dataclasses.dataclass(frozen=True, eq=False)
class JointModel:
    """A trained joint embedding: text and image features in, unit vectors of one space out.

    ``text_layers`` map ``text_dim`` features to ``dim``; ``image_layers`` map ``image_dim``
    features to ``dim`` and are empty for ``w2vv`` (whose space is the image space, so
    ``dim == image_dim``). ``logit_scale`` is the trained inverse temperature (1.0 when the loss
    has none): scores are cosines, a caller wanting calibrated softmax scores multiplies by it.
    ``query_bank`` (optional; ``encoders.query_bank``) holds training queries in the model's
    space: whoever ranks with the model subtracts the bias it gives each item (hubness
    correction). Models saved before it have none and rank by plain scores.
    """

    kind: str
    text_encoder_id: str
    image_encoder_id: str
    text_dim: int
    image_dim: int
    text_layers: tuple[DenseLayer, ...]
    image_layers: tuple[DenseLayer, ...] = ()
    logit_scale: float = 1.0
    query_bank: QueryBank | None = None

    def __post_init__(self) -> None:
        if self.kind not in JOINT_KINDS:
            raise ValueError(f"unknown joint model kind {self.kind!r}; known: {JOINT_KINDS}")
        if not self.text_layers:
            raise ValueError("a joint model needs at least one text layer")
        object.__setattr__(self, "text_layers", tuple(self.text_layers))
        object.__setattr__(self, "image_layers", tuple(self.image_layers))
        text_out = _check_chain(TEXT_TOWER, self.text_layers, self.text_dim)
        image_out = _check_chain(IMAGE_TOWER, self.image_layers, self.image_dim)
        if self.kind == KIND_W2VV and self.image_layers:
            raise ValueError("a w2vv model has no image tower: its space is the image space")
        if self.kind == KIND_DUAL and not self.image_layers:
            raise ValueError("a dual model needs an image tower")
        if text_out != image_out:
            raise ValueError(
                f"the text side gives {text_out}-d vectors, the image side {image_out}"
            )
        if self.query_bank is not None and self.query_bank.dim != text_out:
            raise ValueError(f"the query bank is {self.query_bank.dim}-d, the model {text_out}-d")

    @property
    def dim(self) -> int:
        """Width of the joint space (the image dimension for ``w2vv``)."""
        return self.text_layers[-1].units

    def embed_text_features(self, text_feats: np.ndarray) -> np.ndarray:
        """``(N, text_dim)`` text-encoder rows -> ``(N, dim)`` float32 unit vectors."""
        return self._apply(self.text_layers, text_feats, self.text_dim, "text")

    def embed_image_features(self, image_feats: np.ndarray) -> np.ndarray:
        """``(N, image_dim)`` image-encoder rows -> ``(N, dim)`` float32 unit vectors."""
        return self._apply(self.image_layers, image_feats, self.image_dim, "image")

    @staticmethod
    def _apply(
        layers: Sequence[DenseLayer], feats: np.ndarray, input_dim: int, side: str
    ) -> np.ndarray:
        x = np.asarray(feats, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != input_dim:
            raise ValueError(f"expected {side} features of shape (N, {input_dim}), got {x.shape}")
        for layer in layers:
            x = layer(x)
        return l2_normalize(x)

    def config(self) -> dict[str, Any]:
        """JSON-ready architecture: with ``weights()`` it rebuilds the model (``from_arrays``)."""
        return {
            "format_version": JOINT_FORMAT_VERSION,
            "kind": self.kind,
            "dim": self.dim,
            "text_dim": self.text_dim,
            "image_dim": self.image_dim,
            "text_encoder_id": self.text_encoder_id,
            "image_encoder_id": self.image_encoder_id,
            "logit_scale": float(self.logit_scale),
            TEXT_TOWER: [_layer_config(layer) for layer in self.text_layers],
            IMAGE_TOWER: [_layer_config(layer) for layer in self.image_layers],
            **({} if self.query_bank is None else {QUERY_BANK: self.query_bank.config()}),
        }

    def weights(self) -> dict[str, np.ndarray]:
        """Arrays by name: ``text_tower.0.kernel``, ``text_tower.0.bias``, ... ``image_tower.*``."""
        arrays: dict[str, np.ndarray] = {}
        for tower, layers in ((TEXT_TOWER, self.text_layers), (IMAGE_TOWER, self.image_layers)):
            for position, layer in enumerate(layers):
                arrays[f"{tower}.{position}.kernel"] = layer.kernel
                arrays[f"{tower}.{position}.bias"] = layer.bias
        if self.query_bank is not None:
            arrays[f"{QUERY_BANK}.texts"] = self.query_bank.texts
            arrays[f"{QUERY_BANK}.images"] = self.query_bank.images
        return arrays

    def with_query_bank(self, bank: QueryBank | None) -> JointModel:
        """The same model with ``bank`` (None: without one)."""
        return dataclasses.replace(self, query_bank=bank)

    @classmethod
    def from_arrays(
        cls, config: Mapping[str, Any], weights: Mapping[str, np.ndarray]
    ) -> JointModel:
        """Rebuild a model from ``config()`` and ``weights()`` (e.g. read back from an artifact)."""
        version = config.get("format_version")
        if version != JOINT_FORMAT_VERSION:
            raise ValueError(
                f"joint model format_version {version!r}; this code reads {JOINT_FORMAT_VERSION}"
            )

        def tower(name: str) -> tuple[DenseLayer, ...]:
            layers = []
            for position, spec in enumerate(config[name]):
                try:
                    kernel = weights[f"{name}.{position}.kernel"]
                    bias = weights[f"{name}.{position}.bias"]
                except KeyError as err:
                    raise ValueError(f"the weights lack {err.args[0]!r}") from None
                if kernel.shape[-1] != spec["units"]:
                    raise ValueError(f"{name} layer {position}: config and weights disagree")
                layers.append(DenseLayer(kernel, bias, spec["activation"]))
            return tuple(layers)

        model = cls(
            kind=config["kind"],
            text_encoder_id=config["text_encoder_id"],
            image_encoder_id=config["image_encoder_id"],
            text_dim=int(config["text_dim"]),
            image_dim=int(config["image_dim"]),
            text_layers=tower(TEXT_TOWER),
            image_layers=tower(IMAGE_TOWER),
            logit_scale=float(config.get("logit_scale", 1.0)),
            query_bank=_query_bank(config, weights),
        )
        if model.dim != config["dim"]:
            raise ValueError(f"config says dim {config['dim']}, the weights give {model.dim}")
        return model

    def __repr__(self) -> str:
        return (
            f"JointModel({self.kind!r}, text={self.text_encoder_id!r} ({self.text_dim}-d), "
            f"image={self.image_encoder_id!r} ({self.image_dim}-d), dim={self.dim})"
        )


def _query_bank(config: Mapping[str, Any], weights: Mapping[str, np.ndarray]) -> QueryBank | None:
    settings = config.get(QUERY_BANK)
    if settings is None:
        return None
    try:
        texts, images = weights[f"{QUERY_BANK}.texts"], weights[f"{QUERY_BANK}.images"]
    except KeyError as err:
        raise ValueError(f"the weights lack {err.args[0]!r}") from None
    if (len(texts), len(images)) != (settings["texts"], settings["images"]):
        raise ValueError("the query bank's config and weights disagree")
    return QueryBank(texts, images, float(settings["temperature"]), float(settings["strength"]))


def _merge_towers(
    towers: Sequence[Sequence[DenseLayer]], scales: Sequence[float], average: bool
) -> tuple[DenseLayer, ...]:
    """Run ``towers`` side by side as one chain of wider dense layers.

    The first layers share the input, so their kernels sit side by side; deeper layers are
    block-diagonal (each member only sees its own hidden units, so activations stay per member).
    The last layer scales member ``m``'s output by ``scales[m]`` and either concatenates the
    outputs (``average=False``) or sums them (``average=True``: its kernels stack vertically).
    """
    depth = len(towers[0])
    if any(len(tower) != depth for tower in towers):
        raise ValueError("ensemble members need towers of the same depth")
    activations = {tuple(layer.activation for layer in tower) for tower in towers}
    if len(activations) != 1:
        raise ValueError("ensemble members need towers with the same activations")
    merged = []
    for position in range(depth):
        layers = [tower[position] for tower in towers]
        last = position == depth - 1
        kernels = [layer.kernel for layer in layers]
        biases = [layer.bias for layer in layers]
        if last:
            kernels = [k * s for k, s in zip(kernels, scales, strict=True)]
            biases = [b * s for b, s in zip(biases, scales, strict=True)]
        if last and average:
            if len({k.shape[1] for k in kernels}) != 1:
                raise ValueError("averaged members need outputs of the same width")
            # Sum of the members' outputs: (h1 | h2) @ (K1 over K2) = h1 K1 + h2 K2.
            kernel = np.concatenate(kernels, axis=0) if position else sum(kernels)
            bias = sum(biases)
        elif position == 0:
            kernel, bias = np.concatenate(kernels, axis=1), np.concatenate(biases)
        else:
            kernel = _block_diagonal(kernels)
            bias = np.concatenate(biases)
        merged.append(DenseLayer(kernel, bias, layers[0].activation))
    return tuple(merged)


def _block_diagonal(kernels: Sequence[np.ndarray]) -> np.ndarray:
    rows = sum(k.shape[0] for k in kernels)
    cols = sum(k.shape[1] for k in kernels)
    out = np.zeros((rows, cols), dtype=np.float32)
    r = c = 0
    for kernel in kernels:
        out[r : r + kernel.shape[0], c : c + kernel.shape[1]] = kernel
        r, c = r + kernel.shape[0], c + kernel.shape[1]
    return out


def ensemble_joint_models(
    members: Sequence[JointModel],
    text_scales: Sequence[float] | None = None,
    image_scales: Sequence[float] | None = None,
) -> JointModel:
    """Several trained models (e.g. seeds) as one ``JointModel`` of the same kind and format.

    Ensembling must not change how the model is served: the index and the text query path run
    one chain of dense layers whatever was trained, so the members are merged into wider layers.

    - ``w2vv`` members share the image space: the text side outputs the *mean* of the members'
      predictions (each first multiplied by ``text_scales[m]``, meant to be one over that
      member's typical output norm, so every member weighs alike before the final
      normalisation). The image side stays the identity.
    - ``dual`` members each have their own space: both sides output the members' vectors
      concatenated (scaled likewise), so a dot product is the sum of the members' similarities
      (exactly their mean cosine when every member's vectors have the scaled norm 1).

    ``logit_scale`` is the members' mean.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    first = members[0]
    for member in members[1:]:
        same = (
            member.kind,
            member.text_encoder_id,
            member.image_encoder_id,
            member.text_dim,
            member.image_dim,
        )
        if same != (
            first.kind,
            first.text_encoder_id,
            first.image_encoder_id,
            first.text_dim,
            first.image_dim,
        ):
            raise ValueError("ensemble members must share kind, encoders and input widths")
    count = len(members)
    text_scales = list(text_scales) if text_scales is not None else [1.0] * count
    image_scales = list(image_scales) if image_scales is not None else [1.0] * count
    if len(text_scales) != count or len(image_scales) != count:
        raise ValueError("need one text and one image scale per member")
    average = first.kind == KIND_W2VV
    text_layers = _merge_towers(
        [m.text_layers for m in members],
        [s / count if average else s for s in text_scales],
        average,
    )
    image_layers: tuple[DenseLayer, ...] = ()
    if first.kind == KIND_DUAL:
        image_layers = _merge_towers([m.image_layers for m in members], image_scales, False)
    return JointModel(
        kind=first.kind,
        text_encoder_id=first.text_encoder_id,
        image_encoder_id=first.image_encoder_id,
        text_dim=first.text_dim,
        image_dim=first.image_dim,
        text_layers=text_layers,
        image_layers=image_layers,
        logit_scale=float(np.mean([m.logit_scale for m in members])),
    )


def _deepen(layers: Sequence[DenseLayer], depth: int) -> tuple[DenseLayer, ...]:
    """The same function as ``layers`` as a chain of ``depth`` layers, hidden ones ReLU.

    The linear last layer ``z = x K + b`` becomes ``relu([z, -z])`` followed by the linear
    ``[I; -I]``: since ``relu(z) - relu(-z) = z`` the output is unchanged, exactly. Lets a
    linear dual tower sit beside a W2VV MLP in one merged chain.
    """
    layers = list(layers)
    while len(layers) < depth:
        last = layers.pop()
        width = last.units
        eye = np.eye(width, dtype=np.float32)
        layers.append(
            DenseLayer(
                np.concatenate([last.kernel, -last.kernel], axis=1),
                np.concatenate([last.bias, -last.bias]),
                "relu",
            )
        )
        layers.append(DenseLayer(np.concatenate([eye, -eye]), np.zeros(width, np.float32)))
    return tuple(layers)


def mixed_joint_model(w2vv: JointModel, w2vv_weight: float, dual: JointModel) -> JointModel:
    """A W2VV model and a dual encoder side by side as one ``dual`` model.

    The two learn different things from the same features (W2VV regresses into the image
    space, the dual encoder learns a small shared space), so their similarities disagree
    usefully: on Flickr8k dev the sum ranks better than either. The text side outputs
    ``[w2vv_weight * w2vv_text | dual_text]``, the image side ``[image | dual_image]`` (the
    W2VV image side is the image embedding itself, an identity layer here), so a dot product
    is ``w2vv_weight * w2vv_cosine + dual_similarity``. ``w2vv_weight`` is typically the number
    of W2VV seeds merged in ``w2vv`` (``dual`` from ``ensemble_joint_models`` already sums its
    members' similarities), so every member counts alike. Hidden layers must be ReLU where
    the towers' depths differ (see ``_deepen``).
    """
    if w2vv.kind != KIND_W2VV or dual.kind != KIND_DUAL:
        raise ValueError("mixed_joint_model takes a w2vv model and a dual model")
    if (w2vv.text_encoder_id, w2vv.image_encoder_id, w2vv.text_dim, w2vv.image_dim) != (
        dual.text_encoder_id,
        dual.image_encoder_id,
        dual.text_dim,
        dual.image_dim,
    ):
        raise ValueError("the two models must share encoders and input widths")
    identity = (
        DenseLayer(np.eye(w2vv.image_dim, dtype=np.float32), np.zeros(w2vv.image_dim, np.float32)),
    )
    merged = []
    for first, second, scales in (
        (w2vv.text_layers, dual.text_layers, [w2vv_weight, 1.0]),
        (identity, dual.image_layers, [1.0, 1.0]),
    ):
        depth = max(len(first), len(second))
        # A deepened tower has ReLU hidden layers: _merge_towers rejects a tanh partner.
        towers = [_deepen(first, depth), _deepen(second, depth)]
        merged.append(_merge_towers(towers, scales, average=False))
    return JointModel(
        kind=KIND_DUAL,
        text_encoder_id=dual.text_encoder_id,
        image_encoder_id=dual.image_encoder_id,
        text_dim=dual.text_dim,
        image_dim=dual.image_dim,
        text_layers=merged[0],
        image_layers=merged[1],
        logit_scale=dual.logit_scale,
    )
