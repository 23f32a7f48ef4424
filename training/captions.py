"""Captioned datasets: which images there are, and which captions describe each of them.

Three layouts are read, told apart by what ``DIR`` holds:

- captioned folder: ``DIR/images/*`` and ``DIR/captions.tsv`` (header ``image<TAB>caption``,
  any number of captions per image, ``image`` is a file name inside ``images/``);
- Flickr8k: the same plus ``DIR/splits/{split}.txt`` (one image file name per line), which picks
  the images of a split (with a split, only the captions of those images are read);
- COCO: ``DIR/annotations/captions_{split}2017.json`` (official format) with the photos in
  ``DIR/{split}2017/``; ``split`` is e.g. ``"val"`` or ``"train"``.

Nothing is dropped quietly: every wrong line (a missing image file, an empty caption, a caption
for an unknown image, a split naming an unknown image, an image without captions) is collected
and raised as one ``DatasetError`` with counts per kind and the first few examples of each.

Pure Python and NumPy: no TensorFlow, no Beam, so the CLI validates a dataset before paying for
either.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import posixpath
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

LAYOUT_FOLDER = "folder"
LAYOUT_FLICKR8K = "flickr8k"
LAYOUT_COCO = "coco"

IMAGES_DIR = "images"
CAPTIONS_FILE = "captions.tsv"
SPLITS_DIR = "splits"
COCO_ANNOTATIONS_DIR = "annotations"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")

# How many examples of each kind of problem an error message shows (the counts are always full).
DEFAULT_MAX_EXAMPLES = 5

# Kinds of problem, in the order an error message lists them.
MALFORMED_LINE = "malformed line"
MISSING_IMAGE = "missing image file"
EMPTY_CAPTION = "empty caption"
UNKNOWN_IMAGE = "caption for an unknown image"
SPLIT_UNKNOWN_IMAGE = "split names an unknown image"
DUPLICATE_ENTRY = "duplicate entry"
IMAGE_WITHOUT_CAPTIONS = "image without captions"
NOT_IN_TABLE = "image not in the embedding table"
AMBIGUOUS_NAME = "file name in more than one table row"


class DatasetError(ValueError):
    """A dataset (or its match with an embedding table) has wrong lines; ``problems`` lists them.

    ``problems`` maps a kind (e.g. ``"empty caption"``) to every message of that kind, so a
    caller can count or show them; ``str(error)`` shows the counts and the first few of each.
    """

    def __init__(
        self,
        where: str,
        problems: dict[str, list[str]],
        max_examples: int = DEFAULT_MAX_EXAMPLES,
    ) -> None:
        self.where = where
        self.problems = {kind: list(messages) for kind, messages in problems.items() if messages}
        total = sum(len(messages) for messages in self.problems.values())
        counts = ", ".join(f"{len(m)} x {kind}" for kind, m in self.problems.items())
        lines = [f"{where}: {total} problem(s): {counts}"]
        for kind, messages in self.problems.items():
            for message in messages[:max_examples]:
                lines.append(f"  {kind}: {message}")
            if len(messages) > max_examples:
                lines.append(f"  ... and {len(messages) - max_examples} more {kind}(s)")
        super().__init__("\n".join(lines))


class _Problems:
    """Collects problems by kind so that one error reports all of them."""

    def __init__(self) -> None:
        self._by_kind: dict[str, list[str]] = collections.defaultdict(list)

    def add(self, kind: str, message: str) -> None:
        self._by_kind[kind].append(message)

    def raise_if_any(self, where: str, max_examples: int) -> None:
        if self._by_kind:
            raise DatasetError(where, dict(self._by_kind), max_examples)


@dataclasses.dataclass(frozen=True, eq=False)
class CaptionedDataset:
    """Images and their captions.

    ``images`` is ``[(image_name, uri)]`` sorted by name (names are unique: a file name for the
    folder and Flickr8k layouts, COCO's ``file_name``); ``captions`` is ``[(image_name, caption)]``
    in file order, every caption naming one of ``images`` and every image having at least one.
    """

    root: str
    layout: str
    split: str | None
    images: list[tuple[str, str]]
    captions: list[tuple[str, str]]

    @property
    def image_names(self) -> list[str]:
        return [name for name, _ in self.images]

    @property
    def caption_texts(self) -> list[str]:
        return [caption for _, caption in self.captions]

    def captions_by_image(self) -> dict[str, list[str]]:
        """Each image's captions, in the dataset's order (every image a key, captioned or not)."""
        by_image: dict[str, list[str]] = {name: [] for name, _ in self.images}
        for name, caption in self.captions:
            by_image[name].append(caption)
        return by_image

    def caption_image_index(self) -> np.ndarray:
        """``(num_captions,)`` int64: the row in ``images`` of each caption's image."""
        row_of = {name: row for row, (name, _) in enumerate(self.images)}
        return np.fromiter(
            (row_of[name] for name, _ in self.captions), dtype=np.int64, count=len(self.captions)
        )

    def summary(self) -> dict[str, Any]:
        """What a model's metadata records about the data it was trained or evaluated on."""
        return {
            "path": self.root,
            "layout": self.layout,
            "split": self.split,
            "images": len(self.images),
            "captions": len(self.captions),
        }

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return (
            f"CaptionedDataset({self.root!r}, layout={self.layout!r}, split={self.split!r}, "
            f"{len(self.images)} images, {len(self.captions)} captions)"
        )


def load_captioned_dataset(
    path: str | Path, split: str | None = None, max_examples: int = DEFAULT_MAX_EXAMPLES
) -> CaptionedDataset:
    """Read the dataset at ``path`` (any of the three layouts), validating every line.

    Raises ``DatasetError`` (a ValueError) listing what is wrong, or when ``path`` matches none
    of the layouts or ``split`` names no split of it.
    """
    root = Path(path).expanduser().absolute()
    if not root.is_dir():
        raise DatasetError(str(root), {"not a directory": ["the dataset path does not exist"]})
    if (root / COCO_ANNOTATIONS_DIR).is_dir() and not (root / CAPTIONS_FILE).is_file():
        return _load_coco(root, split, max_examples)
    if (root / CAPTIONS_FILE).is_file():
        return _load_tsv(root, split, max_examples)
    raise DatasetError(
        str(root),
        {
            "unknown layout": [
                f"expected {IMAGES_DIR}/ + {CAPTIONS_FILE} (captioned folder; Flickr8k adds "
                f"{SPLITS_DIR}/SPLIT.txt) or {COCO_ANNOTATIONS_DIR}/captions_SPLIT2017.json + "
                f"SPLIT2017/ (COCO)"
            ]
        },
    )


def _image_files(folder: Path) -> dict[str, Path]:
    """Image files directly inside ``folder`` by file name (hidden files and others ignored)."""
    if not folder.is_dir():
        return {}
    return {
        entry.name: entry
        for entry in folder.iterdir()
        if not entry.name.startswith(".") and entry.suffix.lower() in IMAGE_SUFFIXES
    }


def _read_split(root: Path, split: str, problems: _Problems) -> list[str] | None:
    """The image names of ``splits/{split}.txt``, or None (and a problem) if there is none."""
    split_file = root / SPLITS_DIR / f"{split}.txt"
    if not split_file.is_file():
        available = sorted(p.stem for p in (root / SPLITS_DIR).glob("*.txt"))
        problems.add(
            "unknown split",
            f"no {SPLITS_DIR}/{split}.txt (splits here: {available or 'none'})",
        )
        return None
    names: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(split_file.read_text(encoding="utf-8").splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        if name in seen:
            problems.add(
                DUPLICATE_ENTRY,
                f"{SPLITS_DIR}/{split}.txt line {number}: {name!r} (first on line {seen[name]})",
            )
            continue
        seen[name] = number
        names.append(name)
    return names


def _load_tsv(root: Path, split: str | None, max_examples: int) -> CaptionedDataset:
    problems = _Problems()
    files = _image_files(root / IMAGES_DIR)
    if not files:
        problems.add(MISSING_IMAGE, f"no image files in {root / IMAGES_DIR}")

    selected: set[str] | None = None
    split_names: list[str] = []
    if split is not None:
        split_names = _read_split(root, split, problems) or []
        for name in split_names:
            if name not in files:
                problems.add(SPLIT_UNKNOWN_IMAGE, f"{SPLITS_DIR}/{split}.txt: {name!r}")
        selected = set(split_names)

    captions = _read_captions_tsv(root / CAPTIONS_FILE, files, selected, problems)

    # Images of the dataset: the split's names, else every image file in the folder.
    names = sorted(n for n in split_names if n in files) if split is not None else sorted(files)
    captioned = {name for name, _ in captions}
    for name in names:
        if name not in captioned:
            problems.add(
                IMAGE_WITHOUT_CAPTIONS, f"{IMAGES_DIR}/{name} has no line in {CAPTIONS_FILE}"
            )
    problems.raise_if_any(str(root), max_examples)

    dataset = CaptionedDataset(
        root=str(root),
        layout=LAYOUT_FOLDER if split is None else LAYOUT_FLICKR8K,
        split=split,
        images=[(name, str(files[name])) for name in names],
        captions=captions,
    )
    logger.info("read %r", dataset)
    return dataset


def _read_captions_tsv(
    path: Path, files: dict[str, Path], selected: set[str] | None, problems: _Problems
) -> list[tuple[str, str]]:
    """``(image_name, caption)`` rows of ``captions.tsv``; with ``selected``, only those images.

    Lines for images outside ``selected`` are not checked: a split may legitimately come with
    a captions file that covers more images than were shipped.
    """
    # Plain tab splitting, not the csv module: captions hold quotes that csv would interpret.
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t") if lines else []
    if "image" not in header or "caption" not in header:
        problems.add(MALFORMED_LINE, f"{CAPTIONS_FILE} line 1: header must be image<TAB>caption")
        return []
    image_col, caption_col = header.index("image"), header.index("caption")
    captions: list[tuple[str, str]] = []
    for number, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            problems.add(
                MALFORMED_LINE,
                f"{CAPTIONS_FILE} line {number}: {len(fields)} tab-separated fields, "
                f"expected {len(header)}",
            )
            continue
        name, caption = fields[image_col].strip(), fields[caption_col].strip()
        if selected is not None and name not in selected:
            continue
        if name not in files:
            problems.add(MISSING_IMAGE, f"{CAPTIONS_FILE} line {number}: no {IMAGES_DIR}/{name}")
        elif not caption:
            problems.add(EMPTY_CAPTION, f"{CAPTIONS_FILE} line {number}: image {name}")
        else:
            captions.append((name, caption))
    return captions


def _coco_annotation_file(root: Path, split: str | None) -> tuple[Path, str]:
    """``annotations/captions_{split}2017.json`` (also ``captions_{split}.json``) and the split."""
    folder = root / COCO_ANNOTATIONS_DIR
    available = sorted(p.stem.removeprefix("captions_") for p in folder.glob("captions_*.json"))
    if split is None:
        if len(available) == 1:
            split = available[0]
        else:
            raise DatasetError(
                str(root),
                {"unknown split": [f"pass a split; caption files here: {available or 'none'}"]},
            )
    for candidate in (f"{split}2017", split):
        annotation_file = folder / f"captions_{candidate}.json"
        if annotation_file.is_file():
            return annotation_file, candidate
    raise DatasetError(
        str(root),
        {"unknown split": [f"no captions_{split}2017.json (caption files here: {available})"]},
    )


def _load_coco(root: Path, split: str | None, max_examples: int) -> CaptionedDataset:
    annotation_file, folder_name = _coco_annotation_file(root, split)
    problems = _Problems()
    where = f"{COCO_ANNOTATIONS_DIR}/{annotation_file.name}"
    try:
        data = json.loads(annotation_file.read_text(encoding="utf-8"))
        images, annotations = data["images"], data["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DatasetError(
            str(root), {MALFORMED_LINE: [f"{where} is not a COCO captions file: {err!r}"]}
        ) from err

    files = _image_files(root / folder_name)
    name_of: dict[Any, str] = {}
    for position, image in enumerate(images):
        name = str(image.get("file_name", "")).strip()
        if not name or "id" not in image:
            problems.add(MALFORMED_LINE, f"{where} images[{position}] lacks id or file_name")
        elif name not in files:
            problems.add(MISSING_IMAGE, f"{where} images[{position}]: no {folder_name}/{name}")
        else:
            name_of[image["id"]] = name

    # Sorted by (image name, annotation id) so the caption order does not depend on the JSON.
    all_ids = {image.get("id") for image in images}
    keyed: list[tuple[str, Any, str]] = []
    for position, annotation in enumerate(annotations):
        image_id = annotation.get("image_id")
        caption = str(annotation.get("caption") or "").strip()
        if image_id not in name_of:
            if image_id not in all_ids:
                problems.add(UNKNOWN_IMAGE, f"{where} annotations[{position}]: image_id {image_id}")
            continue  # an image already reported as missing or malformed
        if not caption:
            problems.add(EMPTY_CAPTION, f"{where} annotations[{position}]: image_id {image_id}")
            continue
        keyed.append((name_of[image_id], str(annotation.get("id", position)).zfill(12), caption))
    keyed.sort(key=lambda item: item[:2])
    captions = [(name, caption) for name, _, caption in keyed]

    captioned = {name for name, _ in captions}
    for name in sorted(set(name_of.values()) - captioned):
        problems.add(IMAGE_WITHOUT_CAPTIONS, f"{where}: {name}")
    problems.raise_if_any(str(root), max_examples)

    dataset = CaptionedDataset(
        root=str(root),
        layout=LAYOUT_COCO,
        split=split if split is not None else folder_name,
        images=[(name, str(files[name])) for name in sorted(set(name_of.values()))],
        captions=captions,
    )
    logger.info("read %r", dataset)
    return dataset


def match_table_rows(
    dataset: CaptionedDataset,
    table_uris: Sequence[str],
    duplicate_uris: Sequence[Iterable[str]] | None = None,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
) -> np.ndarray:
    """The embedding-table row of each of ``dataset.images`` -> ``(num_images,)`` int64.

    Rows are matched by file name (the last part of the uri), so a table indexed from another
    copy or a folder of symlinks still matches. ``duplicate_uris[i]`` (the table's column of that
    name) lists the uris the index job folded into row ``i`` because their bytes were identical:
    such an image takes that row's embedding. Raises ``DatasetError`` listing the images the table
    lacks and the names that more than one row claims.
    """
    rows_of: dict[str, set[int]] = collections.defaultdict(set)
    for row, uri in enumerate(table_uris):
        rows_of[posixpath.basename(uri)].add(row)
    if duplicate_uris is not None:
        for row, uris in enumerate(duplicate_uris):
            for uri in uris:
                rows_of[posixpath.basename(uri)].add(row)

    problems = _Problems()
    matched = np.empty(len(dataset.images), dtype=np.int64)
    for position, (name, _) in enumerate(dataset.images):
        rows = rows_of.get(name)
        if not rows:
            problems.add(NOT_IN_TABLE, name)
        elif len(rows) > 1:
            problems.add(AMBIGUOUS_NAME, f"{name}: rows {sorted(rows)[:5]}")
        else:
            matched[position] = next(iter(rows))
    problems.raise_if_any(
        f"matching {dataset.root} (split {dataset.split}) with the embedding table", max_examples
    )
    return matched


def caption_pairs(dataset: CaptionedDataset, table_rows: np.ndarray) -> np.ndarray:
    """``(num_captions, 2)`` int64 ``[caption_row, table_row]``: what the trainers take as
    ``pairs``, with ``table_rows`` from ``match_table_rows`` (caption rows follow
    ``dataset.captions``)."""
    table_rows = np.asarray(table_rows, dtype=np.int64)
    if table_rows.shape != (len(dataset.images),):
        raise ValueError(
            f"need one table row per image ({len(dataset.images)}), got {table_rows.shape}"
        )
    image_rows = table_rows[dataset.caption_image_index()]
    return np.stack([np.arange(len(dataset.captions), dtype=np.int64), image_rows], axis=1)
