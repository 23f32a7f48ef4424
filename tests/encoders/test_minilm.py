"""MiniLMEncoder against independent references: a NumPy BERT, two tokenizers, published scores.

* The Keras model is compared with a float64 NumPy forward pass written here from the
  safetensors tensors and config.json alone (token states and pooled embeddings, alone and
  inside a padded batch).
* tensorflow_text's ids are compared with a small pure-Python WordPiece over vocab.txt, and with
  the reference tokenizer itself (the model's tokenizer.json run by Hugging Face ``tokenizers``)
  where that library is installed.
* End to end, the similarity matrix sentence-transformers documents for all-MiniLM-L6-v2
  (https://www.sbert.net, quick start) is reproduced.

The encoder is built once for the module (a few seconds of weight loading and tracing).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from scipy.special import erf

from encoders.minilm import (
    CHUNK_SIZE,
    SHORT_CHARS,
    MiniLMEncoder,
    build_bert_model,
    build_bert_top,
    copy_weights_by_name,
    length_chunks,
    load_hf_weights,
)
from encoders.minilm_files import BertConfig, locate_minilm
from encoders.text_registry import TextEncoderSpec, check_text_encoder
from imgsearch import settings

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # only a speed-up for the NumPy reference, see NumpyBert.hidden_states

    def threadpool_limits(**_: object) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


pytestmark = pytest.mark.slow


# Different lengths, punctuation, an accent, a number, a long rare word.
SENTENCES = [
    "A dog.",
    "Person walking with a dog on the beach",
    "The weather is lovely today.",
    "Two children in bright red jackets are sledding down a snowy hill while their "
    "parents watch from the bottom, holding cups of hot cocoa at 3:30 in the afternoon.",
    "Crème brûlée, anyone? Supercalifragilisticexpialidocious!",
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    try:
        return locate_minilm("auto")
    except FileNotFoundError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def encoder(model_dir: Path) -> MiniLMEncoder:
    return MiniLMEncoder(model_dir)


@pytest.fixture(scope="module")
def vocab(model_dir: Path) -> dict[str, int]:
    lines = (model_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")
    return {token: index for index, token in enumerate(lines) if token}


@pytest.fixture(scope="module")
def captions(flickr_caption_rows: list[tuple[str, str]]) -> list[str]:
    return [caption for _, caption in flickr_caption_rows[:300]]


# ---------------------------------------------------------------- NumPy reference forward pass


class NumpyBert:
    """BERT + mean pooling + L2 normalisation in float64 NumPy, straight from the HF tensors."""

    def __init__(self, model_dir: Path) -> None:
        self.config = json.loads((model_dir / "config.json").read_text())
        self.tensors = {
            name: array.astype(np.float64)
            for name, array in load_file(str(model_dir / "model.safetensors")).items()
        }

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        # torch.nn.Linear: y = x W^T + b, with W stored (out, in).
        return x @ self.tensors[f"{name}.weight"].T + self.tensors[f"{name}.bias"]

    def _layer_norm(self, x: np.ndarray, name: str) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        variance = ((x - mean) ** 2).mean(-1, keepdims=True)
        normalised = (x - mean) / np.sqrt(variance + self.config["layer_norm_eps"])
        return normalised * self.tensors[f"{name}.weight"] + self.tensors[f"{name}.bias"]

    def hidden_states(self, ids: list[int]) -> np.ndarray:
        """One unpadded sequence -> (L, hidden) last-layer states."""
        # One BLAS thread: these matrices are small, and BLAS threads spinning beside
        # TensorFlow's (or another process) on two cores make the pass 30x slower.
        with threadpool_limits(limits=1, user_api="blas"):
            return self._hidden_states(ids)

    def _hidden_states(self, ids: list[int]) -> np.ndarray:
        t = self.tensors
        length = len(ids)
        x = (
            t["embeddings.word_embeddings.weight"][ids]
            + t["embeddings.position_embeddings.weight"][:length]
            + t["embeddings.token_type_embeddings.weight"][0]
        )
        x = self._layer_norm(x, "embeddings.LayerNorm")
        heads = self.config["num_attention_heads"]
        head_size = self.config["hidden_size"] // heads
        for index in range(self.config["num_hidden_layers"]):
            p = f"encoder.layer.{index}"
            q, k, v = (
                self._linear(x, f"{p}.attention.self.{part}")
                .reshape(length, heads, head_size)
                .transpose(1, 0, 2)
                for part in ("query", "key", "value")
            )
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(head_size)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            context = (scores / scores.sum(-1, keepdims=True)) @ v
            context = context.transpose(1, 0, 2).reshape(length, -1)
            x = self._layer_norm(
                self._linear(context, f"{p}.attention.output.dense") + x,
                f"{p}.attention.output.LayerNorm",
            )
            inner = self._linear(x, f"{p}.intermediate.dense")
            inner = 0.5 * inner * (1.0 + erf(inner / math.sqrt(2.0)))  # exact GELU
            x = self._layer_norm(
                self._linear(inner, f"{p}.output.dense") + x, f"{p}.output.LayerNorm"
            )
        return x

    def sentence_embedding(self, ids: list[int]) -> np.ndarray:
        pooled = self.hidden_states(ids).mean(axis=0)
        return pooled / np.linalg.norm(pooled)


@pytest.fixture(scope="module")
def numpy_bert(model_dir: Path) -> NumpyBert:
    return NumpyBert(model_dir)


def test_keras_bert_matches_numpy_reference_alone_and_padded(
    encoder: MiniLMEncoder, numpy_bert: NumpyBert
) -> None:
    ids, mask = encoder.tokenize(SENTENCES)
    lengths = mask.sum(axis=1)
    assert len(set(lengths.tolist())) == len(SENTENCES)  # every row but the longest is padded

    batch_states, batch_embeddings = encoder.forward(ids, mask)

    for row, length in enumerate(lengths):
        real_ids = ids[row, :length].tolist()
        expected_states = numpy_bert.hidden_states(real_ids)
        expected_embedding = numpy_bert.sentence_embedding(real_ids)
        alone_states, alone_embedding = encoder.forward(
            ids[row : row + 1, :length], mask[row : row + 1, :length]
        )
        # Token states of real positions, alone and inside the padded batch.
        np.testing.assert_allclose(batch_states[row, :length], expected_states, atol=1e-4)
        np.testing.assert_allclose(alone_states[0], expected_states, atol=1e-4)
        np.testing.assert_allclose(batch_embeddings[row], expected_embedding, atol=2e-5)
        np.testing.assert_allclose(alone_embedding[0], expected_embedding, atol=2e-5)


def test_encode_is_independent_of_batching(encoder: MiniLMEncoder, captions: list[str]) -> None:
    texts = captions[: CHUNK_SIZE + 6]  # more than one chunk: exercises length sorting

    batch = encoder.encode(texts)

    assert batch.shape == (len(texts), 384)
    assert batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    for row in (0, 7, CHUNK_SIZE + 3):
        np.testing.assert_allclose(encoder.encode([texts[row]])[0], batch[row], atol=2e-5)
    np.testing.assert_allclose(
        encoder.encode(SENTENCES[:2]), encoder.encode(SENTENCES)[:2], atol=2e-5
    )
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(ValueError, match="wrap a single text"):
        encoder.encode("a dog")


def test_length_chunks_pad_no_text_past_twice_its_length() -> None:
    lengths = [500, 3, 5, 4, 40, 70, 2, 12, 65, 3]
    chunks = length_chunks(lengths)
    assert sorted(np.concatenate(chunks).tolist()) == list(range(len(lengths)))  # each once
    for chunk in chunks:
        sizes = [lengths[i] for i in chunk]
        assert sizes == sorted(sizes)
        assert max(sizes) <= 2 * max(min(sizes), SHORT_CHARS)
    # The short words share one call; the 500-character query runs alone.
    assert [lengths[i] for i in chunks[0]] == [2, 3, 3, 4, 5, 12, 40]
    assert [lengths[i] for i in chunks[-1]] == [500]
    assert [len(c) for c in length_chunks([10] * (2 * CHUNK_SIZE + 1))] == [CHUNK_SIZE] * 2 + [1]
    assert len(length_chunks([7, 30, 64])) == 1  # short texts: one call whatever their spread
    assert length_chunks([]) == []


def test_a_long_text_does_not_pad_short_ones(
    encoder: MiniLMEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 500-character query with its words (the explanation's batch) costs about the query
    alone: the encoder never runs the words at the query's token length."""
    long_query = " ".join(["a dog in glasses in a basket on a bike"] * 13)[:500]
    words = sorted(set(long_query.split()))
    expected = encoder.encode([long_query])[0], encoder.encode(words)
    shapes: list[tuple[int, int]] = []
    embed = encoder._embed

    def recording(texts):
        ids, _ = encoder.tokenize(list(texts.tolist()))
        shapes.append(ids.shape)
        return embed(texts)

    monkeypatch.setattr(encoder, "_embed", recording)
    vectors = encoder.encode([long_query, *words])

    query_tokens = encoder.tokenize([long_query])[0].shape[1]
    assert query_tokens > 100
    assert sorted(shapes) == [(1, query_tokens), (len(words), 3)]  # [CLS] word [SEP]
    np.testing.assert_allclose(vectors[0], expected[0], atol=2e-5)
    np.testing.assert_allclose(vectors[1:], expected[1], atol=2e-5)


