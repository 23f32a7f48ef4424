"""The index manifest: what one index version is made of, written last so it publishes the version.

A reader trusts nothing under ``OUT`` without ``OUT/manifest.json``: it names the encoder, the
ScaNN parameters, the index shards, and every file with its size and SHA-256, so a serving
process can check what it loads. All I/O goes through ``storage.files`` (Beam's
``FileSystems``), so local paths and gs:// share one code path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterable
from typing import Any

from apache_beam.io.filesystems import FileSystems

from storage.files import (
    join_path,
    json_bytes,
    read_json,
    relative_path,
    replace_by_rename,
    size_and_sha256,
)

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"

FORMAT_VERSION = 1  # bump when a reader of the old format would misread the new one

# Never let Beam guess a codec from the extension: a checksum is over the stored bytes.


class ManifestVerificationError(Exception):
    """A file the manifest lists is missing or differs from what the manifest recorded."""


@dataclasses.dataclass(frozen=True)
class IndexManifest:
    """One published index version (``OUT/manifest.json``).

    ``shards`` holds ``{"index_dir", "ids_file", "count"}`` per ScaNN shard (newer writers add
    its ``scann_params``, ``bytes`` and a ``sha256`` over its files' checksums) and ``files``
    holds ``{"path", "bytes", "sha256"}`` per file; every path is relative to ``OUT`` and uses
    ``/``. Global row ``i`` of the index is shard by shard, each in its ids file's order.
    """

    format_version: int
    version: str  # the run id
    created_at: str  # ISO 8601, UTC
    encoder_id: str  # name/version of the encoder that made every vector
    encoder_spec: dict[str, Any]  # EncoderSpec.to_json(): enough to rebuild the encoder
    dim: int
    counts: dict[str, int]  # inputs, indexed, duplicates, dead_letters, ...
    scann_params: dict[str, Any]  # ScannParams.to_json()
    shards: list[dict[str, Any]]
    files: list[dict[str, Any]]
    # A dual joint model's image index, or None: {"model", "model_version", "dim",
    # "scann_params", "shard": {"index_dir", "ids_file", "count"}}. Optional, so manifests
    # without it (older ones included) read the same; omitted from the JSON when None.
    joint_index: dict[str, Any] | None = None
    # How ``scann_params`` were chosen when the job was given a recall target: the autotuner's
    # ``TuningResult.to_json()`` (target, measured recall and latency, candidates). Optional.
    tuning: dict[str, Any] | None = None
    # How rows were split over ``shards`` when there is more than one: {"assignment",
    # "num_shards"} (see index.shards.shard_of_ids). Optional; None for one shard.
    sharding: dict[str, Any] | None = None
    # Where this version comes from: {"built_from": <version of the last full build>,
    # "built_count": rows then, "updates": [{"version", "base", "upserted", "deleted"}, ...]}.
    # index.update reads it to decide when a rebuild is due. Optional (older
    # manifests have none and count as full builds).
    lineage: dict[str, Any] | None = None
    # The semantic-hashing model whose codes the table's ``hash_code`` column holds, copied
    # into the version (index.hash_codes): {"model", "model_version", "method", "bits", "dim",
    # "encoder_id", "dir"}. Optional; None when the job ran without --hash_model.
    hashing: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for optional in ("joint_index", "tuning", "sharding", "lineage", "hashing"):
            if data[optional] is None:
                del data[optional]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> IndexManifest:
        """Parse a manifest dict; ValueError when it is malformed or from a newer format."""
        if not isinstance(data, dict):
            raise ValueError(f"a manifest is a JSON object, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        optional = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        missing = [name for name in names if name not in data and name not in optional]
        if missing:
            raise ValueError(f"manifest lacks {missing}")
        if data["format_version"] != FORMAT_VERSION:
            raise ValueError(
                f"manifest format_version {data['format_version']!r} is not supported "
                f"(this code reads format {FORMAT_VERSION}); a newer writer made it?"
            )
        for shard in data["shards"]:
            _require_keys("shard", shard, ("index_dir", "ids_file", "count"))
            _check_relative(shard["index_dir"])
            _check_relative(shard["ids_file"])
        for entry in data["files"]:
            _require_keys("file entry", entry, ("path", "bytes", "sha256"))
            _check_relative(entry["path"])
        joint = data.get("joint_index")
        if joint is not None:
            _require_keys("joint_index", joint, ("model", "model_version", "dim"))
            # One joint shard is written as "shard" (the original format), several as "shards".
            joint_shards = joint["shards"] if "shards" in joint else [joint.get("shard")]
            if not joint_shards or len(joint_shards) != len(data["shards"]):
                raise ValueError(
                    f"manifest joint_index has {len(joint_shards)} shard(s) for "
                    f"{len(data['shards'])} index shard(s); it needs one per index shard"
                )
            for shard in joint_shards:
                _require_keys("joint shard", shard, ("index_dir", "ids_file", "count"))
                _check_relative(shard["index_dir"])
                _check_relative(shard["ids_file"])
        return cls(**{name: data[name] for name in names if name in data})

    @property
    def joint_shards(self) -> list[dict[str, Any]]:
        """The joint index's shards (one per index shard, same order), or [] without one."""
        if self.joint_index is None:
            return []
        if "shards" in self.joint_index:
            return list(self.joint_index["shards"])
        return [self.joint_index["shard"]]

    def shard_params(self, shard: dict[str, Any]) -> dict[str, Any]:
        """A shard's ScaNN params: its own entry's, else the manifest's (one-shard manifests)."""
        return shard.get("scann_params") or self.scann_params

    @property
    def shard_rows(self) -> int:
        """Rows over all image shards (what the index holds)."""
        return sum(int(shard["count"]) for shard in self.shards)

    def files_under(self, prefix: str) -> list[dict[str, Any]]:
        """The file entries whose path lies under the folder ``prefix`` (relative to OUT)."""
        folder = prefix.strip("/") + "/"
        return [entry for entry in self.files if entry["path"].startswith(folder)]

    def with_files_under(self, prefix: str, entries: Iterable[dict[str, Any]]) -> IndexManifest:
        """This manifest with ``entries`` as the only files under the folder ``prefix``
        (what a step wrote there; none drops the folder's), sorted by path like all files.
        ValueError for an entry outside ``prefix``."""
        folder = prefix.strip("/") + "/"
        entries = list(entries)
        if any(not entry["path"].startswith(folder) for entry in entries):
            raise ValueError(f"files listed for {folder} lie outside it")
        kept = [entry for entry in self.files if not entry["path"].startswith(folder)]
        files = sorted(kept + entries, key=lambda entry: entry["path"])
        return dataclasses.replace(self, files=files)


def _require_keys(what: str, entry: Any, keys: Iterable[str]) -> None:
    if not isinstance(entry, dict) or any(key not in entry for key in keys):
        raise ValueError(f"manifest {what} {entry!r} needs the keys {list(keys)}")


def _check_relative(path: str) -> None:
    # Paths are joined to OUT by readers: an absolute path or '..' would read outside it.
    if not isinstance(path, str) or not path or path.startswith("/") or "://" in path:
        raise ValueError(f"manifest paths must be relative to the output dir, got {path!r}")
    if ".." in path.split("/"):
        raise ValueError(f"manifest paths must not contain '..', got {path!r}")


def manifest_location(out_dir_or_manifest_path: str) -> tuple[str, str]:
    """``(out_dir, manifest_path)`` for either an output dir or a path to a ``*.json`` manifest."""
    if out_dir_or_manifest_path.endswith(".json"):
        out_dir, _ = FileSystems.split(out_dir_or_manifest_path)
        return out_dir or os.curdir, out_dir_or_manifest_path
    out_dir = out_dir_or_manifest_path.rstrip("/") or "/"
    return out_dir, FileSystems.join(out_dir, MANIFEST_NAME)


def write_manifest(out_dir: str, manifest: IndexManifest) -> str:
    """Publish ``manifest`` as ``out_dir/manifest.json``; returns its path.

    Writes a hidden temp file, then renames it over the final name: on local disk the rename is
    atomic, on gs:// it is a copy of a complete object, so a reader sees the old manifest or
    the new one, never half of one.
    """
    final_path = FileSystems.join(out_dir, MANIFEST_NAME)
    replace_by_rename(out_dir, MANIFEST_NAME, json_bytes(manifest.to_json()))
    logger.info("published manifest %s (version %s)", final_path, manifest.version)
    return final_path


def read_manifest(out_dir_or_manifest_path: str) -> IndexManifest:
    """Read the manifest of an output dir (or at a ``*.json`` path).

    FileNotFoundError when there is none: the index job did not finish, or is still running.
    """
    _, path = manifest_location(out_dir_or_manifest_path)
    if not FileSystems.exists(path):
        raise FileNotFoundError(
            f"no index manifest at {path}: the index job has not finished writing this output"
        )
    return IndexManifest.from_json(read_json(path))


def file_entry(path: str, root: str, data: bytes | None = None) -> dict[str, Any]:
    """The manifest entry ``{"path", "bytes", "sha256"}`` of the file ``path`` under ``root``.

    Pass ``data`` when the caller already holds the file's bytes, to avoid reading it twice.
    """
    if data is None:
        size, sha256 = size_and_sha256(path)
    else:
        size, sha256 = len(data), hashlib.sha256(data).hexdigest()
    return {"path": relative_path(path, root), "bytes": size, "sha256": sha256}


# Files hashed at once by verify_files: hashlib and file reads release the GIL, so a version's
# shards (a few large files each) verify in parallel on every core and, on gs://, overlap
# their reads.
VERIFY_THREADS = 8


def verify_files(out_dir: str, manifest: IndexManifest) -> None:
    """Check every file of the manifest exists under ``out_dir`` with its size and SHA-256.

    Raises ManifestVerificationError naming every missing or changed file (not just the first,
    so one run tells an operator the whole damage), in manifest order.
    """
    from concurrent.futures import ThreadPoolExecutor

    def problem(entry: dict[str, Any]) -> str | None:
        path = join_path(out_dir, entry["path"])
        matched = FileSystems.match([path])[0].metadata_list
        if not matched:
            return f"missing: {entry['path']}"
        # The listed size is free to read; hash only files whose size still matches.
        if matched[0].size_in_bytes != entry["bytes"]:
            return (
                f"size mismatch: {entry['path']} has {matched[0].size_in_bytes} bytes, "
                f"manifest says {entry['bytes']}"
            )
        _, sha256 = size_and_sha256(path)
        if sha256 != entry["sha256"]:
            return f"sha256 mismatch: {entry['path']} is {sha256}, manifest says {entry['sha256']}"
        return None

    workers = max(1, min(VERIFY_THREADS, len(manifest.files)))
    with ThreadPoolExecutor(workers, thread_name_prefix="verify") as pool:
        problems = [p for p in pool.map(problem, manifest.files) if p is not None]
    if problems:
        raise ManifestVerificationError(
            f"index version {manifest.version} under {out_dir} fails verification "
            f"({len(problems)} of {len(manifest.files)} files): " + "; ".join(problems)
        )
    logger.info("verified %d files of index version %s", len(manifest.files), manifest.version)


def split_model_id(model_id: str) -> tuple[str, str]:
    """``name/version`` -> ``(name, version)``; ValueError for anything else."""
    name, sep, version = model_id.partition("/")
    if not (sep and name and version) or "/" in version:
        raise ValueError(f"a joint model id is 'name/version', got {model_id!r}")
    return name, version


def full_build_lineage(version: str, num_rows: int) -> dict[str, Any]:
    """The manifest's ``lineage`` of a full build: the base later updates count changes from."""
    return {"built_from": version, "built_count": int(num_rows), "updates": []}


def lineage_of(manifest: IndexManifest) -> dict[str, Any]:
    """``manifest``'s lineage; a version written before lineages existed counts as a full build."""
    return manifest.lineage or full_build_lineage(
        manifest.version, manifest.counts.get("indexed", 0)
    )
