"""``decode_image`` (and ``thumbnail_jpeg``) in worker processes that can be stopped: a memory cap
and a deadline per file.

A header can only estimate what decoding will cost (``DecodeLimits.max_decode_bytes``): a
progressive JPEG that repeats its scans thousands of times is small, its header honest, and it
still takes tens of seconds of CPU; a plugin may allocate more than any table predicts. So the
decode runs in a small set of long-lived worker processes (``python -m encoders.decode_pool``),
each with an address-space limit, and the caller waits at most ``timeout_s`` for its answer. A
worker that runs over its time is killed and replaced; one that dies (out of memory, a crash in
a native decoder) is replaced; either way the file is an ``ImageRejected`` with the reason, and
the caller's process never held the pixels.

The workers import only this module, ``encoders.imaging``, Pillow and NumPy (not TensorFlow),
start in a fraction of a second and are reused, so a decode costs one pipe round trip of the
file's bytes in and the model-sized pixels out.

``GuardedDecoder`` is what callers hold: picklable (a Beam DoFn carries it to its workers) and
sharing one pool per budget per process, started on first use. The search server sets
``wait_s``, so a request that finds every worker busy gets ``DecodeBusy`` (answered 429 with
``Retry-After``) instead of queueing without bound; the index job waits.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import logging
import os
import pickle
import queue
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from encoders.imaging import DecodeLimits, ImageRejected, decode_image, thumbnail_jpeg

logger = logging.getLogger(__name__)

_FRAME = struct.Struct("<Q")  # every message: its pickled length, then the pickle

# How long a new worker may take to import and warm up before its first file: its start-up is
# not charged to that file's deadline (on a loaded machine it can take seconds).
_START_TIMEOUT_S = 120.0

# The project root, so ``python -m encoders.decode_pool`` finds the package from any cwd.
_ROOT = str(Path(__file__).resolve().parents[1])


@dataclasses.dataclass(frozen=True)
class DecodeBudget:
    """How many decodes run at once, and what each may take.

    ``memory_bytes`` is each worker's address-space allowance on top of what it holds idle
    (Linux; elsewhere only the header estimate applies). ``wait_s`` is how long a caller waits
    for a free worker before ``DecodeBusy``; None waits as long as it takes (batch jobs).
    """

    workers: int = 2
    memory_bytes: int = 768 * 2**20
    timeout_s: float = 5.0
    wait_s: float | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"decode workers must be >= 1, got {self.workers}")
        if self.memory_bytes < 64 * 2**20:
            raise ValueError(f"decode memory must be >= 64 MiB, got {self.memory_bytes}")
        if self.timeout_s <= 0:
            raise ValueError(f"decode timeout must be positive, got {self.timeout_s}")
        if self.wait_s is not None and self.wait_s < 0:
            raise ValueError(f"decode wait must be >= 0, got {self.wait_s}")


class DecodeBusy(Exception):
    """Every decode worker stayed busy for the caller's whole wait; try again later."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"every image decoder is busy; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class _Worker:
    """One worker process and its pipes; used by one caller at a time."""

    def __init__(self, memory_bytes: int) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")])),
            # One thread: the worker decodes one file at a time, and BLAS thread pools would
            # reserve address space the memory limit is meant for.
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "encoders.decode_pool", str(memory_bytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=_ROOT,
        )
        for pipe in (self.process.stdin, self.process.stdout):
            _widen(pipe)
        self.ready = False

    def _receive(self, deadline: float) -> Any:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        (length,) = _FRAME.unpack(_read_exact(fd, _FRAME.size, deadline))
        return pickle.loads(_read_exact(fd, length, deadline))

    def call(self, request: tuple, timeout_s: float) -> Any:
        """Send one request and wait for its answer; TimeoutError, or EOFError if it died."""
        assert self.process.stdin is not None and self.process.stdout is not None
        if not self.ready:  # the worker says when it has started: then the deadline runs
            try:
                self._receive(time.monotonic() + _START_TIMEOUT_S)
            except TimeoutError:
                raise RuntimeError("a decode worker did not start") from None
            self.ready = True
        payload = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.process.stdin.write(_FRAME.pack(len(payload)) + payload)
            self.process.stdin.flush()
        except BrokenPipeError:
            raise EOFError("decode worker is gone") from None
        return self._receive(time.monotonic() + timeout_s)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


