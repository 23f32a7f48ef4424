"""Image features for a captioned dataset, computed once by the real index job and reused.

Trainers and evaluation read embedding tables, never pixels: the dataset's images go through
``imgsearch index`` (a manifest naming exactly the split's images, ``id`` = image name), and
the output folder is reused while it was made by the same encoder over the same images.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from encoders.base import EncoderSpec
from index.manifest import read_manifest
from index.table import EmbeddingTable, parquet_files, read_embedding_table, table_files
from training.captions import CaptionedDataset, match_table_rows

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetFeatures:
    """A dataset's image embeddings: ``table`` rows, and ``image_rows[i]`` is the table row of
    ``dataset.images[i]`` (duplicated photos share their kept copy's row)."""

    dataset: CaptionedDataset
    table: EmbeddingTable
    image_rows: np.ndarray
    index_dir: str

    @property
    def image_embeddings(self) -> np.ndarray:
        """``(num_images, dim)`` in ``dataset.images`` order."""
        return self.table.embeddings[self.image_rows]


def features_dir(work_root: str | Path, dataset: CaptionedDataset, spec: EncoderSpec) -> Path:
    """Where the index of ``dataset``'s images under ``spec`` lives: named by what it holds."""
    digest = hashlib.sha256()
    digest.update(str(spec).encode())
    for name, uri in dataset.images:
        digest.update(f"{name}\t{uri}\n".encode())
    split = dataset.split or "all"
    return Path(work_root) / f"{dataset.layout}-{split}-{spec.name}-{digest.hexdigest()[:12]}"


def _write_manifest(dataset: CaptionedDataset, path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["uri", "id"])
        writer.writerows((uri, name) for name, uri in dataset.images)


def _duplicate_uris(index_dir: Path, image_ids: Sequence[str]) -> list[list[str]]:
    """Per table row, the uris the index job folded into it as byte-identical duplicates."""
    folded: dict[str, list[str]] = defaultdict(list)
    for path in parquet_files(str(index_dir / "duplicates")):
        for row in pq.read_table(path, columns=["uri", "kept_image_id"]).to_pylist():
            folded[row["kept_image_id"]].append(row["uri"])
    return [folded.get(image_id, []) for image_id in image_ids]


def dataset_features(
    dataset: CaptionedDataset,
    work_root: str | Path,
    spec: EncoderSpec,
    beam_args: Sequence[str] = (),
    out: str | Path | None = None,
    reuse: bool = True,
) -> DatasetFeatures:
    """Index ``dataset``'s images with ``spec`` unless an identical index exists; read it.

    ``out`` overrides the folder (default: ``features_dir(work_root, ...)``); ``reuse=False``
    always reindexes (evaluation does, since its ``beam_args`` may add index flags such as
    ``--joint_model`` that the reuse check does not compare). Images the index job could not
    use (dead letters) make this fail with the list of them: a training or evaluation set with
    silently missing images would give wrong figures.
    """
    from pipelines import index_job

    out = Path(out) if out is not None else features_dir(work_root, dataset, spec)
    reuse = reuse and (out / "manifest.json").is_file()
    if reuse:
        manifest = read_manifest(str(out))
        reuse = manifest.encoder_spec == spec.to_json()
    if not reuse:
        out.mkdir(parents=True, exist_ok=True)
        corpus = out / "corpus.csv"
        _write_manifest(dataset, corpus)
        logger.info("indexing %d images of %r into %s", len(dataset.images), dataset, out)
        result = index_job.run(
            [
                "--corpus", str(corpus), "--out", str(out), "--encoder", spec.name,
                "--weights", spec.weights, "--image_size", str(spec.image_size),
                # The features are the named encoder's (the cache folder is named for it), never
                # the int8 stand-in the job's --precision auto could pick on CPU.
                "--precision", "float32", "--run_version", "features", *beam_args,
            ]
        )  # fmt: skip
        logger.info("%s", result.summary())
    else:
        logger.info("reusing image features in %s", out)
    table = read_embedding_table(table_files(str(out)))
    rows = match_table_rows(dataset, table.uris, _duplicate_uris(out, table.image_ids))
    return DatasetFeatures(dataset=dataset, table=table, image_rows=rows, index_dir=str(out))
