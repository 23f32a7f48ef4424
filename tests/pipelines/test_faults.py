"""Faults mid-run: a killed index job, a model that raises on one image, an interrupted publish,
a corrupt shard. Real DirectRunner, Parquet and ScaNN throughout (``--encoder fake``)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from encoders.base import EncoderSpec
from encoders.fake import FakeImageEncoder
from encoders.imaging import DecodeLimits, decode_image, sha256_hex
from index.manifest import ManifestVerificationError
from index.publish import POINTER_NAME, publish_version, read_pointer, resolve_index
from index.table import parquet_files
from pipelines import index_job
from pipelines.model_handler import ImageEncoderModelHandler
from pipelines.types import (
    STAGE_ENCODE,
    STAGE_FETCH,
    DeadLetter,
    DecodedImage,
    ImageRef,
    UniqueImage,
)
from serving.searcher import ImageSearcher
from storage.fetch import FetchError, FetchLimits
from tests.index_args import fake_index_args

REPO = Path(__file__).resolve().parents[2]
KILL_CORPUS_SIZE = 300  # Flickr8k photos: enough that the job spends seconds writing
MAGENTA = (255, 0, 255)


def _rows(folder: Path):
    return pq.ParquetDataset(parquet_files(str(folder))).read()


# --- a job killed mid-run, then rerun -------------------------------------------------------


@pytest.fixture(scope="module")
def kill_corpus(tmp_path_factory, assets_dir) -> Path:
    """A manifest of real Flickr8k photos (read in place), a copy under another name and junk."""
    photos = sorted((assets_dir / "datasets" / "flickr8k" / "images").glob("*.jpg"))
    if len(photos) < KILL_CORPUS_SIZE:
        pytest.skip("Flickr8k photos missing from the assets folder")
    folder = tmp_path_factory.mktemp("kill_corpus")
    (folder / "copy.jpg").write_bytes(photos[0].read_bytes())
    (folder / "junk.jpg").write_text("not a picture")
    uris = [str(p) for p in photos[:KILL_CORPUS_SIZE]] + ["copy.jpg", "junk.jpg", "gone.jpg"]
    manifest = folder / "corpus.jsonl"
    manifest.write_text("".join(json.dumps({"uri": u}) + "\n" for u in uris))
    return manifest


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, kill_corpus) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    index_job.run(fake_index_args(kill_corpus, out, "fault-1"))
    return out


def _writing_table(out: Path, older: set[str]) -> bool:
    """Whether this run has started writing its table: a name under it no older run left."""
    table = out / "table"
    return table.is_dir() and bool({p.name for p in table.iterdir()} - older)


@pytest.mark.parametrize("previous", [False, True], ids=["empty_out", "out_with_older_run"])
def test_job_killed_mid_run_then_rerun_matches_an_uninterrupted_run(
    previous, kill_corpus, uninterrupted, small_photo_dir, tmp_path
) -> None:
    out = tmp_path / "out"
    if previous:
        # A complete older output in --out: the killed run must not leave its manifest
        # describing a half-replaced table.
        index_job.run(fake_index_args(small_photo_dir, out, "older"))
        assert (out / "manifest.json").exists()
    older = {p.name for p in (out / "table").iterdir()} if previous else set()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    job = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.index_job",
            *fake_index_args(kill_corpus, out, "fault-1"),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not _writing_table(out, older):
            if job.poll() is not None:
                pytest.fail(f"the job ended (rc {job.returncode}) before it wrote its table")
            if time.monotonic() > deadline:
                pytest.fail("the job never started writing its table")
            time.sleep(0.005)
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode == -signal.SIGKILL
    # A killed run never looks complete: the manifest is written last, so nothing serves it.
    assert not (out / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="manifest"):
        ImageSearcher.load(str(out))

    rerun = index_job.run(fake_index_args(kill_corpus, out, "fault-1"))

    assert rerun.counts["inputs"] == KILL_CORPUS_SIZE + 3
    expected = _rows(uninterrupted / "table").sort_by("image_id")
    got = _rows(out / "table").sort_by("image_id")
    assert got.num_rows == KILL_CORPUS_SIZE  # every photo once; the copy is a duplicate
    assert got.equals(expected)
    for folder in ("duplicates", "dead_letters"):
        assert sorted(map(str, _rows(out / folder).to_pylist())) == sorted(
            map(str, _rows(uninterrupted / folder).to_pylist())
        )
    # No leftovers of the killed run (Beam temp folders, stale shards) beside the new output.
    assert sorted(p.name for p in (out / "table").iterdir()) == sorted(
        p.name for p in (uninterrupted / "table").iterdir()
    )
    queries = np.stack(expected["embedding"].to_numpy(zero_copy_only=False)[::25])
    reference = ImageSearcher.load(str(uninterrupted)).search_vectors(queries, k=5)
    assert ImageSearcher.load(str(out)).search_vectors(queries, k=5) == reference


# --- a model that raises on one image -------------------------------------------------------


def _raise_on_magenta(monkeypatch) -> None:
    """Make the fake encoder raise whenever a batch holds an all-magenta image."""
    original = FakeImageEncoder.encode

    def encode(self, pixels):
        if any(np.all(image == MAGENTA) for image in pixels):
            raise RuntimeError("poisoned pixels")
        return original(self, pixels)

    monkeypatch.setattr(FakeImageEncoder, "encode", encode)


def _decoded(name: str, pixels: np.ndarray) -> DecodedImage:
    ref = ImageRef(uri=f"/photos/{name}", image_id=name)
    return DecodedImage(UniqueImage(ref, sha256=name, num_bytes=1), 64, 64, pixels)


def test_model_raising_on_one_image_of_a_batch_dead_letters_only_that_image(monkeypatch) -> None:
    _raise_on_magenta(monkeypatch)
    handler = ImageEncoderModelHandler(EncoderSpec("fake", "none", 64))
    model = handler.load_model()
    rng = np.random.default_rng(0)
    batch = [
        _decoded(f"good-{i}", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for i in range(4)
    ]
    batch.insert(2, _decoded("poison", np.full((64, 64, 3), MAGENTA, np.uint8)))
    batch.append(_decoded("wrong-shape", np.zeros((8, 8, 3), np.uint8)))

    results = list(handler.run_inference(batch, model))

    assert [r.image_id if isinstance(r, DeadLetter) else r["image_id"] for r in results] == [
        image.image.ref.image_id for image in batch
    ]
    letters = {r.image_id: r for r in results if isinstance(r, DeadLetter)}
    assert set(letters) == {"poison", "wrong-shape"}
    assert letters["poison"].stage == STAGE_ENCODE
    assert letters["poison"].reason == "encoder failed: RuntimeError: poisoned pixels"
    good = [r for r in results if not isinstance(r, DeadLetter)]
    unpatched = FakeImageEncoder(EncoderSpec("fake", "none", 64))
    expected = unpatched.encode(
        np.stack([image.pixels for image in batch if "good" in image.image.ref.image_id])
    )
    np.testing.assert_allclose([r["embedding"] for r in good], expected, atol=1e-6)
    # A batch of one poisoned image is a dead letter too, not a failed bundle.
    alone = list(handler.run_inference([batch[2]], model))
    assert isinstance(alone[0], DeadLetter) and "poisoned" in alone[0].reason


def test_index_job_with_a_model_that_raises_on_one_image(
    monkeypatch, small_photo_dir, tmp_path
) -> None:
    _raise_on_magenta(monkeypatch)
    poison = small_photo_dir / "poison.png"
    Image.new("RGB", (120, 90), MAGENTA).save(poison)
    out = tmp_path / "out"

    result = index_job.run(
        fake_index_args(small_photo_dir, out, "fault-1")
    )  # the job itself succeeds

    assert (result.counts["indexed"], result.counts["dead_letters"]) == (6, 1)
    [letter] = _rows(out / "dead_letters").to_pylist()
    assert letter["uri"] == str(poison)
    assert (letter["stage"], letter["reason"]) == (
        "encode",
        "encoder failed: RuntimeError: poisoned pixels",
    )


def test_unexpected_decoder_error_on_one_file_is_a_dead_letter(
    monkeypatch, small_photo_dir, tmp_path
) -> None:
    """A decoder bug hit by one file must not fail the bundle on every retry."""
    from pipelines import transforms

    # The whole job builds its own DecodeImages, out of this test's reach: patch the decoder
    # it picks up when constructed (the DoFn-level test below passes one in instead), and
    # decode in-process, where the patch applies.

    poison = small_photo_dir / "poison.png"
    Image.new("RGB", (120, 90), MAGENTA).save(poison)
    poison_bytes = poison.read_bytes()
    real_decode = transforms.decode_image

    def decode(data, *args, **kwargs):
        if data == poison_bytes:
            raise RuntimeError("decoder bug (injected)")
        return real_decode(data, *args, **kwargs)

    monkeypatch.setattr(transforms, "decode_image", decode)
    out = tmp_path / "out"

    # In-process decoding (--decode_workers 0): a patch cannot reach the decode workers.
    result = index_job.run(
        fake_index_args(small_photo_dir, out, "fault-1", "--decode_workers", "0")
    )

    assert (result.counts["indexed"], result.counts["dead_letters"]) == (6, 1)
    [letter] = _rows(out / "dead_letters").to_pylist()
    assert (letter["uri"], letter["stage"], letter["reason"]) == (
        str(poison),
        "decode",
        "unexpected decode error: RuntimeError: decoder bug (injected)",
    )


def test_injected_decoder_bug_and_failing_reader_are_dead_letters(tmp_path) -> None:
    """The DoFns take their reader and decoder as collaborators: faults are passed in."""
    from pipelines.transforms import DecodeImageFn, HashImageFn

    poison = tmp_path / "poison.png"
    Image.new("RGB", (120, 90), MAGENTA).save(poison)
    poison_bytes = poison.read_bytes()

    def read(uri, limits):
        if uri.endswith("gone.png"):
            raise FetchError("no such file (injected)")
        return poison_bytes if uri == str(poison) else b"edited since hashing"

    def decode(data, *args, **kwargs):
        if data == poison_bytes:
            raise RuntimeError("decoder bug (injected)")
        return decode_image(data, *args, **kwargs)

    limits = (DecodeLimits(), FetchLimits(retries=0))
    hashed = list(HashImageFn(limits[1], read=read).process(ImageRef("/x/gone.png", "gone")))
    assert [out.value for out in hashed] == [
        DeadLetter("/x/gone.png", STAGE_FETCH, "no such file (injected)", "gone")
    ]
    fn = DecodeImageFn((64, 64), *limits, read=read, decode=decode)
    ref = ImageRef(str(poison), "poison")
    [letter] = [out.value for out in fn.process(UniqueImage(ref, sha256_hex(poison_bytes), 1))]
    assert (letter.uri, letter.stage, letter.reason) == (
        str(poison),
        "decode",
        "unexpected decode error: RuntimeError: decoder bug (injected)",
    )
    edited = UniqueImage(ImageRef("/x/edited.png", "edited"), sha256_hex(b"as hashed"), 9)
    [letter] = [out.value for out in fn.process(edited)]
    assert (letter.stage, letter.reason) == (STAGE_FETCH, "content changed while indexing")


# --- publishing interrupted at each step ----------------------------------------------------


@pytest.fixture(scope="module")
def built_version(tmp_path_factory, coco_photos) -> Path:
    corpus = tmp_path_factory.mktemp("pub_corpus")
    for photo in coco_photos[:3]:
        shutil.copy(photo, corpus / photo.name)
    out = tmp_path_factory.mktemp("pub_built") / "out"
    index_job.run(fake_index_args(corpus, out, "built"))
    return out


@pytest.fixture()
def root(tmp_path, built_version) -> Path:
    """A publish root serving v1, with a complete v2 ready to publish."""
    for version in ("v1", "v2"):
        shutil.copytree(built_version, tmp_path / "root" / "versions" / version)
    publish_version(str(tmp_path / "root"), "v1")
    return tmp_path / "root"


def _fail_create(monkeypatch) -> None:
    def create(*args, **kwargs):
        raise OSError("no space left on device (injected)")

    monkeypatch.setattr(FileSystems, "create", create)


def _fail_mid_write(monkeypatch) -> None:
    real_create = FileSystems.create

    class _HalfWritten:
        def __init__(self, handle) -> None:
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.handle.close()

        def write(self, data: bytes) -> None:
            self.handle.write(data[: len(data) // 2])
            raise OSError("connection reset mid-write (injected)")

    monkeypatch.setattr(FileSystems, "create", lambda *a, **k: _HalfWritten(real_create(*a, **k)))


def _fail_rename(monkeypatch) -> None:
    def rename(*args, **kwargs):
        raise OSError("rename failed (injected)")

    monkeypatch.setattr(FileSystems, "rename", rename)


def _interrupt_rename(monkeypatch) -> None:
    def rename(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C, or the scheduler's SIGTERM turned into an exception

    monkeypatch.setattr(FileSystems, "rename", rename)


def _corrupt_new_version(monkeypatch, root: Path) -> None:
    index = root / "versions" / "v2" / "index"
    shard = max((p for p in index.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "fault, raised",
    [
        (_fail_create, OSError),
        (_fail_mid_write, OSError),
        (_fail_rename, OSError),
        (_interrupt_rename, KeyboardInterrupt),
        (_corrupt_new_version, ManifestVerificationError),
    ],
    ids=["create", "write", "rename", "interrupt", "verify"],
)
def test_interrupted_publish_leaves_the_old_version_serving(root, monkeypatch, fault, raised):
    pointer_bytes = (root / POINTER_NAME).read_bytes()
    if fault is _corrupt_new_version:
        fault(monkeypatch, root)
    else:
        fault(monkeypatch)

    with pytest.raises(raised):
        publish_version(str(root), "v2")

    monkeypatch.undo()
    assert (root / POINTER_NAME).read_bytes() == pointer_bytes
    assert sorted(p.name for p in root.iterdir()) == [POINTER_NAME, "versions"]  # no temp file
    index_dir, version = resolve_index(str(root))
    assert version == "v1"
    assert len(ImageSearcher.load(index_dir)) > 0
    if fault is not _corrupt_new_version:  # once the fault is gone, the same publish works
        assert publish_version(str(root), "v2").previous == "v1"
        assert read_pointer(str(root)).version == "v2"


def test_publisher_killed_after_writing_its_temp_pointer(root) -> None:
    """SIGKILL between the temp write and the rename leaves a temp file, which nothing reads."""
    (root / f".{POINTER_NAME}.tmp-deadbeef").write_bytes(b'{"version": "v2", "pa')
    assert resolve_index(str(root))[1] == "v1"
    assert publish_version(str(root), "v2").version == "v2"
    assert resolve_index(str(root))[1] == "v2"


# --- a corrupt shard ------------------------------------------------------------------------


def test_corrupt_index_shard_is_refused_at_load(root) -> None:
    index_dir, _ = resolve_index(str(root))
    shard_files = sorted(p for p in (Path(index_dir) / "index").rglob("*") if p.is_file())
    assert shard_files
    for target in shard_files:
        original = target.read_bytes()
        damaged = bytearray(original)
        damaged[len(damaged) // 2] ^= 0x01  # one bit, same size: only the checksum can tell
        target.write_bytes(bytes(damaged))
        relative = target.relative_to(index_dir).as_posix()
        with pytest.raises(ManifestVerificationError, match="sha256 mismatch: " + relative):
            ImageSearcher.load(index_dir)
        target.write_bytes(original)
    assert len(ImageSearcher.load(index_dir)) > 0