# ------------------------------------------------------------------------------- tokenisation


def _python_wordpiece(text: str, vocab: dict[str, int]) -> list[int]:
    """BERT's uncased tokenisation (BasicTokenizer + greedy longest-match WordPiece), for text
    without control or CJK characters."""
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
    words: list[str] = []
    for chunk in text.split():
        current = ""
        for ch in chunk:
            is_punct = (ch.isascii() and not ch.isalnum()) or unicodedata.category(ch).startswith(
                "P"
            )
            if is_punct:
                words.extend([current, ch] if current else [ch])
                current = ""
            else:
                current += ch
        if current:
            words.append(current)
    ids: list[int] = []
    for word in words:
        pieces: list[int] = []
        start = 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in vocab:
                    pieces.append(vocab[piece])
                    start = end
                    break
            else:
                pieces = [vocab["[UNK]"]]
                break
        ids.extend(pieces if len(word) <= 100 else [vocab["[UNK]"]])
    return [vocab["[CLS]"], *ids, vocab["[SEP]"]]


def _rows(ids: np.ndarray, mask: np.ndarray) -> list[list[int]]:
    return [row[:length].tolist() for row, length in zip(ids, mask.sum(axis=1), strict=True)]


def test_tokenizer_matches_python_wordpiece(
    encoder: MiniLMEncoder, vocab: dict[str, int], captions: list[str]
) -> None:
    texts = [*SENTENCES, *captions]

    ids, mask = encoder.tokenize(texts)

    assert _rows(ids, mask) == [_python_wordpiece(text, vocab) for text in texts]
    # Padding: [PAD] ids and a zero mask after each row's [SEP].
    assert ids[0, mask[0].sum() :].tolist() == [vocab["[PAD]"]] * (ids.shape[1] - mask[0].sum())
    # A known split: a rare word becomes word pieces.
    pieces = [vocab[p] for p in ("super", "##cal", "##if", "##rag", "##ilis", "##tic", "##ex")]
    assert all(piece in _rows(ids, mask)[4] for piece in pieces)


