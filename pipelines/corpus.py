"""Reading a corpus: a folder, glob or gs:// prefix of image files, or a manifest of uris.

Listing is the only I/O here; bytes are read later, in parallel, by the fetch stage. Each
listed input becomes an ``ImageRef``; a manifest row that names no usable uri becomes a
dead letter, so every line a user gave is accounted for.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import posixpath
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from index.metadata_columns import MetadataColumn, json_ready, typed_values
from index.sources import file_stamp
from pipelines import live_progress
from pipelines.types import STAGE_READ, DeadLetter, ImageRef, image_id_for_uri
from storage.files import open_file

logger = logging.getLogger(__name__)

DEAD_LETTERS = "dead_letters"
_GLOB_CHARS = set("*?[")
# Any "scheme://" uri is absolute, known scheme or not: an ftp:// row must reach fetch as itself
# (and be refused there as an unsupported scheme), not be read as a relative path.
_HAS_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def files_pattern(corpus: str) -> str:
    """The glob that lists a files corpus: a glob as given, a folder or prefix recursively."""
    if _GLOB_CHARS & set(corpus):
        return corpus
    return corpus.rstrip("/") + "/**"


def corpus_root(corpus: str) -> str:
    """The fixed folder part of a corpus: everything before its first glob character."""
    glob_at = min((corpus.index(c) for c in _GLOB_CHARS if c in corpus), default=None)
    if glob_at is None:
        return corpus.rstrip("/")
    return posixpath.dirname(corpus[:glob_at])


def is_hidden(path: str, root: str) -> bool:
    """Dotfiles (``.DS_Store``, editor swap files) and dot-folders below the corpus root.

    Only the part below ``root`` counts: a corpus that itself lives under ``~/.cache`` is fine.
    """
    relative = path[len(root) :] if path.startswith(root) else path
    return any(part.startswith(".") for part in relative.split("/") if part)


def resolve_manifest_uri(uri: str, manifest_path: str) -> str:
    """Manifest uris may be relative to the manifest file's own folder."""
    if _HAS_SCHEME.match(uri) or uri.startswith("/"):
        return uri
    return posixpath.join(posixpath.dirname(manifest_path), uri)


def ref_from_manifest_row(
    row: dict[str, Any], manifest_path: str, columns: Sequence[MetadataColumn] = ()
) -> ImageRef | DeadLetter:
    """One manifest row -> an ``ImageRef`` (``uri``, optional ``id``, the rest as metadata).

    The typed ``columns`` (``index.metadata_columns``) are checked here and kept in the
    metadata JSON in their normal form (timestamps ISO-8601 UTC), so the table writer types
    them from it without a failure; a value that does not fit makes the row a dead letter.
    """
    raw_uri = row.get("uri")
    uri = str(raw_uri).strip() if raw_uri is not None else ""
    where = f"{manifest_path}:{row.get('_line', '?')}"
    if not uri:
        return DeadLetter(uri=where, stage=STAGE_READ, reason="manifest row has no 'uri'")
    uri = resolve_manifest_uri(uri, manifest_path)
    raw_id = row.get("id")
    image_id = str(raw_id).strip() if raw_id not in (None, "") else image_id_for_uri(uri)
    metadata = {k: v for k, v in row.items() if k not in ("uri", "id", "_line") and v is not None}
    if columns:
        try:
            typed = json_ready(typed_values(columns, metadata))
        except ValueError as exc:
            return DeadLetter(uri=uri, stage=STAGE_READ, reason=str(exc))
        metadata.update({name: value for name, value in typed.items() if value is not None})
    try:
        metadata_json = json.dumps(metadata, sort_keys=True, default=str) if metadata else ""
    except (TypeError, ValueError) as exc:
        return DeadLetter(uri=uri, stage=STAGE_READ, reason=f"unusable metadata: {exc}")
    return ImageRef(uri=uri, image_id=image_id, metadata_json=metadata_json)


