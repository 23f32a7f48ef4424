"""Learned pooling of a CNN's spatial grid: the generalized pooling operator of VSE-infinity.

Global average pooling weighs every cell of the 7x7 map alike, so a dog filling a tenth of the
photo is diluted by the lawn around it. GPO (Chen et al., "Learning the Best Pooling Strategy
for Visual Semantic Embedding", CVPR 2021) sorts each channel's values over the cells and takes
a learned weighted sum over the *ranks*: weights concentrated on the top ranks approach max
pooling, uniform ones are exactly the average, anything between is learnt from captions.

VSE-infinity generates the rank weights with a small bi-GRU over positional encodings of the
ranks so that one model serves any number of regions. A CNN grid has a fixed number of cells,
so here the weights are a free vector, one logit per rank (the same family of poolings), with
the paper's softmax temperature of 0.1 so that a few hundred optimiser steps can move them. The
logits start at zero: the untrained layer *is* global average pooling, and training starts
from the stock encoder's features.
"""

from __future__ import annotations

from typing import Any

import keras

# VSE-infinity's softmax temperature over the rank scores.
RANK_TEMPERATURE = 0.1


@keras.saving.register_keras_serializable(package="imgsearch")
class GeneralizedPooling(keras.layers.Layer):
    """``(N, H, W, C)`` -> ``(N, C)``: per channel, a softmax-weighted sum of its sorted values."""

    def build(self, input_shape: Any) -> None:
        height, width = input_shape[1], input_shape[2]
        if height is None or width is None:
            raise ValueError(f"GeneralizedPooling needs a fixed grid, got {tuple(input_shape)}")
        self.cells = int(height) * int(width)
        self.rank_logits = self.add_weight(
            shape=(self.cells,), initializer="zeros", name="rank_logits"
        )

    def rank_weights(self) -> Any:
        """The weight of each rank, smallest value first (sums to 1)."""
        return keras.ops.softmax(self.rank_logits / RANK_TEMPERATURE)

    def call(self, spatial: Any) -> Any:
        spatial = keras.ops.cast(spatial, "float32")
        flat = keras.ops.reshape(spatial, (-1, self.cells, spatial.shape[-1]))
        ranked = keras.ops.sort(keras.ops.swapaxes(flat, 1, 2), axis=-1)  # (N, C, cells)
        return keras.ops.einsum("nck,k->nc", ranked, self.rank_weights())

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (input_shape[0], input_shape[-1])
