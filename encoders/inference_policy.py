"""How an image encoder runs on the hardware it finds: device, precision, XLA, batch size.

Pure logic over a description of the accelerators (``Accelerator``), so every rule is tested on
a CPU-only machine; ``detect_accelerators`` is the only part that asks TensorFlow. The encoder
asks once per process (``load_model`` on a Beam worker, startup in serving).

The rules, and why:

* No GPU: float32, no XLA, 32-image chunks. Exactly the graph the CPU path always ran, so CPU
  vectors do not move.
* A GPU: one model on ``/GPU:0`` per process. Dataflow GPU workers run one SDK process per VM
  (``no_use_multiple_sdk_containers``), so this is one model per GPU; several processes each
  loading a model would each reserve GPU memory and fight over the same device.
* Mixed float16 only where the hardware has tensor cores for it (compute capability >= 7.0:
  V100, T4, A100, L4, H100) and where it is safe: MobileNetV2's ReLU6 bounds its activations
  far inside float16's range, and measured on real photos float16 moves an embedding by a
  cosine of 5e-5 at most, while bfloat16 (7-bit mantissa) moves it by 1e-2, enough to reorder
  near neighbours; so bfloat16 is never chosen automatically (it can be forced). Older GPUs
  stay float32. The uint8 -> float preprocessing and the L2 normalisation always run in
  float32: the stored vector is float32 and unit length whatever the backbone computed in.
* XLA (``jit_compile``) on GPU: it fuses each depthwise conv + batch norm + ReLU6 into one
  kernel, which is where MobileNetV2 spends its launches. Off on CPU: oneDNN's kernels are
  already fused there, and compiling costs seconds per new batch shape.
* Chunk size scales with GPU memory (64 images per 8 GiB, capped at 512): large enough to keep
  the GPU busy, small enough that activations of a float32 fallback still fit.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess

logger = logging.getLogger(__name__)

CPU_CHUNK = 32
MAX_GPU_CHUNK = 512
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass(frozen=True)
class Accelerator:
    """One GPU as TensorFlow describes it."""

    name: str  # TensorFlow's device name, e.g. "/physical_device:GPU:0"
    compute_capability: tuple[int, int] | None  # (major, minor); None when unknown
    memory_bytes: int | None = None


@dataclasses.dataclass(frozen=True)
class InferencePolicy:
    """Where and how the encoder's graph runs."""

    device: str  # "/CPU:0" or "/GPU:0"
    precision: str  # one of PRECISIONS: the backbone's compute dtype policy
    jit_compile: bool
    chunk_size: int  # images per model call

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {self.chunk_size}")

    @property
    def on_gpu(self) -> bool:
        return "GPU" in self.device.upper()

    def describe(self) -> str:
        xla = "XLA" if self.jit_compile else "no XLA"
        return f"{self.device} {self.precision} {xla}, {self.chunk_size}-image chunks"


CPU_POLICY = InferencePolicy(device="/CPU:0", precision="float32", jit_compile=False,
                             chunk_size=CPU_CHUNK)  # fmt: skip


def precision_for(compute_capability: tuple[int, int] | None) -> str:
    """The mixed-precision policy a GPU of this compute capability runs safely and fast."""
    if compute_capability is None:
        return "float32"  # unknown hardware: correctness first
    if compute_capability >= (7, 0):
        return "mixed_float16"
    return "float32"


def chunk_size_for(memory_bytes: int | None) -> int:
    """Images per model call on a GPU with this much memory (64 per 8 GiB, 64..512)."""
    if not memory_bytes:
        return 64
    per_8gib = memory_bytes // (8 * 2**30)
    chunk = 64 * max(1, per_8gib)
    # A power of two: XLA compiles one program per batch shape, so few distinct shapes.
    power = 1 << (chunk.bit_length() - 1)
    return min(MAX_GPU_CHUNK, power)


MIN_BUCKET = 8


def padded_batch_size(count: int, chunk_size: int) -> int:
    """The batch size ``count`` images are padded to under XLA: a power of two, 8..chunk_size.

    At most log2(chunk_size / 8) + 2 distinct shapes ever reach the compiler, whatever batch
    sizes the pipeline produces.
    """
    if count < 1 or count > chunk_size:
        raise ValueError(f"need 1 <= count <= chunk_size, got {count} and {chunk_size}")
    bucket = max(MIN_BUCKET, 1 << (count - 1).bit_length())
    return min(bucket, chunk_size)


def choose_policy(accelerators: list[Accelerator], precision: str = "auto") -> InferencePolicy:
    """The policy for a process that sees ``accelerators``.

    ``precision`` is ``"auto"`` (the rules above) or one of PRECISIONS to force it (e.g.
    ``"float32"`` on a GPU to reproduce CPU vectors bit for bit as far as the kernels allow).
    """
    if precision != "auto" and precision not in PRECISIONS:
        raise ValueError(f"precision must be 'auto' or one of {PRECISIONS}, got {precision!r}")
    if not accelerators:
        if precision not in ("auto", "float32"):
            # Forcing float16 onto a CPU would be slower and less exact: refuse, do not guess.
            raise ValueError(f"precision {precision!r} needs a GPU; this process sees none")
        return CPU_POLICY
    gpu = accelerators[0]  # one model per process, on the first visible GPU
    return InferencePolicy(
        device="/GPU:0",
        precision=precision_for(gpu.compute_capability) if precision == "auto" else precision,
        jit_compile=True,
        chunk_size=chunk_size_for(gpu.memory_bytes),
    )


def gpu_memory_bytes(index: int = 0) -> int | None:
    """Total memory of GPU ``index`` from ``nvidia-smi`` (TensorFlow does not report it), or None.

    The worker image is CUDA-based, so ``nvidia-smi`` is there wherever a GPU is; anywhere else
    this is None and the chunk size falls back to a conservative 64.
    """
    try:
        answer = subprocess.run(
            ["nvidia-smi", f"--id={index}", "--query-gpu=memory.total",
             "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        return int(answer.stdout.strip().splitlines()[0]) * 2**20  # MiB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def detect_accelerators() -> list[Accelerator]:
    """The GPUs TensorFlow sees in this process (imports TensorFlow).

    Also turns on memory growth, so the process takes GPU memory as the model needs it instead
    of all of it up front (a serving process and a batch job may share a GPU in development).
    """
    import tensorflow as tf

    found = []
    for index, device in enumerate(tf.config.list_physical_devices("GPU")):
        try:
            tf.config.experimental.set_memory_growth(device, True)
        except RuntimeError:  # the GPU is already initialised; growth can no longer change
            pass
        details = tf.config.experimental.get_device_details(device)
        found.append(
            Accelerator(
                name=device.name,
                compute_capability=details.get("compute_capability"),
                memory_bytes=gpu_memory_bytes(index),
            )
        )
    return found