# A pipe holds 64 KiB by default, so a 224 px answer (150 KB of pixels) crossed in three or
# more writes, each waking the reader through select: measured on 2 cores, the pipes cost about
# as much per image as decoding it. With room for a whole answer (Linux allows 1 MiB without
# privileges), a frame crosses in one write.
PIPE_BYTES = 1 << 20


def _widen(pipe: Any) -> None:
    """Give ``pipe`` room for ``PIPE_BYTES`` where the OS lets us (Linux); else leave it."""
    try:
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (AttributeError, OSError):  # not Linux, or above /proc/sys/fs/pipe-max-size
        pass


def _read_exact(fd: int, size: int, deadline: float) -> bytes:
    chunks, got = [], 0
    while got < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            raise TimeoutError
        chunk = os.read(fd, min(size - got, 1 << 20))
        if not chunk:
            raise EOFError("decode worker closed its pipe")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class DecodePool:
    """``budget.workers`` worker processes; ``decode`` borrows one per call."""

    def __init__(self, budget: DecodeBudget) -> None:
        self.budget = budget
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        for _ in range(budget.workers):
            self._idle.put(self._start())

    def _start(self) -> _Worker:
        worker = _Worker(self.budget.memory_bytes)
        with self._lock:
            self._all.append(worker)
        return worker

    def _replace(self, worker: _Worker) -> None:
        worker.stop()
        with self._lock:
            self._all.remove(worker)
            if self._closed:
                return
        self._idle.put(self._start())

    def decode(
        self, data: bytes, size: tuple[int, int], limits: DecodeLimits
    ) -> tuple[np.ndarray, int, int]:
        """``decode_image(data, size, limits)`` in a worker; ImageRejected or DecodeBusy."""
        return self._run("decode", (data, tuple(size), limits))

    def thumbnail(self, data: bytes, max_side: int, limits: DecodeLimits) -> bytes:
        """``thumbnail_jpeg(data, max_side, limits)`` in a worker; ImageRejected or DecodeBusy."""
        return self._run("thumbnail", (data, max_side, limits))

    def _run(self, task: str, args: tuple) -> Any:
        if self._closed:
            raise RuntimeError("the decode pool is closed")
        try:
            worker = self._idle.get(timeout=self.budget.wait_s)
        except queue.Empty:
            raise DecodeBusy(max(1, round(self.budget.timeout_s))) from None
        try:
            answer = worker.call((task, args), self.budget.timeout_s)
        except TimeoutError:
            self._replace(worker)
            raise ImageRejected(
                f"decoding took longer than {self.budget.timeout_s:g} s (stopped)"
            ) from None
        except EOFError:
            code = worker.process.wait()
            self._replace(worker)
            reason = f"the decoder process died on this file (exit code {code})"
            raise ImageRejected(reason) from None
        except RuntimeError:  # it never started: replaced, so the pool keeps its size
            self._replace(worker)
            raise
        self._idle.put(worker)
        kind = answer[0]
        if kind == "ok":
            return answer[1]
        if kind == "rejected":
            raise ImageRejected(answer[1])
        # A bug in decode_image: the caller's own unexpected-error handling takes it from here.
        raise RuntimeError(f"decode worker error: {answer[1]}")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._all)
        for worker in workers:
            worker.stop()


# One pool per budget per process, started on first use: every DoFn instance and request
# thread of a process shares it (the role Beam's shared handles play for models).
_POOLS: dict[DecodeBudget, DecodePool] = {}
_POOLS_LOCK = threading.Lock()


def shared_pool(budget: DecodeBudget) -> DecodePool:
    with _POOLS_LOCK:
        pool = _POOLS.get(budget)
        if pool is None:
            pool = _POOLS[budget] = DecodePool(budget)
        return pool


