"""The joint-embedding trainers' settings: frozen dataclasses, validated on construction.

``TrainingSchedule`` holds what both trainers share (optimisation, early stopping, the seed);
``W2VVConfig`` and ``DualEncoderConfig`` add each model's shape and loss. Kept apart from the
trainers so a job can parse and check its settings, and record them with ``to_json``, without
importing TensorFlow.
"""

from __future__ import annotations

import dataclasses
from typing import Any

W2VV_LOSSES = ("cosine", "mse", "infonce")
DUAL_LOSSES = ("infonce", "vse++", "infonce+vse++")


@dataclasses.dataclass(frozen=True)
class TrainingSchedule:
    """What both trainers share: optimisation, early stopping and the seed.

    ``heldout_fraction`` of the training images (with all their captions) is held out to pick
    the best epoch by text-to-image R@5; 0 trains every epoch and keeps the last.
    ``max_seconds`` stops after the epoch that crosses it (None: no time limit).
    """

    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    heldout_fraction: float = 0.05
    patience: int = 5
    seed: int = 0
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.patience < 1:
            raise ValueError("epochs and patience must be >= 1 and batch_size >= 2")
        if self.learning_rate <= 0 or self.weight_decay < 0:
            raise ValueError("learning_rate must be positive and weight_decay non-negative")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class W2VVConfig(TrainingSchedule):
    """Word2VisualVec: ``text_dim -> hidden_units (activation, dropout) -> image_dim``.

    ``loss`` is ``"cosine"`` or ``"mse"`` regression onto the unit image embedding (the
    original W2VV), or ``"infonce"``: the predicted vector must pick its own image embedding out
    of the batch at a fixed ``temperature`` (W2VV++, Li et al. 2019, swapped regression for a
    ranking loss because regression to the mean image collapses predictions onto a few "hub"
    images). The image side stays the identity either way, so the image index serves the
    model's text queries as it is.
    ``input_dropout`` drops text-feature entries during training (a regulariser for wide sparse
    features such as TF-IDF, where the first layer otherwise memorises captions).
    """

    hidden_units: tuple[int, ...] = (2048,)
    activation: str = "relu"
    dropout: float = 0.5
    input_dropout: float = 0.0
    loss: str = "infonce"
    temperature: float = 0.05
    # The best of a small sweep on Flickr8k train (MiniLM text, MobileNetV2 images).
    learning_rate: float = 5e-4
    weight_decay: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in W2VV_LOSSES:
            raise ValueError(f"unknown w2vv loss {self.loss!r}; known: {W2VV_LOSSES}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        _check_tower(self.hidden_units, self.activation, self.dropout, self.input_dropout)


@dataclasses.dataclass(frozen=True)
class DualEncoderConfig(TrainingSchedule):
    """Two towers into a ``dim``-d space; empty ``*_hidden_units`` makes a tower linear.

    ``loss`` is ``"infonce"`` (symmetric, temperature learnt from ``temperature`` and clipped at
    ``min_temperature``), ``"vse++"`` (max-violation hinge with ``margin``) or their sum.
    ``text_input_dropout`` drops text-feature entries during training (see ``W2VVConfig``).
    """

    dim: int = 256
    # Linear towers by default: in a sweep on Flickr8k train, 1-hidden-layer towers overfit
    # within two epochs and did no better on dev than linear ones.
    text_hidden_units: tuple[int, ...] = ()
    image_hidden_units: tuple[int, ...] = ()
    activation: str = "relu"
    dropout: float = 0.2
    text_input_dropout: float = 0.0
    loss: str = "infonce"
    temperature: float = 0.07
    learn_temperature: bool = True
    min_temperature: float = 0.01
    margin: float = 0.2
    batch_size: int = 512
    learning_rate: float = 3e-4
    weight_decay: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in DUAL_LOSSES:
            raise ValueError(f"unknown dual-encoder loss {self.loss!r}; known: {DUAL_LOSSES}")
        if self.dim < 1:
            raise ValueError(f"dim must be positive, got {self.dim}")
        if not 0 < self.min_temperature <= self.temperature:
            raise ValueError("need 0 < min_temperature <= temperature")
        _check_tower(self.text_hidden_units, self.activation, self.dropout, self.text_input_dropout)
        _check_tower(self.image_hidden_units, self.activation, self.dropout)


def _check_tower(
    hidden_units: tuple[int, ...], activation: str, dropout: float, input_dropout: float = 0.0
) -> None:
    if any(units < 1 for units in hidden_units):
        raise ValueError(f"hidden units must be positive, got {hidden_units}")
    if activation not in ("relu", "tanh"):
        raise ValueError(f"activation must be 'relu' or 'tanh', got {activation!r}")
    for rate in (dropout, input_dropout):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rates must be in [0, 1), got {rate}")


@dataclasses.dataclass(frozen=True)
class ImageFineTuneConfig(TrainingSchedule):
    """A dual encoder whose image side includes the image CNN's top ``trainable_blocks`` blocks
    (``training.image_finetune``), trained from cached activations of ``views`` views per photo
    (the photo, its mirror, random resized crops).

    An epoch shows every training photo once, with one of its captions and one of its views
    drawn at random. The towers learn at ``learning_rate``, the CNN at
    ``backbone_learning_rate`` (pretrained weights need small steps), both with a cosine decay
    over ``epochs``. ``hard_negatives_from`` > 0 adds VSE++'s max-violation hinge to InfoNCE
    from that fraction of the epochs on (an InfoNCE warm-up first, as VSE++ needs).
    """

    # Five blocks (from block_13, cut at block_12_add) for 15 epochs beat three for 10 on dev
    # through the whole recipe: mixed text->image R@1 0.280 against 0.259 (text_to_image.md).
    trainable_blocks: int = 5
    views: int = 4
    dim: int = 512
    text_hidden_units: tuple[int, ...] = ()
    dropout: float = 0.2
    temperature: float = 0.07
    min_temperature: float = 0.01
    margin: float = 0.2
    hard_negatives_from: float = 0.0
    epochs: int = 15
    batch_size: int = 128
    learning_rate: float = 1e-3
    backbone_learning_rate: float = 3e-4
    weight_decay: float = 0.05
    patience: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.trainable_blocks <= 5:
            raise ValueError(f"trainable_blocks must be 0 to 5, got {self.trainable_blocks}")
        if self.views < 1:
            raise ValueError(f"views must be at least 1, got {self.views}")
        if self.dim < 1:
            raise ValueError(f"dim must be positive, got {self.dim}")
        if not 0 < self.min_temperature <= self.temperature:
            raise ValueError("need 0 < min_temperature <= temperature")
        if self.backbone_learning_rate <= 0:
            raise ValueError("backbone_learning_rate must be positive")
        if not 0.0 <= self.hard_negatives_from < 1.0:
            raise ValueError("hard_negatives_from must be in [0, 1)")
        _check_tower(self.text_hidden_units, "relu", self.dropout)
