"""``serve`` on a publish root: a supervisor that reloads by starting a new worker process.

Within one process a reload stalls every request: ScaNN's ``load_searcher`` holds the GIL for
seconds per shard (1.7 s p99 at 1M, 4.1 s at 200k in one shard:
``benchmarks/results/serving_real_*.md``). So the supervisor loads no index and no model. It
binds the port, and runs the same ``Reloader`` as a one-process server -- the pointer, refusals,
healing, served markers, fallback at start -- over a holder of worker processes: "loading" a
version starts a worker (``serving.worker_process``) that loads it beside the one serving, and
"swapping" tells the old worker to drain once the new one listens. A version that fails to load
is refused and the serving worker never notices. The workers share the supervisor's listening
socket (one accept queue), so no connection is dropped at a switch.

Memory during a reload: two workers, each with its models and its version (the in-thread reload
held two versions and one copy of the models); bounded because the reloader loads one version
at a time. A worker that dies while serving is replaced by a new one on the same version.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from index.publish import resolve_index
from runtime.log_setup import current_flags
from serving.config import ServeConfig
from serving.reloader import (
    LoadFailed,
    Reloader,
    ReloadStatus,
    VersionHolder,
    load_first_version,
)
from serving.worker_process import DRAIN_S, run_worker

logger = logging.getLogger(__name__)

# How often the supervisor checks its worker is alive and sends it the reload status if changed.
TICK_S = 0.5
# A draining worker past DRAIN_S plus this is stopped (SIGTERM, then SIGKILL).
STOP_GRACE_S = 30.0


def is_publish_root(location: str) -> bool:
    """Whether ``location`` has a publish pointer (readable or not), as opposed to being an
    index folder (FileNotFoundError when it is neither: the one-process path says so)."""
    try:
        return resolve_index(location)[1] is not None
    except FileNotFoundError:
        return False
    except (OSError, ValueError):  # a pointer that cannot be read: the reloader's case
        return True


class Worker:
    """A worker process serving ``version``, and the pipe to it."""

    def __init__(self, version: str, index_dir: str, process: BaseProcess, conn: Connection):
        self.version, self.index_dir = version, index_dir
        self.process, self.conn = process, conn
        self._reaper: threading.Thread | None = None
        # The reloader's thread and the main loop both send: one message at a time on the pipe.
        self._send_lock = threading.Lock()

    def send(self, kind: str, payload=None) -> None:
        try:
            with self._send_lock:
                self.conn.send((kind, payload))
        except (OSError, ValueError):  # it is gone (the liveness check replaces it)
            pass

    def drain(self) -> None:
        """Tell it to stop accepting and end, and make sure it does (in a thread, the only one
        that waits for the process from now on: two waiters race for its exit status)."""
        self.send("drain")
        self._reaper = threading.Thread(target=self._reap, name=f"reap-{self.version}",
                                        daemon=True)  # fmt: skip
        self._reaper.start()

    def wait_ended(self, timeout_s: float) -> bool:
        """After ``drain``: wait for the process to have ended; whether it has."""
        assert self._reaper is not None, "wait_ended before drain"
        self._reaper.join(timeout_s)
        return not self._reaper.is_alive()

    def _reap(self) -> None:
        self.process.join(DRAIN_S + STOP_GRACE_S)
        if self.process.is_alive():
            logger.warning("worker %s (pid %s) did not finish draining: stopping it",
                           self.version, self.process.pid)  # fmt: skip
            self.process.terminate()
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()
        self.conn.close()
        logger.info("worker for %s (pid %s) ended, exit code %s",
                    self.version, self.process.pid, self.process.exitcode)  # fmt: skip


class WorkerHolder(VersionHolder[Worker]):
    """The serving worker, for the ``Reloader``: a swap also drains the worker it replaces."""

    def swap(self, worker: Worker) -> Worker:
        old = super().swap(worker)
        old.drain()
        return old


class Supervisor:
    """Serve ``config.index`` (a publish root) through worker processes; ``run`` until a signal."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self._context = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self._stop = threading.Event()
        self._socket: socket.socket | None = None
        self.holder: WorkerHolder | None = None
        self.reloader: Reloader | None = None
        self._sent: tuple[Worker, ReloadStatus] | None = None  # the last status pushed, to whom
        self._push_lock = threading.Lock()  # the reloader's thread and the main loop both push

    # ------------------------------------------------------------------ workers

    def _status(self) -> ReloadStatus:
        if self.reloader is not None:
            return self.reloader.status()
        return ReloadStatus(self.config.index, None, {}, 0, None, None, None, None)

    def spawn(self, index_dir: str, version: str | None) -> Worker:
        """Start a worker on ``version`` and wait until it listens; ``LoadFailed`` with the
        worker's reason when it does not (the reloader refuses the version)."""
        assert self._socket is not None and version is not None
        # Taking over from a serving worker, the new one finishes its background loads (the
        # words) first; with nothing serving, it answers as soon as it can.
        warm = self.holder is not None and self.holder.current.process.is_alive()
        status, flags = self._status(), current_flags()
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=run_worker,
            args=(self.config, (index_dir, version), status, self._socket, child, flags, warm),
            name=f"imgsearch-serve-{version}",
        )
        process.start()
        child.close()
        logger.info("loading index version %s in worker pid %s", version, process.pid)
        deadline = time.monotonic() + self.config.ready_grace_s
        reason = None
        while reason is None:
            if parent.poll(TICK_S):
                try:
                    kind, payload = parent.recv()
                except EOFError:  # exited without a word: killed (OOM), or crashed natively
                    process.join(5)
                    reason = f"WorkerDied: the worker exited with code {process.exitcode}"
                    break
                if kind == "ready":
                    logger.info("worker pid %s serves %s", process.pid, version)
                    return Worker(version, index_dir, process, parent)
                reason = payload
            elif self._stop.is_set():
                reason = "Stopped: the server is shutting down"
            elif time.monotonic() > deadline:
                reason = (f"TimeoutError: not ready after {self.config.ready_grace_s:.0f} s "
                          f"(--ready-grace-s)")  # fmt: skip
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join(5)
        parent.close()
        raise LoadFailed(reason)

    def _push_status(self, worker: Worker) -> None:
        """Send ``worker`` the reload status, unless it has it already."""
        with self._push_lock:
            status = self._status()
            if self._sent != (worker, status):
                worker.send("status", status)
                self._sent = (worker, status)

    def _on_result(self, result: str) -> None:
        assert self.holder is not None
        current = self.holder.current
        self._push_status(current)
        current.send("result", result)

    # ------------------------------------------------------------------ life

    def start(self) -> None:
        """Bind the port and start serving the version the pointer names (or a fallback)."""
        self._socket = bind(self.config.host, self.config.port)
        first = load_first_version(self.config.index, self.spawn)
        self.holder = WorkerHolder(first.bundle)
        self.reloader = Reloader(self.config.index, self.holder, self.spawn,
                                 self.config.poll_interval_s, self._on_result, first,
                                 self.config.verify)  # fmt: skip
        self.reloader.record_served(first.bundle.version)
        self._push_status(self.holder.current)
        host, port = self._socket.getsockname()[:2]
        worker = first.bundle
        logger.info("serving %s on http://%s:%s (worker pid %s; a new version loads in a "
                    "new worker)", worker.version, host, port, worker.process.pid)  # fmt: skip
        self.reloader.start()

    @property
    def address(self) -> tuple[str, int]:
        assert self._socket is not None
        return self._socket.getsockname()[:2]

    def tick(self) -> None:
        """Replace a worker that died while serving; send the serving one the status."""
        assert self.holder is not None
        current = self.holder.current
        process = current.process
        if not process.is_alive() and not self._stop.is_set():
            logger.error("the worker serving %s (pid %s) died (exit code %s): starting another",
                         current.version, process.pid, process.exitcode)  # fmt: skip
            replacement = self.spawn(current.index_dir, current.version)
            if not self.holder.replace_if_current(current, replacement):
                replacement.drain()
            current.conn.close()
            current = self.holder.current
        self._push_status(current)

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM, then drain the serving worker and end."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: self._stop.set())
        self.start()
        self.watch()

    def watch(self) -> None:
        """``tick`` until ``request_stop``, then ``stop`` (the main loop of ``run``)."""
        try:
            while not self._stop.wait(TICK_S):
                self.tick()
        finally:
            self.stop()

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        """Stop following the pointer, drain the serving worker, wait for it, close the port."""
        self._stop.set()
        if self.reloader is not None:
            self.reloader.stop()
        if self.holder is not None:
            current = self.holder.current
            current.drain()
            current.wait_ended(DRAIN_S + STOP_GRACE_S + 15)
        if self._socket is not None:
            self._socket.close()


def bind(host: str, port: int) -> socket.socket:
    """The server's socket, bound (as uvicorn binds) and not yet listening: the first worker
    listens once it is ready, so a client connects only to a server that answers."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ValueError(
            f"cannot listen on {host}:{port}: {exc.strerror} (another `imgsearch serve`?); "
            f"stop it or choose another --port"
        ) from exc
    sock.set_inheritable(True)
    return sock