def test_tokenizer_matches_the_reference_tokenizer_json(
    encoder: MiniLMEncoder, model_dir: Path, captions: list[str]
) -> None:
    tokenizers = pytest.importorskip("tokenizers", reason="Hugging Face tokenizers not installed")
    reference = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    reference.no_padding()
    reference.no_truncation()
    tricky = [
        "\uff26\uff35\uff2c\uff2c width, \ufb01ne ligature, İstanbul, ÅNGSTRÖM",
        "tab\there\nnew\x00line\u200bzero-width",
        "北京 欢迎你 東京 emoji 🐶🏖️",
        "Hello…world — “quotes” ½ x² ΣΊΣΥΦΟΣ",
        "e-mail: foo@bar.com http://x.y/z?q=1&a=2 O'Neil's",
    ]
    texts = [*SENTENCES, *tricky, *captions]

    ids, mask = encoder.tokenize(texts)

    assert _rows(ids, mask) == [reference.encode(text).ids for text in texts]


def test_truncates_to_max_seq_length(encoder: MiniLMEncoder, vocab: dict[str, int]) -> None:
    long_text = " ".join(["dog"] * 300)

    ids, mask = encoder.tokenize([long_text, "a dog"])

    assert encoder.tokenizer_settings.max_seq_length == 256
    assert ids.shape == (2, 256)
    assert ids[0, 0] == vocab["[CLS]"] and ids[0, -1] == vocab["[SEP]"]
    assert (ids[0, 1:-1] == vocab["dog"]).all()
    assert mask[1].sum() == 4
    # Beyond the limit, text does not change the embedding.
    longer = encoder.encode([long_text + " on a beach at sunset"])[0]
    np.testing.assert_allclose(longer, encoder.encode([long_text])[0], atol=1e-6)


# --------------------------------------------------------------------------- end-to-end scores


def test_reproduces_the_documented_similarities(encoder: MiniLMEncoder) -> None:
    # sentence-transformers' quick start prints this matrix for all-MiniLM-L6-v2.
    documented = np.array(
        [[1.0000, 0.6660, 0.1046], [0.6660, 1.0000, 0.1411], [0.1046, 0.1411, 1.0000]]
    )
    vectors = encoder.encode(
        ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    )

    np.testing.assert_allclose(vectors @ vectors.T, documented, atol=1e-3)


