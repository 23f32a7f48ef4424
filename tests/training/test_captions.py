"""Reading captioned datasets in all three layouts, and reporting every wrong line at once.

Fixture folders are written into tmp_path (the loader lists files, it never decodes them, so
the "images" are a few bytes each); one test reads the real Flickr8k dev split when present.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.captions import (
    AMBIGUOUS_NAME,
    DUPLICATE_ENTRY,
    EMPTY_CAPTION,
    IMAGE_WITHOUT_CAPTIONS,
    LAYOUT_COCO,
    LAYOUT_FLICKR8K,
    LAYOUT_FOLDER,
    MALFORMED_LINE,
    MISSING_IMAGE,
    NOT_IN_TABLE,
    SPLIT_UNKNOWN_IMAGE,
    UNKNOWN_IMAGE,
    CaptionedDataset,
    DatasetError,
    caption_pairs,
    load_captioned_dataset,
    match_table_rows,
)


def write_folder(
    root: Path,
    images: list[str],
    caption_lines: list[str],
    splits: dict[str, list[str]] | None = None,
    header: str = "image\tcaption",
) -> Path:
    (root / "images").mkdir(parents=True)
    for name in images:
        (root / "images" / name).write_bytes(b"\xff\xd8 not decoded here")
    (root / "captions.tsv").write_text("\n".join([header, *caption_lines]) + "\n")
    for split, names in (splits or {}).items():
        (root / "splits").mkdir(exist_ok=True)
        (root / "splits" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def write_coco(root: Path, split: str, images: dict[int, str], annotations: list[dict]) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / f"{split}2017").mkdir(exist_ok=True)
    for name in images.values():
        (root / f"{split}2017" / name).write_bytes(b"jpeg")
    data = {
        "images": [{"id": image_id, "file_name": name} for image_id, name in images.items()],
        "annotations": annotations,
    }
    (root / "annotations" / f"captions_{split}2017.json").write_text(json.dumps(data))
    return root


def test_captioned_folder(tmp_path: Path) -> None:
    root = write_folder(
        tmp_path / "ds",
        ["b.jpg", "a.png", "notes.txt"],
        ["a.png\ta red ball", "b.jpg\ta dog runs", "a.png\t  ball on grass  ", ""],
    )
    dataset = load_captioned_dataset(root)
    assert dataset.layout == LAYOUT_FOLDER and dataset.split is None
    assert dataset.image_names == ["a.png", "b.jpg"]  # sorted; notes.txt is no image
    assert dataset.images[0][1] == str(root / "images" / "a.png")
    assert dataset.captions == [
        ("a.png", "a red ball"),
        ("b.jpg", "a dog runs"),
        ("a.png", "ball on grass"),
    ]
    np.testing.assert_array_equal(dataset.caption_image_index(), [0, 1, 0])
    assert dataset.captions_by_image() == {"a.png": ["a red ball", "ball on grass"],
                                           "b.jpg": ["a dog runs"]}  # fmt: skip
    assert dataset.summary() == {
        "path": str(root),
        "layout": LAYOUT_FOLDER,
        "split": None,
        "images": 2,
        "captions": 3,
    }


def test_flickr8k_split_selects_images_and_their_captions(tmp_path: Path) -> None:
    root = write_folder(
        tmp_path / "ds",
        ["1.jpg", "2.jpg", "3.jpg"],
        ["1.jpg\tone", "2.jpg\ttwo", "3.jpg\tthree", "2.jpg\tzwei", "gone.jpg\tnot shipped"],
        splits={"dev": ["3.jpg", "2.jpg"], "train": ["1.jpg"]},
    )
    dev = load_captioned_dataset(root, "dev")
    assert dev.layout == LAYOUT_FLICKR8K and dev.split == "dev"
    assert dev.image_names == ["2.jpg", "3.jpg"]
    # A caption for an image outside the split is not checked: gone.jpg raises nothing.
    assert dev.captions == [("2.jpg", "two"), ("3.jpg", "three"), ("2.jpg", "zwei")]
    assert load_captioned_dataset(root, "train").captions == [("1.jpg", "one")]


def test_every_wrong_line_is_reported_with_counts(tmp_path: Path) -> None:
    root = write_folder(
        tmp_path / "ds",
        ["ok.jpg", "lonely.jpg"] + [f"x{i}.jpg" for i in range(8)],
        [
            "ok.jpg\tfine",
            "missing.jpg\ta caption for a file that is not there",
            "ok.jpg\t   ",
            "ok.jpg\ttoo\tmany fields",
            *[f"x{i}.jpg\t" for i in range(8)],  # eight empty captions
        ],
    )
    with pytest.raises(DatasetError) as caught:
        load_captioned_dataset(root, max_examples=3)
    problems = caught.value.problems
    assert problems[MISSING_IMAGE] == ["captions.tsv line 3: no images/missing.jpg"]
    assert len(problems[EMPTY_CAPTION]) == 9 and "line 4" in problems[EMPTY_CAPTION][0]
    assert problems[MALFORMED_LINE] == ["captions.tsv line 5: 3 tab-separated fields, expected 2"]
    # Images with no usable caption: lonely.jpg and the eight with empty captions.
    assert len(problems[IMAGE_WITHOUT_CAPTIONS]) == 9
    message = str(caught.value)
    assert "20 problem(s)" in message and "9 x empty caption" in message
    assert "... and 6 more empty caption(s)" in message
    assert isinstance(caught.value, ValueError)


def test_split_file_problems(tmp_path: Path) -> None:
    root = write_folder(
        tmp_path / "ds",
        ["1.jpg"],
        ["1.jpg\tone"],
        splits={"dev": ["1.jpg", "nowhere.jpg", "1.jpg"]},
    )
    with pytest.raises(DatasetError) as caught:
        load_captioned_dataset(root, "dev")
    assert caught.value.problems[SPLIT_UNKNOWN_IMAGE] == ["splits/dev.txt: 'nowhere.jpg'"]
    assert caught.value.problems[DUPLICATE_ENTRY] == [
        "splits/dev.txt line 3: '1.jpg' (first on line 1)"
    ]
    with pytest.raises(DatasetError, match=r"no splits/test.txt \(splits here: \['dev'\]\)"):
        load_captioned_dataset(root, "test")


def test_bad_header_and_unknown_layout(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "ds", ["1.jpg"], ["1.jpg\tone"], header="file\ttext")
    with pytest.raises(DatasetError, match="header must be image<TAB>caption"):
        load_captioned_dataset(root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="unknown layout"):
        load_captioned_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="does not exist"):
        load_captioned_dataset(tmp_path / "nothing-here")


def test_coco_layout(tmp_path: Path) -> None:
    root = write_coco(
        tmp_path / "coco",
        "val",
        {7: "000007.jpg", 3: "000003.jpg"},
        [
            {"id": 12, "image_id": 7, "caption": "a cat. "},
            {"id": 2, "image_id": 3, "caption": "a bus"},
            {"id": 11, "image_id": 7, "caption": "a sleeping cat"},
        ],
    )
    (root / "val2017" / "no-captions.jpg").write_bytes(b"jpeg")  # photos outside the JSON: ignored
    for split in ("val", "val2017", None):
        dataset = load_captioned_dataset(root, split)
        assert dataset.layout == LAYOUT_COCO
        assert dataset.image_names == ["000003.jpg", "000007.jpg"]
        # Sorted by image then annotation id, whatever the JSON order.
        assert dataset.captions == [
            ("000003.jpg", "a bus"),
            ("000007.jpg", "a sleeping cat"),
            ("000007.jpg", "a cat."),
        ]


def test_coco_problems(tmp_path: Path) -> None:
    root = write_coco(
        tmp_path / "coco",
        "train",
        {1: "a.jpg", 2: "b.jpg", 3: "c.jpg"},
        [
            {"id": 1, "image_id": 1, "caption": "fine"},
            {"id": 2, "image_id": 2, "caption": ""},
            {"id": 3, "image_id": 99, "caption": "whose?"},
            {"id": 4, "image_id": 3, "caption": "photo was deleted"},
        ],
    )
    (root / "train2017" / "c.jpg").unlink()
    with pytest.raises(DatasetError) as caught:
        load_captioned_dataset(root, "train")
    problems = caught.value.problems
    assert problems[MISSING_IMAGE] == [
        "annotations/captions_train2017.json images[2]: no train2017/c.jpg"
    ]
    assert problems[EMPTY_CAPTION] == [
        "annotations/captions_train2017.json annotations[1]: image_id 2"
    ]
    assert problems[UNKNOWN_IMAGE] == [
        "annotations/captions_train2017.json annotations[2]: image_id 99"
    ]
    assert problems[IMAGE_WITHOUT_CAPTIONS] == ["annotations/captions_train2017.json: b.jpg"]
    with pytest.raises(DatasetError, match=r"no captions_test2017\.json"):
        load_captioned_dataset(root, "test")


def _dataset(names: list[str], captions: list[tuple[str, str]]) -> CaptionedDataset:
    return CaptionedDataset(
        root="/data",
        layout=LAYOUT_FOLDER,
        split=None,
        images=[(name, f"/data/images/{name}") for name in names],
        captions=captions,
    )


def test_match_table_rows_by_file_name_and_duplicates() -> None:
    dataset = _dataset(["a.jpg", "b.jpg", "c.jpg"], [("c.jpg", "x"), ("a.jpg", "y")])
    table_uris = ["/elsewhere/c.jpg", "gs://bucket/a.jpg", "/tmp/z.jpg"]
    duplicates = [[], [], ["/tmp/b.jpg"]]  # b.jpg's bytes equal z.jpg's: it shares row 2
    rows = match_table_rows(dataset, table_uris, duplicates)
    np.testing.assert_array_equal(rows, [1, 2, 0])
    np.testing.assert_array_equal(caption_pairs(dataset, rows), [[0, 0], [1, 1]])


def test_match_table_rows_reports_missing_and_ambiguous() -> None:
    dataset = _dataset(["a.jpg", "b.jpg", "c.jpg"], [])
    with pytest.raises(DatasetError) as caught:
        match_table_rows(dataset, ["/x/a.jpg", "/y/a.jpg", "/x/c.jpg"])
    assert caught.value.problems == {
        AMBIGUOUS_NAME: ["a.jpg: rows [0, 1]"],
        NOT_IN_TABLE: ["b.jpg"],
    }


def test_real_flickr8k_dev_split(assets_dir: Path) -> None:
    root = assets_dir / "datasets" / "flickr8k"
    if not (root / "splits" / "dev.txt").is_file():
        pytest.skip("Flickr8k is not in the assets folder")
    dev = load_captioned_dataset(root, "dev")
    assert (len(dev.images), len(dev.captions)) == (1000, 5000)
    assert np.bincount(dev.caption_image_index()).tolist() == [5] * 1000
    assert all(Path(uri).is_file() for _, uri in dev.images[:20])
