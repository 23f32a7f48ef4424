"""One serving worker of ``serving.supervisor``: one index version, on the supervisor's socket.

The supervisor binds the listening socket once and hands it to every worker it starts, so all
workers share one accept queue: a connection waiting in it is taken by whichever worker accepts
first, and none is lost when a worker stops listening (with ``SO_REUSEPORT`` each worker would
have its own queue, and closing one resets the connections still waiting in it).

A worker loads its version and the models (``serving.app.create_app``, pinned to that version),
starts uvicorn on the socket and tells the supervisor it is ready -- or why it failed. Then it
answers requests and shows the supervisor's reload status (``serving.reloader.ReloadView``).
Told to drain, it stops accepting, answers each open connection's next request with
``Connection: close`` (the client reconnects, and the worker serving the new version accepts),
waits for its connections to close (``DRAIN_S`` at most) and ends as uvicorn ends: in-flight
requests finished, the click log written.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from multiprocessing.connection import Connection

import uvicorn
from threadpoolctl import threadpool_limits

from runtime.lean_imports import skip_keras_extras
from runtime.log_setup import LogFlags, configure_logging
from runtime.process_exit import exit_process
from serving.app import create_app
from serving.config import ServeConfig
from serving.connection_guard import uvicorn_settings
from serving.reloader import ReloadStatus, ReloadView

logger = logging.getLogger(__name__)

# The longest a draining worker waits for its connections to close before uvicorn's own
# shutdown closes the idle ones (a busy connection is always let finish its request).
DRAIN_S = 30.0


class CloseWhenDraining:
    """ASGI wrapper: once ``draining`` is set, every response carries ``Connection: close``,
    so uvicorn closes the connection after it and the client's next request goes to a worker
    that still accepts (a clean close between requests: no client sees an error)."""

    def __init__(self, app, draining: threading.Event) -> None:
        self.app, self.draining = app, draining

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message):
            # Checked at the response, not the request: a request in flight when the drain
            # began closes its connection too.
            if message["type"] == "http.response.start" and self.draining.is_set():
                headers = [*message.get("headers", []), (b"connection", b"close")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_closing)


class WorkerServer(uvicorn.Server):
    """uvicorn's server, telling ``on_started`` once it listens, and able to drain."""

    def __init__(self, config: uvicorn.Config, draining: threading.Event, on_started) -> None:
        super().__init__(config)
        self.draining, self._on_started = draining, on_started
        self.loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if self.started:
            self._on_started()

    async def drain(self, deadline_s: float = DRAIN_S) -> None:
        """Stop accepting, close connections after their next response, then exit."""
        self.draining.set()
        for server in self.servers:
            server.close()  # this process's copy of the socket: the queue stays with the others
        end = time.monotonic() + deadline_s
        while self.server_state.connections and time.monotonic() < end:
            await asyncio.sleep(0.05)
        self.should_exit = True


def _follow_supervisor(conn: Connection, server: WorkerServer, view: ReloadView) -> None:
    """Take the supervisor's messages until it says drain (or is gone: drain too)."""
    while True:
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):
            logger.warning("the supervisor is gone: draining and exiting")
            kind, payload = "drain", None
        if kind == "status":
            view.update(payload)
        elif kind == "result":
            view.told(payload)
        elif kind == "drain":
            assert server.loop is not None
            asyncio.run_coroutine_threadsafe(server.drain(), server.loop)
            return


def run_worker(
    config: ServeConfig,
    pinned: tuple[str, str],
    status: ReloadStatus,
    sock: socket.socket,
    conn: Connection,
    log_flags: LogFlags,
    warm: bool = False,
) -> None:
    """The worker process's body (``multiprocessing`` spawn target): load, serve, drain, end.

    ``warm``: finish the app's background loads (the words) before listening -- for a worker
    taking over from one that serves meanwhile."""
    configure_logging(log_flags)
    skip_keras_extras()
    threadpool_limits(1, user_api="blas")  # as serving.server.serve, for the same reason
    view = ReloadView(status)
    try:
        app = create_app(config, pinned=pinned, reload_view=view)
    except BaseException as exc:  # any failure is a refusal of this version, said to the parent
        logger.error("index version %s does not load: %s: %s", pinned[1], type(exc).__name__, exc)
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        exit_process(1)
    words = getattr(app.state, "words", None)
    if warm and words is not None:
        words.wait_loaded()  # while the old worker still serves
    draining = threading.Event()

    def started() -> None:
        conn.send(("ready", os.getpid()))
        threading.Thread(
            target=_follow_supervisor, args=(conn, server, view), name="supervisor", daemon=True
        ).start()

    # log_config=None: uvicorn logs through this process's handler and format, as in serve().
    settings = uvicorn_settings(config.connection_limits)
    asgi = CloseWhenDraining(app, draining)
    uvicorn_config = uvicorn.Config(
        asgi, **settings, log_level="info", log_config=None, access_log=False
    )
    server = WorkerServer(uvicorn_config, draining, started)
    server.run(sockets=[sock])
    if not server.started:
        conn.send(("failed", "RuntimeError: the worker's HTTP server did not start"))
        exit_process(1)
    exit_process(0)