def test_paraphrases_score_above_unrelated_sentences(encoder: MiniLMEncoder) -> None:
    query, paraphrase, unrelated = encoder.encode(
        ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse."]
    )

    assert query @ paraphrase > 0.6
    assert query @ unrelated < query @ paraphrase - 0.2


def test_query_finds_the_matching_caption(encoder: MiniLMEncoder, captions: list[str]) -> None:
    vectors = encoder.encode(captions)
    query = encoder.encode(["a dog running on the beach"])[0]

    best = captions[int(np.argmax(vectors @ query))].lower()

    assert "dog" in best and ("beach" in best or "sand" in best or "ocean" in best)


# --------------------------------------------------------------------- files, versions, errors


def test_version_is_the_weights_sha256(encoder: MiniLMEncoder, model_dir: Path) -> None:
    digest = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()

    assert encoder.version == f"v1-{digest[:12]}"
    assert encoder.encoder_id == f"minilm/v1-{digest[:12]}"
    assert encoder.dim == 384
    assert check_text_encoder(TextEncoderSpec("minilm", str(model_dir))) == 384


def test_locate_minilm_says_what_to_provide(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"missing vocab\.txt, model\.safetensors"):
        locate_minilm(tmp_path)

    monkeypatch.setattr("encoders.minilm_files.MODEL_PACKAGE", "no_such_minilm_package")
    monkeypatch.setenv(settings.ASSETS_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        locate_minilm("auto")
    message = str(error.value)
    assert "no_such_minilm_package is not installed" in message
    assert str(tmp_path / "models" / "all-MiniLM-L6-v2") in message
    assert "config.json, vocab.txt, model.safetensors" in message


def _tiny_config(layers: int) -> BertConfig:
    return BertConfig(
        vocab_size=10,
        hidden_size=8,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=16,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        max_position_embeddings=16,
        type_vocab_size=2,
    )


def test_weight_loading_refuses_tensors_that_do_not_fit() -> None:
    model = build_bert_model(_tiny_config(layers=1))
    rng = np.random.default_rng(0)
    tensors = {}
    for layer in model.layers:
        for weight in layer.weights:
            suffix = "bias" if weight.name in ("bias", "beta") else "weight"
            shape = (
                tuple(weight.shape)[::-1]
                if layer.__class__.__name__ == "Dense" and suffix == "weight"
                else tuple(weight.shape)
            )
            tensors[f"{layer.name}.{suffix}"] = rng.standard_normal(shape).astype(np.float32)
    load_hf_weights(model, dict(tensors))  # fits
    query = model.get_layer("encoder.layer.0.attention.self.query")
    np.testing.assert_array_equal(
        query.kernel.numpy(), tensors["encoder.layer.0.attention.self.query.weight"].T
    )

    broken = dict(tensors)
    del broken["encoder.layer.0.attention.self.key.bias"]
    broken["encoder.layer.0.intermediate.dense.weight"] = np.zeros((16, 9), np.float32)
    broken["encoder.layer.7.output.dense.weight"] = np.zeros((8, 8), np.float32)
    broken["pooler.dense.weight"] = np.zeros((8, 8), np.float32)  # unused, allowed
    with pytest.raises(ValueError) as error:
        load_hf_weights(model, broken)
    message = str(error.value)
    assert "missing encoder.layer.0.attention.self.key.bias" in message
    assert "encoder.layer.0.intermediate.dense.weight: shape (9, 16)" in message
    assert "unexpected encoder.layer.7.output.dense.weight" in message
    assert "pooler" not in message


def test_the_top_on_cached_states_gives_the_whole_models_outputs() -> None:
    # A fine-tuning trainer runs layers 2.. on the states layer 1 gave once: the split must not
    # change a number, padding included.
    import keras

    config = _tiny_config(layers=3)
    model = build_bert_model(config)
    rng = np.random.default_rng(1)
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.weights])
    top = build_bert_top(config, first_layer=2)
    assert copy_weights_by_name(model, top) == 8  # layer 2 only: 8 weighted Keras layers
    ids = np.array([[1, 4, 5, 2, 0], [1, 6, 2, 0, 0]], dtype=np.int32)
    mask = (ids > 0).astype(np.int32)
    bottom = keras.Model(model.inputs, model.get_layer("encoder.layer.1.output.LayerNorm").output)
    states = bottom([ids, mask]).numpy()
    whole, split = model([ids, mask]), top([states, mask])
    np.testing.assert_allclose(
        split["sentence_embedding"], whole["sentence_embedding"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(split["token_embeddings"], whole["token_embeddings"], atol=1e-5)
    with pytest.raises(ValueError, match=r"first_layer must be in 1\.\.2"):
        build_bert_top(config, first_layer=3)
