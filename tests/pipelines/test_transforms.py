"""The index job's composites on a real runner, with real photos and the fake encoder."""

from __future__ import annotations

import shutil
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from encoders.base import EncoderSpec
from encoders.imaging import DecodeLimits
from pipelines.index_job import IndexImages
from pipelines.options import IndexConfig
from pipelines.transforms import choose_unique
from pipelines.types import (
    STAGE_DECODE,
    STAGE_FETCH,
    DuplicateRecord,
    HashedImage,
    ImageRef,
    image_id_for_uri,
)
from storage.fetch import FetchLimits


def _ref(path: Path) -> ImageRef:
    return ImageRef(str(path), image_id_for_uri(str(path)))


def test_choose_unique_keeps_the_smallest_uri_whatever_the_order():
    copies = [HashedImage(ImageRef(uri, uri.upper()), "h", 10) for uri in ("c", "a", "b")]
    for order in (copies, copies[::-1]):
        unique, duplicates = choose_unique("h", order)
        assert unique.ref.uri == "a"
        assert unique.duplicate_uris == ("b", "c")
        assert duplicates == [
            DuplicateRecord("b", "B", "h", "a", "A"),
            DuplicateRecord("c", "C", "h", "a", "A"),
        ]


@pytest.fixture()
def mixed_corpus(small_photo_dir: Path) -> dict[str, list[Path]]:
    """Six real photos, a byte-identical copy of one, and broken files of several kinds."""
    photos = sorted(small_photo_dir.glob("*.jpg"))
    copy = small_photo_dir / "copy_of_first.jpg"
    shutil.copy(photos[0], copy)
    broken = small_photo_dir / "broken"
    broken.mkdir()
    (broken / "empty1.jpg").write_bytes(b"")
    (broken / "empty2.jpg").write_bytes(b"")
    (broken / "notes.jpg").write_text("this is not an image")
    (broken / "truncated.jpg").write_bytes(photos[1].read_bytes()[:3000])
    return {
        "photos": photos,
        "copy": [copy],
        "broken": sorted(broken.iterdir()),
        "missing": [small_photo_dir / "gone.jpg"],
    }


def test_index_images_accounts_for_every_input(mixed_corpus, tmp_path):
    config = IndexConfig(
        corpus="unused",
        out=str(tmp_path / "out"),
        corpus_format="files",
        encoder=EncoderSpec(name="fake", weights="none", image_size=64),
        decode_limits=DecodeLimits(),
        fetch_limits=FetchLimits(retries=0),
        batch_size=4,
    )
    photos, copy = mixed_corpus["photos"], mixed_corpus["copy"][0]
    inputs = [_ref(p) for group in mixed_corpus.values() for p in group]
    first = min([photos[0], copy], key=str)  # the kept copy is the smaller uri
    other = copy if first == photos[0] else photos[0]
    indexed = sorted([first, *photos[1:]], key=str)

    with TestPipeline() as p:
        out = p | beam.Create(inputs) | IndexImages(config)
        assert_that(
            out["rows"]
            | "Ids" >> beam.Map(lambda r: (r["uri"], r["image_id"], len(r["embedding"]))),
            equal_to([(str(x), image_id_for_uri(str(x)), 64) for x in indexed]),
            label="rows",
        )
        assert_that(
            out["duplicates"] | "DupUris" >> beam.Map(lambda d: (d.uri, d.kept_uri)),
            equal_to([(str(other), str(first))]),
            label="duplicates",
        )
        broken = mixed_corpus["broken"]
        assert_that(
            out["dead_letters"] | "DeadUris" >> beam.Map(lambda d: (Path(d.uri).name, d.stage)),
            equal_to([(b.name, STAGE_DECODE) for b in broken] + [("gone.jpg", STAGE_FETCH)]),
            label="dead_letters",
        )
        assert_that(
            out["dead_letters"] | "Reasons" >> beam.Map(lambda d: d.reason != ""),
            equal_to([True] * 5),
            label="reasons",
        )


def test_decoding_ahead_emits_in_arrival_order_and_counts_like_in_turn(small_photo_dir):
    """DecodeImageFn reads and decodes on its threads ahead of what it emits (the encoder
    downstream runs meanwhile): on a real runner the outputs, their order and the rejected
    count equal decoding each image in turn; driven directly, a slow first image does not hold
    up the reads behind it, and the outputs still come in arrival order."""
    import threading
    import time

    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils.timestamp import MIN_TIMESTAMP

    from encoders.imaging import decode_image, sha256_hex
    from pipelines.transforms import DEAD_LETTERS, DecodeImageFn
    from pipelines.types import UniqueImage

    photos = sorted(small_photo_dir.glob("*.jpg"))
    data = {str(p): p.read_bytes() for p in photos}
    data["/x/not-an-image.jpg"] = b"this is not an image"
    images = [UniqueImage(_ref(Path(uri)), sha256_hex(b), len(b)) for uri, b in data.items()]
    read = lambda uri, limits: data[uri]  # noqa: E731

    def run(lookahead: int) -> int:
        fn = DecodeImageFn((32, 32), DecodeLimits(), FetchLimits(retries=0), read=read,
                           decode=decode_image, lookahead=lookahead)  # fmt: skip
        with TestPipeline() as p:
            out = (
                p
                | beam.Create([images])  # one element, so one bundle in the list's order
                | beam.FlatMap(lambda batch: batch)
                | beam.ParDo(fn).with_outputs(DEAD_LETTERS, main="decoded")
            )
            seen = out.decoded | beam.Map(lambda d: d.image.ref.uri) | beam.combiners.ToList()
            letters = out[DEAD_LETTERS] | beam.Map(lambda d: (d.uri, d.stage))
            assert_that(seen, equal_to([[str(p) for p in photos]]), label="order")
            assert_that(letters, equal_to([("/x/not-an-image.jpg", "decode")]), label="dead")
            result = p.run()
        counters = result.metrics().query(MetricsFilter().with_name("decode_rejected"))
        return sum(c.committed for c in counters["counters"])

    assert run(lookahead=0) == 1
    assert run(lookahead=4) == 1

    read_at: dict[str, float] = {}
    lock = threading.Lock()

    def slow_first(uri, limits):
        with lock:
            read_at[uri] = time.monotonic()
        if uri == str(photos[0]):
            time.sleep(0.5)
        return data[uri]

    fn = DecodeImageFn((32, 32), DecodeLimits(), FetchLimits(retries=0), read=slow_first,
                       decode=decode_image, lookahead=len(images))  # fmt: skip
    fn.setup()
    fn.start_bundle()
    start = time.monotonic()
    where = dict(window=GlobalWindow(), timestamp=MIN_TIMESTAMP)  # what the runner passes
    outputs = [out for image in images for out in fn.process(image, **where)]
    outputs += list(fn.finish_bundle())
    fn.teardown()
    assert max(read_at.values()) - start < 0.4  # every read began while the first one slept
    emitted = []
    for out in outputs:  # WindowedValue(DecodedImage) or TaggedOutput(WindowedValue(DeadLetter))
        if isinstance(out, beam.pvalue.TaggedOutput):
            emitted.append(out.value.value.uri)
        else:
            emitted.append(out.value.image.ref.uri)
    assert emitted == list(data)
    with pytest.raises(ValueError, match="lookahead"):
        DecodeImageFn((32, 32), DecodeLimits(), FetchLimits(), lookahead=-1)
