"""all-MiniLM-L6-v2 rebuilt in Keras: strings in, unit-length 384-d sentence embeddings out.

The reference is sentence-transformers' pipeline for this model: BERT WordPiece tokenisation
(lower case, accents stripped, ``[CLS] ... [SEP]``, at most ``max_seq_length`` = 256 pieces),
the BERT encoder (post-LayerNorm, exact GELU), mean pooling over the attention mask, then L2
normalisation. Here each step is TensorFlow: ``tensorflow_text.BertTokenizer`` over the model's
``vocab.txt``, a Keras functional BERT built from ``config.json`` whose layers carry the Hugging
Face parameter names and are filled from ``model.safetensors`` (read with
``safetensors.numpy``; no torch, no transformers), and pooling + normalisation inside the same
Keras model. ``encode`` runs tokenisation and model in one traced function, so a query and a
batch of captions go through the same graph.

Importing this module does not import TensorFlow; building a ``MiniLMEncoder`` does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from encoders.base import TextEncoder
from encoders.keras_backbones import weights_file_sha256
from encoders.text_tokenize import check_texts

if TYPE_CHECKING:
    import keras
from encoders.minilm_files import (
    _ACTIVATIONS,
    BertConfig,
    TokenizerSettings,
    _check_pooling,
    locate_minilm,
    read_vocab,
)

logger = logging.getLogger(__name__)

MINILM_NAME = "minilm"

# Part of the version: bump it when tokenisation, pooling or normalisation change vectors even
# though model.safetensors did not.
GRAPH_VERSION = "v1"

# Texts per traced call in ``encode``: bounds the (batch, length, length) attention tensors
# when indexing a large corpus. Batches are sorted by length first so little is padding.
CHUNK_SIZE = 64
# A call pads every text to its longest, so one long text among short ones costs its length
# times the batch (a 500-character query beside its 12 words: 13 x 110 tokens, 0.3 s instead of
# 40 ms). A chunk therefore holds texts of at most twice its shortest length (in characters, a
# proxy for tokens, and never less than this floor, below which padding costs little).
SHORT_CHARS = 32

# Added to attention logits of padding positions: exp() of it is exactly 0 in float32, like the
# reference's finfo(float32).min, without overflowing when added to a logit.
_MASKED_LOGIT = -1e9

# Hugging Face parameters the encoder does not use: the [CLS] pooler (sentence-transformers
# pools the token states instead) and a buffer of position indices.
_UNUSED_PARAMETERS = ("pooler.", "embeddings.position_ids")


def build_bert_model(config: BertConfig) -> keras.Model:
    """Keras BERT: ``token_ids``, ``attention_mask`` (``(B, L)`` int32) -> a dict with
    ``token_embeddings`` (``(B, L, hidden)``, the last layer's states) and
    ``sentence_embedding`` (``(B, hidden)``, masked mean of those, L2-normalised).

    Layers that hold parameters are named after the Hugging Face parameters they hold
    (``encoder.layer.3.attention.self.query``), which is all ``load_hf_weights`` needs.
    Segment ids are all 0 (one sentence per input).
    """
    import keras
    from keras import ops

    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    attention_mask = keras.Input((None,), dtype="int32", name="attention_mask")

    # Positions 0..L-1 as a cumulative sum, which needs no static sequence length.
    positions = ops.cumsum(ops.ones_like(token_ids), axis=1) - 1
    hidden = config.hidden_size
    x = (
        keras.layers.Embedding(config.vocab_size, hidden, name="embeddings.word_embeddings")(
            token_ids
        )
        + keras.layers.Embedding(
            config.max_position_embeddings, hidden, name="embeddings.position_embeddings"
        )(positions)
        + keras.layers.Embedding(
            config.type_vocab_size, hidden, name="embeddings.token_type_embeddings"
        )(ops.zeros_like(token_ids))
    )
    x = _layer_norm(config, "embeddings.LayerNorm")(x)
    x = bert_layers(config, x, attention_mask, range(config.num_hidden_layers))
    return keras.Model(
        [token_ids, attention_mask],
        {"token_embeddings": x, "sentence_embedding": mean_pooled(x, attention_mask)},
        name="all_minilm_l6_v2",
    )


def build_bert_top(config: BertConfig, first_layer: int) -> keras.Model:
    """The layers ``first_layer ..`` of ``build_bert_model``'s BERT and its pooling, as a model
    of ``states`` (``(B, L, hidden)``, the output of layer ``first_layer - 1``) and
    ``attention_mask`` -> the same dict. Its layers carry the same names, so weights move
    between the two by name (``copy_weights_by_name``): a fine-tuning trainer runs the top on
    cached states of the frozen bottom, which never change."""
    import keras

    if not 0 < first_layer < config.num_hidden_layers:
        raise ValueError(
            f"first_layer must be in 1..{config.num_hidden_layers - 1}, got {first_layer}"
        )
    states = keras.Input((None, config.hidden_size), dtype="float32", name="states")
    attention_mask = keras.Input((None,), dtype="int32", name="attention_mask")
    x = bert_layers(config, states, attention_mask, range(first_layer, config.num_hidden_layers))
    return keras.Model(
        [states, attention_mask],
        {"token_embeddings": x, "sentence_embedding": mean_pooled(x, attention_mask)},
        name=f"all_minilm_l6_v2_from_{first_layer}",
    )


def bert_layers(config: BertConfig, x: Any, attention_mask: Any, indices: Sequence[int]) -> Any:
    """Transformer layers ``indices`` (post-LayerNorm, as BERT) applied to states ``x``."""
    import keras
    from keras import ops

    hidden, heads, head_size = config.hidden_size, config.num_attention_heads, config.head_size
    approximate_gelu = _ACTIVATIONS[config.hidden_act]

    def dense(units: int, name: str) -> keras.layers.Dense:
        return keras.layers.Dense(units, name=name)

    def split_heads(x: Any) -> Any:  # (B, L, hidden) -> (B, heads, L, head_size)
        return ops.transpose(keras.layers.Reshape((-1, heads, head_size))(x), (0, 2, 1, 3))

    mask = ops.cast(attention_mask, "float32")
    # (B, 1, 1, L): every query position ignores padded key positions.
    logit_bias = ops.expand_dims(ops.expand_dims((1.0 - mask) * _MASKED_LOGIT, 1), 1)
    scale = 1.0 / math.sqrt(head_size)

    for index in indices:
        prefix = f"encoder.layer.{index}"
        query = split_heads(dense(hidden, f"{prefix}.attention.self.query")(x))
        key = split_heads(dense(hidden, f"{prefix}.attention.self.key")(x))
        value = split_heads(dense(hidden, f"{prefix}.attention.self.value")(x))
        logits = ops.matmul(query, ops.transpose(key, (0, 1, 3, 2))) * scale + logit_bias
        context = ops.matmul(ops.softmax(logits, axis=-1), value)
        context = keras.layers.Reshape((-1, hidden))(ops.transpose(context, (0, 2, 1, 3)))
        attended = dense(hidden, f"{prefix}.attention.output.dense")(context)
        x = _layer_norm(config, f"{prefix}.attention.output.LayerNorm")(attended + x)
        inner = dense(config.intermediate_size, f"{prefix}.intermediate.dense")(x)
        inner = ops.gelu(inner, approximate=approximate_gelu)
        x = _layer_norm(config, f"{prefix}.output.LayerNorm")(
            dense(hidden, f"{prefix}.output.dense")(inner) + x
        )
    return x


def mean_pooled(x: Any, attention_mask: Any) -> Any:
    """Mean over real tokens (sentence-transformers clamps the count at 1e-9), then unit length
    (torch.nn.functional.normalize clamps the norm at 1e-12)."""
    from keras import ops

    mask = ops.cast(attention_mask, "float32")
    summed = ops.sum(x * ops.expand_dims(mask, -1), axis=1)
    pooled = summed / ops.maximum(ops.sum(mask, axis=1, keepdims=True), 1e-9)
    return pooled / ops.maximum(ops.norm(pooled, axis=-1, keepdims=True), 1e-12)


def _layer_norm(config: BertConfig, name: str) -> Any:
    import keras

    return keras.layers.LayerNormalization(epsilon=config.layer_norm_eps, name=name)


def copy_weights_by_name(source: keras.Model, target: keras.Model) -> int:
    """Set every weighted layer of ``target`` from ``source``'s layer of the same name (the
    Hugging Face names both carry); -> how many layers were copied."""
    copied = 0
    for layer in target.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())
            copied += 1
    return copied


def load_hf_weights(model: keras.Model, tensors: dict[str, np.ndarray]) -> None:
    """Fill ``model`` (from ``build_bert_model``) with Hugging Face BERT parameters.

    Dense layers take ``<name>.weight`` transposed (torch Linear stores ``(out, in)``) and
    ``<name>.bias``; LayerNorms ``weight``/``bias`` as gamma/beta; Embeddings ``weight``.
    ValueError listing every missing, unexpected or mis-shaped tensor, so a different model
    file cannot load half-way.
    """
    import keras

    problems: list[str] = []
    used: set[str] = set()

    def take(name: str, shape: tuple[int, ...], transpose: bool = False) -> np.ndarray | None:
        if name not in tensors:
            problems.append(f"missing {name}")
            return None
        used.add(name)
        array = tensors[name].T if transpose else tensors[name]
        if array.shape != shape:
            problems.append(f"{name}: shape {array.shape}, model needs {shape}")
            return None
        return array

    assignments: list[tuple[keras.layers.Layer, list[np.ndarray | None]]] = []
    for layer in model.layers:
        shapes = [tuple(weight.shape) for weight in layer.weights]
        if isinstance(layer, keras.layers.Dense):
            arrays = [
                take(f"{layer.name}.weight", shapes[0], transpose=True),
                take(f"{layer.name}.bias", shapes[1]),
            ]
        elif isinstance(layer, keras.layers.LayerNormalization):
            arrays = [
                take(f"{layer.name}.weight", shapes[0]),
                take(f"{layer.name}.bias", shapes[1]),
            ]
        elif isinstance(layer, keras.layers.Embedding):
            arrays = [take(f"{layer.name}.weight", shapes[0])]
        elif layer.weights:
            raise TypeError(f"no Hugging Face mapping for layer {layer.name} ({type(layer)})")
        else:
            continue
        assignments.append((layer, arrays))
    unexpected = sorted(
        name for name in tensors if name not in used and not name.startswith(_UNUSED_PARAMETERS)
    )
    problems.extend(f"unexpected {name}" for name in unexpected)
    if problems:
        raise ValueError("model.safetensors does not fit the config: " + "; ".join(problems))
    for layer, arrays in assignments:
        layer.set_weights(arrays)


def length_chunks(lengths: Sequence[int]) -> list[np.ndarray]:
    """Positions of texts of these ``lengths`` in encode calls: sorted by length, at most
    ``CHUNK_SIZE`` per call, and a new call where a text is longer than twice the call's first
    (shortest) text or ``SHORT_CHARS``, whichever is more."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    chunks: list[list[int]] = []
    ceiling = -1
    for position in order.tolist():
        if not chunks or len(chunks[-1]) == CHUNK_SIZE or lengths[position] > ceiling:
            chunks.append([])
            ceiling = 2 * max(lengths[position], SHORT_CHARS)
        chunks[-1].append(position)
    return [np.asarray(chunk, dtype=np.int64) for chunk in chunks]


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 as a ``TextEncoder``: ``encode(texts) -> (N, 384)`` unit float32 rows.

    ``model_dir`` is a directory with the standard files or ``"auto"`` (``locate_minilm``).
    Building reads config and weights and traces the encode graph once (a few seconds; shapes
    are dynamic, so no text length or batch size retraces it). Build once per process (a Beam
    ``load_model``, serving start-up) and reuse.
    """

    name = MINILM_NAME

    def __init__(self, model_dir: str | Path = "auto") -> None:
        import tensorflow as tf
        import tensorflow_text as tf_text
        from safetensors.numpy import load_file

        self.model_dir = locate_minilm(model_dir)
        self.config = BertConfig.from_json_file(self.model_dir / "config.json")
        self.tokenizer_settings = TokenizerSettings.from_model_dir(self.model_dir, self.config)
        _check_pooling(self.model_dir)
        weights_path = self.model_dir / "model.safetensors"
        self.version = f"{GRAPH_VERSION}-{weights_file_sha256(weights_path)[:12]}"
        self.dim = self.config.hidden_size

        vocab = read_vocab(self.model_dir / "vocab.txt", self.config.vocab_size)
        self._cls_id, self._sep_id = vocab.index("[CLS]"), vocab.index("[SEP]")
        self._pad_id = vocab.index("[PAD]")
        # Lower-casing and accent stripping are done by _normalize (matching the reference
        # tokenizer more closely than case_fold_utf8), so BertTokenizer only splits: on
        # whitespace, punctuation and CJK characters, then WordPiece.
        # An explicit table makes ids exactly vocab.txt line numbers, as in the reference.
        self._bert_tokenizer = tf_text.BertTokenizer(
            tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(vocab), tf.range(len(vocab), dtype=tf.int64)
                ),
                default_value=-1,
            ),
            token_out_type=tf.int64,
            unknown_token="[UNK]",
            lower_case=False,
        )

        self._model = build_bert_model(self.config)
        load_hf_weights(self._model, load_file(str(weights_path)))

        strings = tf.TensorSpec([None], tf.string, name="texts")
        ids_spec = tf.TensorSpec([None, None], tf.int32, name="token_ids")
        self._tokenize = tf.function(self._tokenize_graph, input_signature=[strings])
        self._embed = tf.function(
            lambda texts: self._model(self._tokenize_graph(texts), training=False)[
                "sentence_embedding"
            ],
            input_signature=[strings],
        )
        self._forward = tf.function(
            lambda ids, mask: self._model([ids, mask], training=False),
            input_signature=[ids_spec, ids_spec],
        )
        # Trace and run the graph once now, so the first real query does not pay seconds for it.
        self._embed(np.asarray(["warm up"], dtype=object))
        logger.info(
            "built text encoder %s from %s (%d-d, max %d tokens)",
            self.encoder_id,
            self.model_dir,
            self.dim,
            self.tokenizer_settings.max_seq_length,
        )

    @property
    def model(self) -> keras.Model:
        """The Keras BERT + pooling + normalisation (token ids and mask in)."""
        return self._model

    def _normalize(self, texts: Any) -> Any:
        """The reference BertNormalizer: drop control characters, lower-case, strip accents."""
        import tensorflow as tf
        import tensorflow_text as tf_text

        texts = tf.strings.regex_replace(texts, r"[\t\n\r]", " ")
        texts = tf.strings.regex_replace(texts, r"[\x{0}\x{FFFD}\p{Cc}\p{Cf}]", "")
        if self.tokenizer_settings.lower_case:
            # The reference lower-cases capital sigma (U+03A3) one character at a time, always to
            # U+03C3; ICU's string-level lowering gives the final form U+03C2 at a word's end,
            # a different word piece.
            texts = tf.strings.regex_replace(texts, "\u03a3", "\u03c3")
            texts = tf.strings.lower(texts, encoding="utf-8")
        if self.tokenizer_settings.strip_accents:
            texts = tf_text.normalize_utf8(texts, "NFD")
            texts = tf.strings.regex_replace(texts, r"\p{Mn}", "")
        return texts

    def _tokenize_graph(self, texts: Any) -> list[Any]:
        """``(N,)`` strings -> [token ids, attention mask], ``(N, L)`` int32 each, L the longest
        (``[CLS]`` + at most max_seq_length - 2 pieces + ``[SEP]``) in the batch."""
        import tensorflow as tf

        pieces = self._bert_tokenizer.tokenize(self._normalize(texts)).merge_dims(-2, -1)
        pieces = tf.cast(pieces, tf.int32)[:, : self.tokenizer_settings.max_seq_length - 2]
        batch = pieces.nrows()
        ids = tf.concat(
            [
                tf.fill([batch, 1], self._cls_id),
                pieces,
                tf.fill([batch, 1], self._sep_id),
            ],
            axis=1,
        )
        mask = tf.ones_like(ids)
        return [ids.to_tensor(self._pad_id), mask.to_tensor(0)]

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``N`` strings -> (token ids, attention mask), ``(N, L)`` int32, padded to the longest."""
        texts = check_texts(texts)
        ids, mask = self._tokenize(np.asarray(texts, dtype=object))
        return ids.numpy(), mask.numpy()

    def forward(
        self, token_ids: np.ndarray, attention_mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run the Keras model on given ids -> (token embeddings ``(N, L, dim)``, sentence
        embeddings ``(N, dim)``): for checking it against another implementation."""
        outputs = self._forward(
            np.asarray(token_ids, dtype=np.int32), np.asarray(attention_mask, dtype=np.int32)
        )
        return outputs["token_embeddings"].numpy(), outputs["sentence_embedding"].numpy()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``N`` strings -> ``(N, dim)`` float32 unit rows.

        Texts run in ``length_chunks`` (sorted by length, at most ``CHUNK_SIZE`` each, none
        padded to more than twice its own length: bounded memory and work that grows with the
        texts, not with the longest one); rows come back in input order. Padding never changes
        a row: a text gives the same vector alone or in any batch (to float32 rounding).
        """
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = length_chunks([len(text) for text in texts])
        if len(chunks) == 1:
            return self._embed(np.asarray(texts, dtype=object)).numpy()
        array = np.asarray(texts, dtype=object)
        vectors = np.empty((len(texts), self.dim), dtype=np.float32)
        for chunk in chunks:
            vectors[chunk] = self._embed(array[chunk]).numpy()
        return vectors

    def __repr__(self) -> str:
        return f"MiniLMEncoder({self.encoder_id!r}, model_dir={str(self.model_dir)!r})"
