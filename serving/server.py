"""Run the search app under uvicorn: in the foreground (``imgsearch serve``) or in a thread."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI
from threadpoolctl import threadpool_limits

from serving.app import create_app
from serving.config import ConnectionLimits, ServeConfig
from serving.connection_guard import uvicorn_settings


def serve(config: ServeConfig) -> None:
    """Load everything, then serve until interrupted.

    A publish root followed with ``reload_in="process"`` is served by worker processes under a
    supervisor (``serving.supervisor``: a reload starts a new worker and stalls nothing);
    otherwise one process serves, and reloads (if any) in a thread.
    """
    if config.reload_in == "process" and config.poll_interval_s > 0:
        from serving.supervisor import Supervisor, is_publish_root

        if is_publish_root(config.index):
            Supervisor(config).run()
            return
    # Each request does small matrix products (text tower, explanations). With OpenBLAS's own
    # thread pool they fight the request threads for the cores: a 2-core server measured 37 ms
    # per text query that way against 11 ms with one BLAS thread per request.
    threadpool_limits(1, user_api="blas")
    check_port_free(config.host, config.port)  # before minutes of loading, not after
    app = create_app(config)
    # log_config=None: uvicorn's lines ("Uvicorn running on ...") go through the process's own
    # handler and format (runtime.log_setup), JSON included, instead of uvicorn's.
    uvicorn.run(app, **uvicorn_settings(config.connection_limits), host=config.host,
                port=config.port, log_level="info", log_config=None, access_log=False)  # fmt: skip


def check_port_free(host: str, port: int) -> None:
    """ValueError naming the address when ``host:port`` cannot be listened on (0: any port)."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror}; check --host") from exc
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise ValueError(
                f"cannot listen on {host}:{port}: {exc.strerror} (another `imgsearch serve`?); "
                f"stop it or choose another --port"
            ) from exc


class BackgroundServer:
    """A uvicorn server on ``host:port`` (0: any free port) in a daemon thread.

    For tests and benchmarks: ``with BackgroundServer(app) as server: server.url``.
    """

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: ConnectionLimits | None = None,
    ) -> None:
        """``limits`` default to those of the app's ``ServeConfig``, as ``serve`` runs it."""
        if limits is None:
            limits = app.state.config.connection_limits
        settings = uvicorn_settings(limits)
        self._server = uvicorn.Server(
            uvicorn.Config(
                app, **settings, host=host, port=port, log_level="warning", access_log=False
            )
        )
        self._thread = threading.Thread(target=self._server.run, name="uvicorn", daemon=True)
        self.url = ""

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the search server did not start")
            time.sleep(0.02)
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.should_exit = True
        self._thread.join(30)
