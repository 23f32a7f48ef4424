"""The Keras towers of a joint model: building them and reading them back as NumPy layers.

``_build_tower`` makes a tower of Dense and Dropout layers only, so that ``_export_tower`` maps
it one to one onto ``encoders.joint.DenseLayer``s; the two live together because each relies on
the other's layer set. ``TrainedJointModel`` holds a trainer's towers, embeds features through
Keras and exports the ``JointModel`` that serving loads.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from encoders.base import l2_normalize
from encoders.joint import DenseLayer, JointModel
from training.joint_config import DualEncoderConfig, W2VVConfig

if TYPE_CHECKING:
    import keras


# Rows embedded per call at evaluation time (bounds memory on the held-out slice).
_EMBED_CHUNK = 4096


@dataclasses.dataclass(eq=False)
class TrainedJointModel:
    """The Keras towers a trainer produced; ``to_joint_model`` exports the NumPy model to save.

    ``image_tower`` is None for ``w2vv`` (identity). The towers end before the L2 normalisation,
    which ``embed_*`` apply (and ``JointModel`` applies identically).
    """

    kind: str
    config: W2VVConfig | DualEncoderConfig
    text_dim: int
    image_dim: int
    text_tower: keras.Model
    image_tower: keras.Model | None
    logit_scale: float = 1.0

    def embed_text_features(self, text_feats: np.ndarray) -> np.ndarray:
        """``(N, text_dim)`` -> ``(N, dim)`` unit vectors, run through Keras."""
        return _embed(self.text_tower, text_feats)

    def embed_image_features(self, image_feats: np.ndarray) -> np.ndarray:
        """``(N, image_dim)`` -> ``(N, dim)`` unit vectors, run through Keras."""
        if self.image_tower is None:
            return l2_normalize(image_feats)
        return _embed(self.image_tower, image_feats)

    def to_joint_model(self, text_encoder_id: str, image_encoder_id: str) -> JointModel:
        """The same model as plain NumPy layers, naming the encoders its inputs come from."""
        return JointModel(
            kind=self.kind,
            text_encoder_id=text_encoder_id,
            image_encoder_id=image_encoder_id,
            text_dim=self.text_dim,
            image_dim=self.image_dim,
            text_layers=_export_tower(self.text_tower),
            image_layers=_export_tower(self.image_tower) if self.image_tower is not None else (),
            logit_scale=self.logit_scale,
        )


def _embed(tower: keras.Model, feats: np.ndarray) -> np.ndarray:
    feats = np.asarray(feats, dtype=np.float32)
    chunks = [
        np.asarray(tower(feats[start : start + _EMBED_CHUNK], training=False))
        for start in range(0, len(feats), _EMBED_CHUNK)
    ]
    out = np.concatenate(chunks) if chunks else np.zeros((0, tower.output_shape[-1]), np.float32)
    return l2_normalize(out)


def _export_tower(tower: keras.Model) -> tuple[DenseLayer, ...]:
    """The Dense layers of a tower as NumPy layers (Dropout is the identity at inference)."""
    import keras

    layers = []
    for layer in tower.layers:
        if isinstance(layer, keras.layers.Dropout):
            continue
        if not isinstance(layer, keras.layers.Dense):
            raise TypeError(f"cannot export layer {layer.name} of type {type(layer).__name__}")
        kernel, bias = (np.asarray(w) for w in layer.get_weights())
        layers.append(DenseLayer(kernel, bias, keras.activations.serialize(layer.activation)))
    return tuple(layers)


def _build_tower(
    name: str,
    input_dim: int,
    hidden_units: tuple[int, ...],
    output_units: int,
    activation: str,
    dropout: float,
    seed: int,
    input_dropout: float = 0.0,
) -> keras.Model:
    """Dense(+activation, +dropout) per hidden width, then a linear Dense to ``output_units``.

    Only Dense and Dropout, so ``_export_tower`` maps it one to one onto ``DenseLayer``s. A
    fine-tuned backbone is not part of a tower: it is saved as an image-encoder version
    (``training.image_side``) whose embeddings the towers take.
    """
    import keras

    layers: list[Any] = [keras.Input((input_dim,), name=f"{name}_features")]
    if input_dropout:
        layers.append(
            keras.layers.Dropout(input_dropout, seed=seed + 999, name=f"{name}_input_dropout")
        )
    for position, units in enumerate(hidden_units):
        layers.append(
            keras.layers.Dense(
                units,
                activation=activation,
                kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 2 * position),
                name=f"{name}_dense_{position}",
            )
        )
        if dropout:
            layers.append(
                keras.layers.Dropout(
                    dropout, seed=seed + 2 * position + 1, name=f"{name}_dropout_{position}"
                )
            )
    layers.append(
        keras.layers.Dense(
            output_units,
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1000),
            name=f"{name}_out",
        )
    )
    return keras.Sequential(layers, name=name)