def manifest_rows(path: str, handle: io.BufferedIOBase) -> Iterator[dict[str, Any]]:
    """Rows of a CSV, JSONL or Parquet manifest, streamed, each with its ``_line`` number.

    Raises ValueError for a file that cannot be parsed at all; a single bad JSONL line is
    yielded as a row without ``uri`` so it becomes a dead letter rather than stopping the job.
    """
    lower = path.lower()
    if lower.endswith(".parquet"):
        parquet = pq.ParquetFile(handle)
        line = 0
        for batch in parquet.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                line += 1
                yield {**row, "_line": line}
    elif lower.endswith((".jsonl", ".json")):
        text = io.TextIOWrapper(handle, encoding="utf-8")
        for line, raw in enumerate(text, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                yield {"_line": line, "_error": f"invalid JSON: {exc.msg}"}
                continue
            if not isinstance(row, dict):
                yield {"_line": line, "_error": "JSON line is not an object"}
                continue
            yield {**row, "_line": line}
    elif lower.endswith(".csv"):
        text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
        reader = csv.DictReader(text)
        if reader.fieldnames is None or "uri" not in reader.fieldnames:
            raise ValueError(f"manifest {path} has no 'uri' column (header: {reader.fieldnames})")
        for line, row in enumerate(reader, start=2):
            yield {**{k: v for k, v in row.items() if k is not None}, "_line": line}
    else:
        raise ValueError(f"unknown manifest type {path!r}: use .csv, .jsonl or .parquet")


class _ParseManifestFn(beam.DoFn):
    """ReadableFile -> ImageRef, with a ``dead_letters`` output for unusable rows."""

    def __init__(self, columns: Sequence[MetadataColumn] = ()) -> None:
        self.columns = tuple(columns)
        self.inputs = Metrics.counter("imgsearch", "inputs")

    def process(self, readable: fileio.ReadableFile) -> Iterable[Any]:
        path = readable.metadata.path
        with readable.open(compression_type="uncompressed") as handle:
            for row in manifest_rows(path, handle):
                self.inputs.inc()
                live_progress.bump("listed")
                if "_error" in row:
                    where = f"{path}:{row['_line']}"
                    yield beam.pvalue.TaggedOutput(
                        DEAD_LETTERS, DeadLetter(uri=where, stage=STAGE_READ, reason=row["_error"])
                    )
                    continue
                ref = ref_from_manifest_row(row, path, self.columns)
                if isinstance(ref, DeadLetter):
                    yield beam.pvalue.TaggedOutput(DEAD_LETTERS, ref)
                else:
                    yield ref


class _FileToRefFn(beam.DoFn):
    """FileMetadata -> ImageRef, skipping hidden files (they are not part of a photo corpus)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.inputs = Metrics.counter("imgsearch", "inputs")
        self.hidden = Metrics.counter("imgsearch", "hidden_files_skipped")

    def process(self, metadata: Any) -> Iterable[ImageRef]:
        if is_hidden(metadata.path, self.root):
            self.hidden.inc()
            return
        self.inputs.inc()
        live_progress.bump("listed")
        # gs:// objects: size and the update time (a new generation is a new update time).
        stamp = file_stamp(metadata.size_in_bytes, getattr(metadata, "last_updated_in_seconds", 0))
        yield ImageRef(uri=metadata.path, image_id=image_id_for_uri(metadata.path), stamp=stamp)


DANGLING = "dangling symlink (its target does not exist)"


def local_folder(corpus: str) -> str | None:
    """The folder a plain local folder corpus names (no glob, no scheme), else None."""
    if _GLOB_CHARS & set(corpus) or FileSystems.get_scheme(corpus) is not None:
        return None
    root = corpus.rstrip("/") or "/"
    return root if os.path.isdir(root) else None


def local_folder_entries(root: str) -> Iterator[tuple[str, bool, str]]:
    """``(path, dangling, stamp)`` for every non-folder entry below ``root``, as Beam's listing
    names it.

    Paths are ``root`` joined with the relative path, exactly as Beam's ``root/**`` match writes
    them, so image ids do not change between listings. Symlinked folders are not followed (as
    with Beam's). A symlink whose target is gone comes out with ``dangling`` True (and no
    stamp): Beam's listing would skip it without a trace. ``stamp`` is the file's (the link
    target's) size and modification time, one stat each; pipes and devices are listed too
    (fetch refuses them).
    """
    folders = [root]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    if not entry.is_dir():  # a linked folder is neither walked nor a file
                        dangling = not os.path.exists(entry.path)
                        yield entry.path, dangling, "" if dangling else _entry_stamp(entry)
                elif entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
                else:
                    yield entry.path, False, _entry_stamp(entry)


def _entry_stamp(entry: os.DirEntry) -> str:
    try:
        stat = entry.stat()
    except OSError:  # gone since the directory was read: fetch will say so
        return ""
    return file_stamp(stat.st_size, stat.st_mtime_ns / 1e9)


class _ListLocalFolderFn(beam.DoFn):
    """A local folder -> an ImageRef per file below it; a dangling symlink -> a dead letter.

    One walk of the folder replaces Beam's match (which stats every file twice) and a separate
    search for broken links; on object stores the corpus goes through MatchFiles as before.
    """

    def __init__(self) -> None:
        self.inputs = Metrics.counter("imgsearch", "inputs")
        self.hidden = Metrics.counter("imgsearch", "hidden_files_skipped")

    def process(self, root: str) -> Iterable[Any]:
        for path, dangling, stamp in local_folder_entries(root):
            if is_hidden(path, root):
                self.hidden.inc()
                continue
            self.inputs.inc()
            live_progress.bump("listed")
            image_id = image_id_for_uri(path)
            if dangling:
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTERS, DeadLetter(path, STAGE_READ, DANGLING, image_id)
                )
            else:
                yield ImageRef(uri=path, image_id=image_id, stamp=stamp)


class ReadCorpus(beam.PTransform):
    """PBegin -> (PCollection[ImageRef], PCollection[DeadLetter]), spread across workers.

    A manifest is parsed row by row; a plain local folder is walked once (``_ListLocalFolderFn``);
    globs and object-store prefixes are listed by Beam's MatchFiles. The reshuffle breaks fusion
    with the listing so that fetching and decoding fan out over every worker even when the
    listing itself ran as one bundle.
    """

    def __init__(
        self, corpus: str, corpus_format: str, columns: Sequence[MetadataColumn] = ()
    ) -> None:
        super().__init__()
        self.corpus = corpus
        self.corpus_format = corpus_format
        self.columns = tuple(columns)  # typed metadata columns a manifest's rows must fit

    def expand(self, pbegin):
        if self.corpus_format == "manifest":
            parsed = (
                pbegin
                | "MatchManifest" >> fileio.MatchFiles(self.corpus)
                | "OpenManifest" >> fileio.ReadMatches()
                | "ParseManifest"
                >> beam.ParDo(_ParseManifestFn(self.columns)).with_outputs(
                    DEAD_LETTERS, main="refs"
                )
            )
            refs, dead_letters = parsed.refs, parsed[DEAD_LETTERS]
        elif (root := local_folder(self.corpus)) is not None:
            listed = (
                pbegin
                | "Folder" >> beam.Create([root])
                | "ListFolder"
                >> beam.ParDo(_ListLocalFolderFn()).with_outputs(DEAD_LETTERS, main="refs")
            )
            refs, dead_letters = listed.refs, listed[DEAD_LETTERS]
        else:
            refs = (
                pbegin
                | "MatchFiles" >> fileio.MatchFiles(files_pattern(self.corpus))
                | "ToRefs" >> beam.ParDo(_FileToRefFn(corpus_root(self.corpus)))
            )
            dead_letters = pbegin | "NoListingDeadLetters" >> beam.Create([])
        return refs | "SpreadWork" >> beam.Reshuffle(), dead_letters


def check_corpus_exists(corpus: str, corpus_format: str) -> None:
    """Fail before launching a job when the corpus matches nothing (not an empty index), or
    when its manifest cannot be one (no 'uri' column, an unknown file type).

    The same errors would stop the job from inside its first stage, after Beam had logged them
    with a traceback; here they are one line, before any worker starts.
    """
    pattern = corpus if corpus_format == "manifest" else files_pattern(corpus)
    try:
        matched = FileSystems.match([pattern], limits=[1])[0].metadata_list
    except BeamIOError as exc:  # gs:// without credentials or network, a bucket that is gone
        raise ValueError(
            f"cannot list corpus {corpus!r}: {_first_cause(exc)}; for gs:// check the "
            f"credentials (`gcloud auth application-default login` or "
            f"GOOGLE_APPLICATION_CREDENTIALS), the bucket name and the network"
        ) from exc
    if not matched:
        raise ValueError(f"corpus {corpus!r} matched no files (pattern {pattern!r})")
    if corpus_format == "manifest":
        check_manifest_header(matched[0].path)


def _first_cause(error: BeamIOError) -> str:
    """The innermost message of Beam's nested "operation failed with exceptions {...}"."""
    while isinstance(error, BeamIOError) and error.exception_details:
        error = next(iter(error.exception_details.values()))
    return f"{type(error).__name__}: {error}"


def check_manifest_header(path: str) -> None:
    """ValueError unless ``path`` is a manifest type we read and names a 'uri' column."""
    with open_file(path) as handle:
        if path.lower().endswith(".parquet"):
            names = pq.ParquetFile(handle).schema_arrow.names
            if "uri" not in names:
                raise ValueError(f"manifest {path} has no 'uri' column (columns: {names})")
            return
        # The CSV header (or the unknown suffix) is checked when the first row is asked for.
        next(manifest_rows(path, handle), None)
