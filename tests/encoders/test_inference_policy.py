"""The inference policy: pure rules for every kind of GPU, and the GPU code path run on CPU.

No GPU is lent to this suite, so the reduced-precision + XLA graph that a GPU worker builds is
built here on CPU (bfloat16 and XLA both run on CPU) and compared with the float32 graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encoders.base import EncoderSpec
from encoders.inference_policy import (
    CPU_POLICY,
    Accelerator,
    InferencePolicy,
    choose_policy,
    chunk_size_for,
    detect_accelerators,
    padded_batch_size,
    precision_for,
)

GIB = 2**30


def _gpu(capability, memory_gib=16):
    return Accelerator("/physical_device:GPU:0", capability, memory_gib * GIB)


@pytest.mark.parametrize(
    ("capability", "precision"),
    [
        (None, "float32"),
        ((6, 1), "float32"),  # P4/P100: no tensor cores
        ((7, 0), "mixed_float16"),  # V100
        ((7, 5), "mixed_float16"),  # T4
        ((8, 0), "mixed_float16"),  # A100 (bfloat16 is never automatic: less exact)
        ((8, 9), "mixed_float16"),  # L4
        ((9, 0), "mixed_float16"),  # H100/H200
    ],
)
def test_precision_follows_the_hardware(capability, precision):
    assert precision_for(capability) == precision


@pytest.mark.parametrize(
    ("memory", "chunk"),
    [(None, 64), (4 * GIB, 64), (16 * GIB, 128), (24 * GIB, 128), (40 * GIB, 256),
     (80 * GIB, 512), (141 * GIB, 512)],
)  # fmt: skip
def test_chunk_size_scales_with_memory_as_a_power_of_two(memory, chunk):
    assert chunk_size_for(memory) == chunk


def test_xla_batches_are_padded_to_few_shapes():
    sizes = {padded_batch_size(n, 128) for n in range(1, 129)}
    assert sizes == {8, 16, 32, 64, 128}
    assert padded_batch_size(1, 128) == 8 and padded_batch_size(9, 128) == 16
    assert padded_batch_size(100, 100) == 100  # a chunk size that is not a power of two
    assert padded_batch_size(3, 4) == 4
    with pytest.raises(ValueError):
        padded_batch_size(0, 128)
    with pytest.raises(ValueError):
        padded_batch_size(129, 128)


def test_cpu_policy_is_the_unchanged_float32_graph():
    assert choose_policy([]) == CPU_POLICY
    assert CPU_POLICY == InferencePolicy("/CPU:0", "float32", jit_compile=False, chunk_size=32)
    assert choose_policy([], precision="float32") == CPU_POLICY
    with pytest.raises(ValueError, match="needs a GPU"):
        choose_policy([], precision="mixed_float16")


def test_gpu_policy_one_model_on_the_first_gpu_with_xla():
    policy = choose_policy([_gpu((7, 5), 16), _gpu((7, 5), 16)])
    assert policy == InferencePolicy("/GPU:0", "mixed_float16", jit_compile=True, chunk_size=128)
    assert policy.on_gpu and not CPU_POLICY.on_gpu
    assert choose_policy([_gpu((8, 0), 40)], precision="float32").precision == "float32"
    with pytest.raises(ValueError, match="precision must be"):
        choose_policy([_gpu((8, 0))], precision="fp8")
    with pytest.raises(ValueError, match="chunk_size"):
        InferencePolicy("/GPU:0", "float32", jit_compile=True, chunk_size=0)


def test_this_machine_has_no_gpu_so_the_cpu_policy_applies():
    # The suite's machines have no GPU; if one ever appears, the assertion below says so
    # rather than silently testing something else.
    accelerators = detect_accelerators()
    if accelerators:
        pytest.skip(f"a GPU is visible ({accelerators[0]}); the CPU-only check does not apply")
    assert choose_policy(accelerators) == CPU_POLICY


@pytest.fixture(scope="module")
def photo_batch(coco_photos: list[Path]) -> np.ndarray:
    def pixels(path):
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize((224, 224), Image.BILINEAR))

    return np.stack([pixels(p) for p in coco_photos[:12]])


@pytest.fixture(scope="module")
def float32_vectors(mobilenet_weights: Path, photo_batch: np.ndarray) -> np.ndarray:
    from encoders.keras_image import KerasImageEncoder

    encoder = KerasImageEncoder(EncoderSpec(weights=str(mobilenet_weights)))
    assert encoder.policy == CPU_POLICY  # what every CPU worker and server builds
    return encoder.encode(photo_batch)


@pytest.mark.slow
def test_xla_float32_matches_the_plain_graph(mobilenet_weights, photo_batch, float32_vectors):
    from encoders.keras_image import KerasImageEncoder

    policy = InferencePolicy("/CPU:0", "float32", jit_compile=True, chunk_size=8)
    encoder = KerasImageEncoder(EncoderSpec(weights=str(mobilenet_weights)), policy)
    vectors = encoder.encode(photo_batch)  # 12 images: a chunk of 8, then 4 padded to 8
    np.testing.assert_allclose(vectors, float32_vectors, atol=2e-5)
    # A lone image (padded with 7 blank ones) gets the same vector as in a full batch.
    np.testing.assert_allclose(encoder.encode(photo_batch[5:6])[0], vectors[5], atol=2e-5)


# The exact policy a T4 worker gets (device "/GPU:0": TensorFlow's soft placement runs it on
# the CPU here, with the same float16 graph and XLA compilation), and forced bfloat16.
T4_POLICY = choose_policy([_gpu((7, 5), 16)])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("policy", "min_cosine"),
    [
        (T4_POLICY, 0.9995),
        (InferencePolicy("/CPU:0", "mixed_bfloat16", jit_compile=True, chunk_size=8), 0.98),
    ],
    ids=["t4-float16-xla", "forced-bfloat16-xla"],
)
def test_the_gpu_graph_reduced_precision_xla_stays_close(
    mobilenet_weights, photo_batch, float32_vectors, policy, min_cosine
):
    from encoders.keras_image import KerasImageEncoder

    assert T4_POLICY.precision == "mixed_float16" and T4_POLICY.jit_compile
    precision = policy.precision
    encoder = KerasImageEncoder(EncoderSpec(weights=str(mobilenet_weights)), policy)
    vectors = encoder.encode(photo_batch)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(vectors * float32_vectors, axis=1)
    assert cosines.min() > min_cosine, cosines
    # ...and it really computed in reduced precision (a silent float32 fallback would match).
    assert np.abs(vectors - float32_vectors).max() > 1e-5
    print(f"{precision}+XLA vs float32: min cosine {cosines.min():.5f}")
    # Nearest neighbours among the photos are the same under both precisions.
    same = np.argsort(-(vectors @ vectors.T), axis=1)[:, 1]
    reference = np.argsort(-(float32_vectors @ float32_vectors.T), axis=1)[:, 1]
    assert (same == reference).mean() >= 0.9
    # The precision policy did not leak into Keras' global state.
    import keras

    assert keras.config.dtype_policy().name == "float32"
