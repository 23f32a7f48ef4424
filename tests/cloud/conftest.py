"""The GCS emulator (``gcp-storage-emulator``) on loopback, for the gs:// tests.

One emulator process per test session (in-memory storage, a free port on 127.0.0.1); every test
gets its own fresh bucket, so tests never see each other's objects. The product code is pointed
at it only through the clients' own supported configuration, never through an emulator branch:

* ``STORAGE_EMULATOR_HOST``: google-cloud-storage (what Beam's GCS filesystem and the publish
  pointer use) and gcsfs send every request there.
* ``NO_GCE_CHECK=True``: google-auth's knob to skip probing the GCE metadata server. Without
  credentials Beam retries Application Default Credentials with exponential backoff (~25 s,
  once per process), then connects anonymously, which is what the emulator accepts. The
  fixture records that outcome (no credentials) in Beam's per-process credentials cache up
  front, so the suite does not sleep through the retries; the clients still run unchanged.
* pyarrow's ``GcsFileSystem`` takes the endpoint as ``endpoint_override`` + ``scheme``.

The emulator logs every request line to a file (``gcs_request_log``), so a test can count the
object reads a job made (``object_gets``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(endpoint: str, process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gcp-storage-emulator exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{endpoint}/storage/v1/b", timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise RuntimeError(f"gcp-storage-emulator did not answer on {endpoint} in {timeout_s}s")


def _skip_beam_credential_retries(patch: pytest.MonkeyPatch) -> None:
    """Seed Beam's credentials cache with None, what its ADC lookup returns here after retries.

    A private Beam detail: if it moves, the tests still pass, just ~25 s slower.
    """
    try:
        from apache_beam.internal.gcp.auth import _Credentials
    except ImportError:
        return
    if hasattr(_Credentials, "_credentials_init") and hasattr(_Credentials, "_credentials"):
        patch.setattr(_Credentials, "_credentials", None)
        patch.setattr(_Credentials, "_credentials_init", True)


@pytest.fixture(scope="session")
def gcs_request_log(tmp_path_factory) -> Path:
    """The file the emulator writes its log to, a line per request among others."""
    return tmp_path_factory.mktemp("gcs-emulator") / "requests.log"


def object_gets(log: Path, bucket: str, prefix: str, since: int = 0) -> list[str]:
    """Request lines after byte ``since`` of the log that GET an object under
    ``gs://bucket/prefix`` (its bytes or its metadata; listings are not object GETs)."""
    with log.open("rb") as handle:
        handle.seek(since)
        lines = handle.read().decode("utf-8", "replace").splitlines()
    name = "/o/" + urllib.parse.quote(prefix.strip("/") + "/", safe="")
    return [line for line in lines if '"GET ' in line and f"/b/{bucket}" in line and name in line]


@pytest.fixture(scope="session")
def gcs_emulator(gcs_request_log: Path) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a running emulator; the process ends with the session."""
    port = _free_port()
    log = gcs_request_log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
         "--port", str(port), "--in-memory"],
        stdout=log,
        stderr=log,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(endpoint, process)
        # Set for the whole session (not per test): Beam caches its credentials lookup per
        # process, and DirectRunner workers must inherit the same endpoint.
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("STORAGE_EMULATOR_HOST", endpoint)
            patch.setenv("NO_GCE_CHECK", "True")
            _skip_beam_credential_retries(patch)
            yield endpoint
    finally:
        log.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture()
def gcs_bucket(gcs_emulator: str) -> str:
    """A new empty bucket on the emulator; its name (use it as ``gs://<name>/...``)."""
    from google.cloud import storage

    name = f"imgsearch-test-{uuid.uuid4().hex[:12]}"
    storage.Client.create_anonymous_client().create_bucket(name)
    return name


def upload_folder(local_dir: str | os.PathLike, bucket: str, prefix: str) -> list[str]:
    """Upload a local folder's files (not recursive) to ``gs://bucket/prefix/``; their URIs."""
    from google.cloud import storage

    client = storage.Client.create_anonymous_client()
    uris = []
    for entry in sorted(os.scandir(local_dir), key=lambda e: e.name):
        if entry.is_file():
            client.bucket(bucket).blob(f"{prefix}/{entry.name}").upload_from_filename(entry.path)
            uris.append(f"gs://{bucket}/{prefix}/{entry.name}")
    return uris
