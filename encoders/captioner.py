"""A CNN + GRU caption generator with additive visual attention ("Show, Attend and Tell").

Input: the image encoder's spatial feature map (MobileNetV2: 7 x 7 x 1280, the same backbone
pass that gives the embedding and the tags), flattened to ``L = 49`` locations. The decoder:

    f      = relu(W_f feature_map)                         (B, L, D)   projected once
    h_0    = tanh(W_0 mean(f))                             the image sets the initial state
    h_t    = GRU(embed(w_{t-1}), h_{t-1})
    e_tl   = v . tanh(W_h h_t + W_a f_l)                   additive (Bahdanau) attention
    c_t    = sum_l softmax_l(e_tl) f_l
    p(w_t) = softmax(W_o [h_t; c_t])

Attention is read from ``h_t`` (Luong et al.'s placement) rather than ``h_{t-1}`` (Xu et al.'s),
so teacher-forced training runs the whole caption through one GRU call and the attention as one
batched tensor expression: that is what lets it train on two CPU cores in minutes. Decoding is
beam search (``beam_search``), step by step with the same layers.

Words come from ``encoders.text_tokenize`` (the project's one tokenizer); the vocabulary keeps
training-caption words seen ``min_count`` times, the rest is ``<unk>`` (never generated).
Saved as a models-directory artifact: ``captioner.weights.h5`` + ``vocabulary.txt`` + config.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from encoders.text_tokenize import tokenize_words

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)
KIND_CAPTIONER = "captioner"
WEIGHTS_FILE = "captioner.weights.h5"
VOCABULARY_FILE = "vocabulary.txt"


class Vocabulary:
    """Word <-> id; ids 0-3 are ``<pad> <start> <end> <unk>``."""

    def __init__(self, words: Sequence[str]) -> None:
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary starts with {SPECIALS}")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def fit(cls, captions: Sequence[str], min_count: int = 5) -> Vocabulary:
        counts = Counter(w for words in tokenize_words(captions) for w in words)
        kept = sorted(
            (w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w)
        )
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, captions: Sequence[str], max_len: int) -> np.ndarray:
        """Captions -> ``(N, max_len + 2)`` int32: ``<start> words... <end> <pad>...``
        (captions longer than ``max_len`` words are cut)."""
        unk = self.index[UNK]
        rows = np.zeros((len(captions), max_len + 2), dtype=np.int32)
        for n, words in enumerate(tokenize_words(captions)):
            ids = [self.index.get(w, unk) for w in words[:max_len]]
            rows[n, : len(ids) + 2] = [self.index[START], *ids, self.index[END]]
        return rows

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> a caption, stopping at ``<end>``, without the special tokens."""
        words = []
        for i in ids:
            word = self.words[int(i)]
            if word == END:
                break
            if word not in SPECIALS:
                words.append(word)
        return " ".join(words)


