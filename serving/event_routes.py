"""``POST /api/events``: the search page reports views and clicks into the click log.

``add_event_routes`` adds the route and an ``EventWriter`` (``serving.event_writer``) when
``config.events_dir`` is set; ``start_events``/``stop_events`` run in the app's lifespan, so a
clean shutdown writes every accepted event. With the log off the route answers 503 and is left
out of the OpenAPI schema (there is nothing to call).
"""

# No `from __future__ import annotations`: FastAPI reads the handler's real annotations.

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from serving.config import ServeConfig
from serving.event_log import Admission, EventIn, EventRejected, parse_event
from serving.event_writer import EventWriter
from serving.reloader import VersionHolder

OFF_MESSAGE = "event logging is off: start with --events DIR"
_REFUSALS = {
    Admission.BUFFER_FULL: "the event buffer is full; try again later",
    Admission.DISK_CAP: "the event log reached its disk cap; events are refused for now",
    Admission.CLOSED: "the server is shutting down",
}
_RESPONSES = {
    202: {"description": "Accepted into the buffer (written within the flush interval)"},
    400: {"description": "The body is not JSON"},
    413: {"description": "Body larger than the limit (4 KiB by default)"},
    415: {"description": "Content-Type is not application/json"},
    422: {"description": "Not a valid event (unknown kind, a field too long, extra fields)"},
    503: {"description": "Event logging is off, the buffer is full or the disk cap is reached"},
}


def _detail(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers or None)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes ``limit`` bytes, declared or streamed."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise EventRejected(413, f"event body larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise EventRejected(413, f"event body larger than {limit} bytes")
    return bytes(body)


def add_event_routes(app: FastAPI, holder: VersionHolder, config: ServeConfig) -> None:
    """Add ``POST /api/events``; with ``config.events_dir``, an ``EventWriter`` on ``app.state``."""
    metrics = app.state.metrics
    limits = config.event_limits
    writer = (
        EventWriter(config.events_dir, limits, metrics) if config.events_dir is not None else None
    )
    app.state.event_writer = writer

    @app.post(
        "/api/events",
        tags=["events"],
        summary="Report a view of a results page or a click on a result",
        status_code=202,
        responses=_RESPONSES,
        include_in_schema=writer is not None,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": EventIn.model_json_schema()}},
            }
        },
    )
    async def post_event(request: Request) -> JSONResponse:
        if writer is None:
            metrics.events.labels(result="off").inc()
            return _detail(503, OFF_MESSAGE)
        # Only JSON: a cross-site form or text/plain beacon cannot post here without a CORS
        # preflight, which this server does not answer.
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if media_type != "application/json":
                raise EventRejected(415, "send the event as application/json")
            event = parse_event(
                await _read_body(request, limits.max_body_bytes), limits.max_body_bytes
            )
        except EventRejected as exc:
            metrics.events.labels(result="invalid").inc()
            return _detail(exc.status, exc.message)
        admission, event_id = writer.offer(event, holder.current.version)
        if admission is not Admission.ACCEPTED:
            retry = str(int(min(limits.flush_interval_s, 60)) or 1)
            return _detail(503, _REFUSALS[admission], **{"Retry-After": retry})
        return JSONResponse({"accepted": True, "event_id": event_id}, status_code=202)


def start_events(app: FastAPI) -> None:
    """Lifespan start: clean stale temp files, count existing files, start the writer thread."""
    writer = getattr(app.state, "event_writer", None)
    if writer is not None:
        writer.start()


def stop_events(app: FastAPI) -> None:
    """Lifespan shutdown: refuse new events and write every accepted one."""
    writer = getattr(app.state, "event_writer", None)
    if writer is not None:
        writer.stop()
