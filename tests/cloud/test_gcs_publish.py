"""The publish pointer on gs://: a generation-matched write, checked against the emulator.

The emulator (gcp-storage-emulator 2026.7.19) stores generations but does NOT enforce
``ifGenerationMatch`` (probed: a write with a stale generation succeeds), so a real lost race
cannot be produced here. What is tested: the pointer's chain of versions on gs://, that every
write carries the generation that was read (a recording wrapper around the real client call,
which still writes to the emulator), and that GCS's 412 answer becomes PointerConflictError.
"""

from __future__ import annotations

import json

import pytest
from apache_beam.io.filesystems import FileSystems
from google.api_core.exceptions import PreconditionFailed
from google.cloud import storage

from index.publish import PointerConflictError, read_pointer, resolve_index, write_pointer


def _fake_version(root: str, version: str) -> None:
    """A version folder with a manifest (enough for write_pointer's completeness check)."""
    with FileSystems.create(f"{root}/versions/{version}/manifest.json") as handle:
        handle.write(json.dumps({"version": version}).encode())


def _pointer_generation(bucket: str) -> int:
    blob = storage.Client.create_anonymous_client().bucket(bucket).get_blob("root/latest.json")
    return int(blob.generation)


@pytest.fixture()
def recorded_uploads(monkeypatch):
    """Every ``Blob.upload_from_string`` call's kwargs; the real upload still runs."""
    calls = []
    real = storage.Blob.upload_from_string

    def recording(self, data, *args, **kwargs):
        calls.append({"name": self.name, **kwargs})
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(storage.Blob, "upload_from_string", recording)
    return calls


def test_pointer_versions_chain_with_generation_preconditions(gcs_bucket, recorded_uploads):
    root = f"gs://{gcs_bucket}/root"
    for version in ("v1", "v2"):
        _fake_version(root, version)

    first = write_pointer(root, "v1")
    assert (first.version, first.previous) == ("v1", None)
    assert recorded_uploads[-1]["if_generation_match"] == 0  # "only if it does not exist"
    generation_v1 = _pointer_generation(gcs_bucket)

    second = write_pointer(root + "/", "v2")
    assert (second.version, second.previous) == ("v2", "v1")
    assert recorded_uploads[-1]["if_generation_match"] == generation_v1
    assert _pointer_generation(gcs_bucket) != generation_v1

    assert read_pointer(root) == second
    assert resolve_index(root) == (f"{root}/versions/v2", "v2")
    # No temp objects: the gs:// pointer is one object write, not write-then-rename.
    listed = [m.path for m in FileSystems.match([f"{root}/*"])[0].metadata_list]
    assert listed == [f"{root}/latest.json"]


def test_a_lost_race_is_a_clear_error_and_overwrites_nothing(gcs_bucket, monkeypatch):
    root = f"gs://{gcs_bucket}/root"
    for version in ("v1", "v2"):
        _fake_version(root, version)
    write_pointer(root, "v1")

    def rejected(self, data, *args, **kwargs):  # what GCS answers to a stale generation
        raise PreconditionFailed("412 conditionNotMet")

    monkeypatch.setattr(storage.Blob, "upload_from_string", rejected)
    with pytest.raises(PointerConflictError, match="another publisher"):
        write_pointer(root, "v2")
    assert read_pointer(root).version == "v1"


def test_refuses_a_version_without_manifest_on_gs(gcs_bucket):
    with pytest.raises(FileNotFoundError, match=r"no manifest\.json"):
        write_pointer(f"gs://{gcs_bucket}/root", "v9")
