"""Every storage client the project relies on honours the emulator through its supported knob.

Beam's FileSystems (what every product read and write goes through), gcsfs and pyarrow's native
GCS filesystem each write an object the others then read, so a client that silently talked to
real GCS (or to a local path) would fail here.
"""

from __future__ import annotations

from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems


def _gcsfs():
    # gcsfs.GCSFileSystem is the "extended" class by default, which first asks the gRPC Storage
    # Control API for the bucket layout (HNS/zonal); the emulator speaks only JSON-over-HTTP, so
    # that probe times out. The base class (or GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false) is the
    # supported configuration for plain buckets.
    import gcsfs.core

    return gcsfs.core.GCSFileSystem(token="anon", skip_instance_cache=True)


def _pyarrow_gcs(endpoint: str) -> pafs.GcsFileSystem:
    parsed = urlparse(endpoint)
    return pafs.GcsFileSystem(anonymous=True, endpoint_override=parsed.netloc, scheme=parsed.scheme)


def test_beam_filesystems_round_trip_on_the_emulator(gcs_bucket: str) -> None:
    path = f"gs://{gcs_bucket}/beam/hello.txt"
    with FileSystems.create(path) as handle:
        handle.write(b"written by beam")
    assert FileSystems.exists(path)
    listed = [m.path for m in FileSystems.match([f"gs://{gcs_bucket}/beam/*"])[0].metadata_list]
    assert listed == [path]
    FileSystems.rename([path], [f"gs://{gcs_bucket}/beam/renamed.txt"])
    assert not FileSystems.exists(path)
    with FileSystems.open(f"gs://{gcs_bucket}/beam/renamed.txt", "application/octet-stream",
                          compression_type="uncompressed") as handle:  # fmt: skip
        assert handle.read() == b"written by beam"


def test_gcsfs_and_pyarrow_read_what_beam_wrote_and_back(gcs_emulator: str, gcs_bucket: str):
    table = pa.table({"image_id": ["a", "b"], "score": [0.5, 0.25]})
    beam_path = f"gs://{gcs_bucket}/mixed/beam.parquet"
    with FileSystems.create(beam_path) as handle:
        pq.write_table(table, handle)

    fs = _gcsfs()
    assert fs.ls(f"{gcs_bucket}/mixed") == [f"{gcs_bucket}/mixed/beam.parquet"]
    with fs.open(f"{gcs_bucket}/mixed/beam.parquet", "rb") as handle:
        assert pq.read_table(handle).equals(table)

    arrow = _pyarrow_gcs(gcs_emulator)
    assert pq.read_table(f"{gcs_bucket}/mixed/beam.parquet", filesystem=arrow).equals(table)
    pq.write_table(table, f"{gcs_bucket}/mixed/arrow.parquet", filesystem=arrow)
    with FileSystems.open(f"gs://{gcs_bucket}/mixed/arrow.parquet",
                          compression_type="uncompressed") as handle:  # fmt: skip
        assert pq.read_table(handle).equals(table)
    fs.pipe(f"{gcs_bucket}/mixed/gcsfs.txt", b"written by gcsfs")

    with FileSystems.open(f"gs://{gcs_bucket}/mixed/gcsfs.txt",
                          compression_type="uncompressed") as handle:  # fmt: skip
        assert handle.read() == b"written by gcsfs"
    names = sorted(
        m.path for m in FileSystems.match([f"gs://{gcs_bucket}/mixed/*"])[0].metadata_list
    )
    assert names == [f"gs://{gcs_bucket}/mixed/{n}" for n in ("arrow.parquet", "beam.parquet",
                                                                "gcsfs.txt")]  # fmt: skip
