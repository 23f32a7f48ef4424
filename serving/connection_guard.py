"""The connection limits uvicorn lacks: deadlines for a request's head and body, a cap on the head's
size, and a connection cap that sheds idle connections first.

uvicorn closes a keep-alive connection that stays idle after a response (``timeout_keep_alive``)
but sets no timer on a connection that never finishes a request: a client that opens sockets
and sends nothing, sends its headers a byte at a time (slowloris) or stalls in the middle of a
body keeps its socket, and its buffers, for ever -- enough of them exhaust file descriptors
and memory. ``GuardedHttpToolsProtocol`` is uvicorn's httptools protocol with:

- a **head deadline**: the request line and headers must arrive within ``head_timeout_s`` of
  the connection opening or of the previous response (408 and close, otherwise);
- a **body pace**: once the head is in, the body must keep coming -- no pause longer than
  ``body_idle_s`` and, from then on, at least ``min_body_bytes_per_s`` on average -- or the
  connection is closed (the application sees a disconnect). A stalled body goes in
  ``body_idle_s``; a dripped one once its average falls behind; an honest slow uplink is never
  cut, as a deadline on the whole body would. Time during which the server itself stopped
  reading (flow control, while the application has not taken what came) does not count;
- a **head size cap**: more than ``max_head_bytes`` of request line and headers is a 431;
- a **connection cap**: past ``max_connections`` open connections, the connection idle for
  longest (between requests or still sending its head) is closed to make room, and when none
  is idle the new one is refused; requests in progress are never cut for a newcomer.

``protocol_class(limits)`` gives the class to hand to ``uvicorn.Config(http=...)``, and
``uvicorn_settings(limits)`` all of uvicorn's settings that ``limits`` decide.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from serving.config import ConnectionLimits


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop parsing; uvicorn answers it via send_400_response."""


def _simple_response(status: bytes) -> bytes:
    return b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's ``HttpToolsProtocol`` with the deadlines and caps of the module docstring."""

    limits: ConnectionLimits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._body_started = self._body_seen = 0.0  # monotonic: head complete, last body bytes
        self._body_bytes = 0
        self._head_bytes = 0
        self._head_too_large = False
        self._idle_since = time.monotonic()

    # --------------------------------------------------------------- connection life

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._idle_since = time.monotonic()
        if len(self.connections) > self.limits.max_connections and not self._shed_idle():
            self.transport.write(_simple_response(b"503 Service Unavailable"))
            self.transport.close()
            return
        self._arm(self.limits.head_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _is_idle(self) -> bool:
        """Between requests, or still sending a head: nothing of the application's to cut."""
        return self.cycle is None or self.cycle.response_complete

    def _shed_idle(self) -> bool:
        """Close the connection idle for longest (not this one); False when none is idle."""
        idle = [
            c
            for c in self.connections
            if c is not self and isinstance(c, GuardedHttpToolsProtocol) and c._is_idle()
        ]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: c._idle_since)
        oldest._disarm()
        oldest.transport.close()
        return True

    # --------------------------------------------------------------- timers

    def _arm(self, delay_s: float, callback) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay_s, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self.transport.write(_simple_response(b"408 Request Timeout"))
            self.transport.close()

    def _check_body(self) -> None:
        """Every second while a body is coming: close a stalled or dripping one."""
        self._timer = None
        if self.transport.is_closing():
            return
        now = time.monotonic()
        if self.flow.read_paused:  # the server is not reading: not the client's delay
            self._body_started += 1.0
            self._body_seen = now
        else:
            limits = self.limits
            running = now - self._body_started
            stalled = now - self._body_seen > limits.body_idle_s
            dripping = (
                running > limits.body_idle_s
                and self._body_bytes < limits.min_body_bytes_per_s * running
            )
            if stalled or dripping:
                self.transport.close()
                return
        self._arm(1.0, self._check_body)

    # --------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > self.limits.max_head_bytes:
            self._head_too_large = True
            raise _HeadTooLarge  # httptools stops; uvicorn calls send_400_response

    def send_400_response(self, msg: str) -> None:
        if self._head_too_large:
            self._disarm()
            self.transport.write(_simple_response(b"431 Request Header Fields Too Large"))
            self.transport.close()
            return
        super().send_400_response(msg)

    def on_headers_complete(self) -> None:
        self._body_started = self._body_seen = time.monotonic()
        self._body_bytes = 0
        self._arm(1.0, self._check_body)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        self._body_seen = time.monotonic()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)  # super() starts the next queued request, if any
        super().on_response_complete()
        self._idle_since = time.monotonic()
        if not self.transport.is_closing() and not pipelined:
            # uvicorn's keep-alive timer closes an idle connection; this one bounds a head
            # that was started but not finished (uvicorn cancels its timer on the first byte).
            self._arm(self.limits.head_timeout_s, self._head_timed_out)


def protocol_class(limits: ConnectionLimits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` under ``limits``."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})


def uvicorn_settings(limits: ConnectionLimits) -> dict:
    """uvicorn's own settings for ``limits``, and the protocol that adds what it lacks."""
    return {
        "http": protocol_class(limits),
        "timeout_keep_alive": limits.keep_alive_s,
        # Connections past the cap are shed by the protocol; the listen backlog only queues
        # handshakes the event loop has not accepted yet.
        "backlog": 2048,
    }