@dataclasses.dataclass(frozen=True)
class CaptionerConfig:
    vocab_size: int
    feature_dim: int = 1280  # channels of the spatial map
    locations: int = 49  # h * w of the spatial map
    embed_dim: int = 128
    units: int = 256
    attention_dim: int = 128
    max_len: int = 20  # words per caption (generated and trained)
    dropout: float = 0.3
    image_encoder_id: str = ""  # the encoder whose spatial maps it was trained on

    def to_json(self) -> dict[str, Any]:
        return {"kind": KIND_CAPTIONER, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CaptionerConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def _decoder_class():
    """The Keras model class, defined on first use so importing this module needs no TF."""
    import keras
    from keras import layers, ops

    class CaptionDecoder(keras.Model):
        def __init__(self, config: CaptionerConfig, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.config = config
            self.project = layers.Dense(config.units, activation="relu", name="project")
            self.init_state = layers.Dense(config.units, activation="tanh", name="init_state")
            self.embed = layers.Embedding(config.vocab_size, config.embed_dim, name="embed")
            self.gru = layers.GRU(config.units, return_sequences=True, return_state=True)
            self.att_query = layers.Dense(config.attention_dim, use_bias=False, name="att_query")
            self.att_key = layers.Dense(config.attention_dim, name="att_key")
            self.att_score = layers.Dense(1, use_bias=False, name="att_score")
            self.drop = layers.Dropout(config.dropout)
            self.out = layers.Dense(config.vocab_size, name="logits")

        def encode_image(self, spatial):
            """(B, L, C) -> projected features (B, L, D), their keys (B, L, A), h_0 (B, D)."""
            projected = self.project(spatial)
            return projected, self.att_key(projected), self.init_state(ops.mean(projected, 1))

        def attend(self, hidden, projected, keys):
            """hidden (B, T, D) -> context (B, T, D), weights (B, T, L)."""
            query = self.att_query(hidden)[:, :, None, :]  # (B, T, 1, A)
            energy = self.att_score(ops.tanh(query + keys[:, None]))[..., 0]  # (B, T, L)
            weights = ops.softmax(energy, axis=-1)
            return ops.einsum("btl,bld->btd", weights, projected), weights

        def decode(self, tokens, projected, keys, state, training=False):
            hidden, state = self.gru(self.embed(tokens), initial_state=state, training=training)
            context, weights = self.attend(hidden, projected, keys)
            both = self.drop(ops.concatenate([hidden, context], axis=-1), training=training)
            return self.out(both), state, weights

        def call(self, inputs, training=False):
            spatial, tokens = inputs
            projected, keys, state = self.encode_image(spatial)
            logits, _, _ = self.decode(tokens, projected, keys, state, training=training)
            return logits

    return CaptionDecoder


class Captioner:
    """A trained (or fresh) decoder and its vocabulary: ``caption(spatial_maps)``."""

    def __init__(self, config: CaptionerConfig, vocabulary: Vocabulary, seed: int = 0) -> None:
        import keras
        import tensorflow as tf

        if len(vocabulary) != config.vocab_size:
            raise ValueError(f"vocabulary has {len(vocabulary)} words, config {config.vocab_size}")
        keras.utils.set_random_seed(seed)
        self.config, self.vocabulary = config, vocabulary
        self.model = _decoder_class()(config)
        # Build every weight with one dummy call, so save/load and the step function agree.
        self.model(
            (np.zeros((1, config.locations, config.feature_dim), np.float32),
             np.zeros((1, 2), np.int32))
        )  # fmt: skip
        spec = tf.TensorSpec
        d = config.units
        self._encode = tf.function(
            self.model.encode_image,
            input_signature=[spec([None, config.locations, config.feature_dim], tf.float32)],
        )
        self._step = tf.function(
            self._step_fn,
            input_signature=[
                spec([None], tf.int32),
                spec([None, config.locations, d], tf.float32),
                spec([None, config.locations, config.attention_dim], tf.float32),
                spec([None, d], tf.float32),
            ],
        )

    def _step_fn(self, tokens, projected, keys, state):
        import tensorflow as tf

        logits, state, _ = self.model.decode(tokens[:, None], projected, keys, state)
        return tf.nn.log_softmax(logits[:, 0]), state

    def check_spatial(self, spatial: np.ndarray) -> np.ndarray:
        """``(N, h, w, C)`` or ``(N, L, C)`` -> float32 ``(N, L, C)``; ValueError if the shape
        is not the one the captioner was trained on."""
        spatial = np.asarray(spatial, dtype=np.float32)
        if spatial.ndim == 4:
            spatial = spatial.reshape(len(spatial), -1, spatial.shape[-1])
        expected = (self.config.locations, self.config.feature_dim)
        if spatial.ndim != 3 or spatial.shape[1:] != expected:
            raise ValueError(f"captioner takes (N, {expected[0]}, {expected[1]}) spatial maps, "
                             f"got {spatial.shape}")  # fmt: skip
        return spatial

    def beam_search(
        self, spatial: np.ndarray, beam: int = 3, max_len: int | None = None
    ) -> list[tuple[list[int], float]]:
        """Best caption per image: ``(word ids, mean log-probability per token)``.

        Batched over images: all ``N * beam`` hypotheses advance together. A hypothesis ends at
        ``<end>``; ``<pad>``, ``<start>`` and ``<unk>`` are never generated. Hypotheses are
        compared by mean log-probability (length-normalised), so short captions are not
        favoured just for having fewer factors.
        """
        return [beams[0] for beams in self.beams(spatial, beam, max_len)]

    def beams(
        self, spatial: np.ndarray, beam: int = 3, max_len: int | None = None
    ) -> list[list[tuple[list[int], float]]]:
        """Every final hypothesis of ``beam_search`` per image, best first (the first is its
        answer): ``beam`` ``(word ids, mean log-probability per token)`` each."""
        spatial = self.check_spatial(spatial)
        n = len(spatial)
        if n == 0:
            return []
        max_len = max_len or self.config.max_len
        vocab = self.config.vocab_size
        start, end = self.vocabulary.index[START], self.vocabulary.index[END]
        banned = [self.vocabulary.index[w] for w in (PAD, START, UNK)]
        projected, keys, state = (t.numpy() for t in self._encode(spatial))
        rep = lambda a: np.repeat(a, beam, axis=0)  # noqa: E731
        projected, keys, state = rep(projected), rep(keys), rep(state)
        tokens = np.full((n * beam,), start, np.int32)
        total = np.zeros((n, beam), np.float64)
        total[:, 1:] = -np.inf  # all beams start identical: keep one until the first step
        lengths = np.zeros((n, beam), np.int32)
        done = np.zeros((n, beam), bool)
        history = np.zeros((n, beam, 0), np.int32)
        for _ in range(max_len + 1):
            logp, state = self._step(tokens, projected, keys, state)
            logp = logp.numpy().astype(np.float64).reshape(n, beam, vocab)
            logp[:, :, banned] = -np.inf
            # A finished hypothesis extends only by <pad>-like "nothing" at no cost.
            logp[done] = -np.inf
            logp[done, end] = 0.0
            candidates = total[:, :, None] + logp
            new_len = np.broadcast_to(lengths[:, :, None] + (~done)[:, :, None], logp.shape)
            mean = candidates / np.maximum(new_len, 1)
            flat = mean.reshape(n, -1)
            best = np.argsort(-flat, axis=1, kind="stable")[:, :beam]
            source, word = best // vocab, best % vocab
            rows = np.arange(n)[:, None]
            total = candidates[rows, source, word]
            lengths = new_len[rows, source, word]
            was_done = done[rows, source]
            done = was_done | (word == end)
            history = np.concatenate([history[rows, source], word[:, :, None]], axis=2)
            pick = (rows * beam + source).reshape(-1)
            state = state.numpy()[pick] if hasattr(state, "numpy") else state[pick]
            tokens = word.reshape(-1).astype(np.int32)
            if done.all():
                break
        score = total / np.maximum(lengths, 1)
        # Stable: of equal scores the lower beam comes first, as argmax picked it.
        order = np.argsort(-score, axis=1, kind="stable")
        return [
            [
                ([int(w) for w in history[i, b] if w != end][:max_len], float(score[i, b]))
                for b in order[i]
            ]
            for i in range(n)
        ]

    def caption(self, spatial: np.ndarray, beam: int = 3) -> list[tuple[str, float]]:
        """Spatial maps -> ``(caption text, mean log-probability per token)`` per image."""
        return [(self.vocabulary.decode(ids), s) for ids, s in self.beam_search(spatial, beam)]

    def captions(
        self, spatial: np.ndarray, beam: int = 3, count: int = 3
    ) -> list[list[tuple[str, float]]]:
        """Up to ``count`` distinct captions per image from one beam search, best first (the
        first is ``caption``'s); beams that decode to the same text are kept once."""
        found = []
        for beams in self.beams(spatial, beam):
            texts: dict[str, float] = {}
            for ids, score in beams:
                texts.setdefault(self.vocabulary.decode(ids), score)
            found.append(list(texts.items())[:count])
        return found

    def save_files(self, folder: Path) -> None:
        self.model.save_weights(folder / WEIGHTS_FILE)
        (folder / VOCABULARY_FILE).write_text("\n".join(self.vocabulary.words) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> Captioner:
        folder = Path(folder)
        config = CaptionerConfig.from_json(json.loads((folder / "config.json").read_text()))
        words = (folder / VOCABULARY_FILE).read_text().splitlines()
        captioner = cls(config, Vocabulary(words))
        captioner.model.load_weights(folder / WEIGHTS_FILE)
        return captioner
