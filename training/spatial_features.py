"""Spatial CNN feature maps of a dataset's images, computed once and cached on disk.

The captioner trains on the image encoder's last spatial map (MobileNetV2: 7 x 7 x 1280 per
image), not on the pooled vector the embedding table holds, so it needs its own pass over the
pixels. Images are decoded exactly as the index job decodes them (``encoders.imaging``) and
encoded by the same ``KerasImageEncoder`` graph (``encode_with_features``), so the captioner sees
at training what the pipeline gives it when indexing.

Stored float16 in an ``.npy`` (Flickr8k train: 6,091 x 49 x 1280 x 2 bytes = 760 MB), read
back memory-mapped; the file name carries a digest of the encoder and the image list, so another
encoder or split never reuses a stale cache.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from encoders.base import EncoderSpec
from encoders.imaging import ImageRejected, decode_image
from storage.fetch import FetchError, read_bytes

logger = logging.getLogger(__name__)

BATCH = 32


def cache_path(cache_dir: str | Path, spec: EncoderSpec, images: Sequence[tuple[str, str]]) -> Path:
    digest = hashlib.sha256(str(spec).encode())
    for name, uri in images:
        digest.update(f"{name}\t{uri}\n".encode())
    return Path(cache_dir) / f"spatial-{spec.name}-{len(images)}-{digest.hexdigest()[:12]}.npy"


def spatial_features(
    images: Sequence[tuple[str, str]], spec: EncoderSpec, cache_dir: str | Path
) -> tuple[np.ndarray, str]:
    """``(N, h * w, C)`` float16 maps of ``images`` (``(name, uri)`` pairs) and the encoder id.

    Reuses the cache file when it exists; a partial file (interrupted run) is never reused:
    the maps are written to a temporary name and renamed when complete. An image that cannot
    be decoded fails the run naming it (a training set with silently missing images would
    misalign captions and features).
    """
    from encoders.keras_image import KerasImageEncoder
    from encoders.registry import image_encoder_id

    path = cache_path(cache_dir, spec, images)
    if path.is_file():
        # A cache hit needs only the encoder's id, not the model (TensorFlow graph + weights).
        logger.info("reusing spatial features %s", path)
        return np.load(path, mmap_mode="r"), image_encoder_id(spec)
    encoder = KerasImageEncoder(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = (spec.image_size, spec.image_size)
    started = time.perf_counter()
    out = None
    temp = path.with_suffix(".partial.npy")
    for start in range(0, len(images), BATCH):
        chunk = images[start : start + BATCH]
        pixels = []
        for name, uri in chunk:
            try:
                pixels.append(decode_image(read_bytes(uri), size)[0])
            except (FetchError, ImageRejected) as error:
                raise ValueError(f"cannot read image {name} ({uri}): {error}") from error
        _, _, spatial = encoder.encode_with_features(np.stack(pixels))
        spatial = spatial.reshape(len(chunk), -1, spatial.shape[-1]).astype(np.float16)
        if out is None:
            out = np.lib.format.open_memmap(
                temp, mode="w+", dtype=np.float16, shape=(len(images), *spatial.shape[1:])
            )
        out[start : start + len(chunk)] = spatial
        if (start // BATCH) % 20 == 0:
            done = start + len(chunk)
            rate = done / (time.perf_counter() - started)
            logger.info("spatial features: %d / %d images (%.1f/s)", done, len(images), rate)
    if out is None:
        raise ValueError("no images to compute spatial features for")
    out.flush()
    del out
    temp.rename(path)
    return np.load(path, mmap_mode="r"), encoder.encoder_id
