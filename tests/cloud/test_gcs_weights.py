"""Encoder weights read from gs:// (what Dataflow workers and serving replicas do)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from google.cloud import storage

from encoders.keras_backbones import fetch_remote_weights, resolve_weights


def _upload(bucket: str, name: str, source: Path) -> str:
    blob = storage.Client.create_anonymous_client().bucket(bucket).blob(f"models/{name}")
    blob.upload_from_filename(str(source))
    return f"gs://{bucket}/models/{name}"


def test_gs_weights_resolve_to_the_same_version_as_the_local_file(gcs_bucket, mobilenet_weights):
    uri = _upload(gcs_bucket, mobilenet_weights.name, mobilenet_weights)
    remote = resolve_weights("mobilenet_v2", uri)
    local = resolve_weights("mobilenet_v2", str(mobilenet_weights))
    assert remote.tag == local.tag  # the sha256 of the bytes, wherever they came from
    copy = Path(remote.keras_weights)
    assert copy.read_bytes() == mobilenet_weights.read_bytes()

    # A second resolve reuses the local copy instead of fetching again.
    before = copy.stat().st_mtime_ns
    assert fetch_remote_weights(uri) == copy and copy.stat().st_mtime_ns == before
    assert not [p for p in os.listdir(copy.parent) if p.startswith(".")]  # no partial files


def test_gs_weights_errors_are_clear(gcs_bucket, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_weights("mobilenet_v2", f"gs://{gcs_bucket}/models/missing.weights.h5")
    wrong = tmp_path / "model.h5"
    wrong.write_bytes(b"not weights")
    uri = _upload(gcs_bucket, "model.h5", wrong)
    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        resolve_weights("mobilenet_v2", uri)
