"""encode_overlapped: same vectors as one encode call, in order, errors per item, decode ahead."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from encoders.base import EncoderSpec
from encoders.fake import FakeImageEncoder
from encoders.imaging import ImageRejected, decode_image
from encoders.overlap import encode_overlapped


class _Recording(FakeImageEncoder):
    """The fake encoder, noting how many inputs had been taken when each batch reached it."""

    def __init__(self, spec, taken):
        super().__init__(spec)
        self.taken, self.seen = taken, []

    def encode(self, pixels):
        self.seen.append((len(pixels), self.taken[0]))
        return super().encode(pixels)


@pytest.fixture(scope="module")
def photo_bytes(coco_photos: list[Path]) -> list[bytes]:
    return [path.read_bytes() for path in coco_photos[:11]]


def _decode(data: bytes) -> np.ndarray:
    return decode_image(data, (64, 64))[0]


def test_same_vectors_in_order_with_bad_items_reported(photo_bytes):
    encoder = FakeImageEncoder(EncoderSpec(name="fake", weights="none", image_size=64))
    items = [*photo_bytes[:5], b"not an image", *photo_bytes[5:], b""]
    results = list(encode_overlapped(encoder, items, _decode, batch_size=4, decode_threads=3))

    assert [position for position, _, _ in results] == list(range(len(items)))
    expected = encoder.encode(np.stack([_decode(b) for b in photo_bytes]))
    vectors = [v for _, v, err in results if err is None]
    np.testing.assert_allclose(np.stack(vectors), expected, atol=1e-6)
    errors = {position: err for position, _, err in results if err is not None}
    assert set(errors) == {5, len(items) - 1}
    assert all(isinstance(err, ImageRejected) for err in errors.values())


def test_decoding_runs_ahead_of_the_model(photo_bytes):
    taken = [0]

    def counted():
        for data in photo_bytes * 3:  # 33 items
            taken[0] += 1
            yield data

    encoder = _Recording(EncoderSpec(name="fake", weights="none", image_size=64), taken)
    results = list(encode_overlapped(encoder, counted(), _decode, batch_size=4, decode_threads=2))
    assert len(results) == 33
    assert [size for size, _ in encoder.seen] == [4] * 8 + [1]
    # When the first batch reaches the model, the next two batches are already being decoded
    # (bounded lookahead: never the whole stream).
    assert encoder.seen[0][1] == 4 + 2 * 4


def test_bad_arguments():
    encoder = FakeImageEncoder(EncoderSpec(name="fake", weights="none", image_size=64))
    with pytest.raises(ValueError, match="positive"):
        list(encode_overlapped(encoder, [], _decode, batch_size=0))
    assert list(encode_overlapped(encoder, [], _decode)) == []