@dataclasses.dataclass(frozen=True)
class GuardedDecoder:
    """A ``decode_image`` stand-in, ``(data, size, limits) -> (pixels, width, height)``, run in
    this process's shared pool for ``budget``. Pickles as its budget alone."""

    budget: DecodeBudget = DecodeBudget()

    def __call__(
        self, data: bytes, size: tuple[int, int], limits: DecodeLimits
    ) -> tuple[np.ndarray, int, int]:
        return shared_pool(self.budget).decode(data, size, limits)


# bytes, (height, width) -> (pixels, width, height): a decoder with its limits bound, what the
# query paths are handed (``bound_decoder``).
BoundDecoder = Callable[[bytes, tuple[int, int]], tuple[np.ndarray, int, int]]


def bound_decoder(limits: DecodeLimits, budget: DecodeBudget | None = None) -> BoundDecoder:
    """``decode_image`` with ``limits``: in this process, or in worker processes for ``budget``."""
    decode = decode_image if budget is None else GuardedDecoder(budget)
    return functools.partial(decode, limits=limits)


def bound_thumbnailer(
    limits: DecodeLimits, budget: DecodeBudget | None = None
) -> Callable[[bytes, int], bytes]:
    """``thumbnail_jpeg`` with ``limits``: in this process, or in the workers for ``budget``."""
    if budget is None:
        return functools.partial(thumbnail_jpeg, limits=limits)
    return lambda data, max_side: shared_pool(budget).thumbnail(data, max_side, limits)


# What a worker can be asked to do: ``(task, args)`` in, ``task(*args)`` out.
_TASKS: dict[str, Callable[..., Any]] = {"decode": decode_image, "thumbnail": thumbnail_jpeg}


def _limit_memory(allowance: int) -> None:
    """Cap this process's address space at what it holds now plus ``allowance`` (Linux)."""
    try:
        import resource

        with open("/proc/self/status", encoding="ascii") as status:
            vm_size = next(line for line in status if line.startswith("VmSize:"))
        held = int(vm_size.split()[1]) * 1024  # "VmSize:  123456 kB"
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = held + allowance
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ImportError, OSError, StopIteration, ValueError) as exc:
        logger.warning("decode worker runs without a memory limit: %s", exc)


def _serve(allowance: int) -> None:
    """The worker's loop: a request per frame on stdin, an answer per frame on stdout."""
    source = sys.stdin.buffer
    # Answers go to a private copy of stdout; fd 1 becomes stderr, so a stray print from a
    # library lands in the log instead of corrupting the frames.
    sink = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    _warm_up()
    _limit_memory(allowance)
    _send(sink, ("ready",))
    while True:
        header = source.read(_FRAME.size)
        if len(header) < _FRAME.size:
            return  # the pool closed the pipe
        (length,) = _FRAME.unpack(header)
        task, args = pickle.loads(source.read(length))
        try:
            answer: tuple = ("ok", _TASKS[task](*args))
        except ImageRejected as exc:
            answer = ("rejected", exc.reason)
        except MemoryError:
            answer = ("rejected", f"needs more than {_mib(allowance)} of memory to decode")
        except Exception as exc:  # a decoder bug: reported, and the worker carries on
            answer = ("error", f"{type(exc).__name__}: {exc}")
        del args
        try:
            _send(sink, answer)
        except MemoryError:
            _send(sink, ("rejected", f"needs more than {_mib(allowance)} of memory to decode"))


def _send(sink: Any, message: tuple) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sink.write(_FRAME.pack(len(payload)) + payload)
    sink.flush()


def _warm_up() -> None:
    """Decode a tiny PNG and JPEG, so Pillow's lazy plugin imports happen before the limit."""
    import io

    from PIL import Image

    for fmt in ("PNG", "JPEG"):
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (120, 80, 40)).save(buffer, fmt)
        decode_image(buffer.getvalue(), (8, 8))


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
