"""Reading an uploaded query image into memory, within a size limit, without touching disk.

An image query arrives either as the raw request body (``Content-Type: image/jpeg`` ...; what
the page's JavaScript and API clients send) or as the ``file`` part of a ``multipart/form-data``
form (the page's plain HTML form). Starlette's form parser spools parts over 1 MB to a
temporary file; the body here is already bounded and in memory, so the form is parsed in memory
too and a query does no file I/O.

The multipart parser is pure Python, so a body of many tiny parts is CPU work: forms are parsed
in a worker thread (``parse_form``), never on the event loop, and stop at ``MAX_FORM_PARTS``
parts, so an 8 MB body of 800k empty parts costs one short refusal instead of seconds of a
blocked server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, NamedTuple

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from serving.config import FORM_OVERHEAD, UPLOAD_CONTENT_TYPES
from serving.query_error import QueryError

if TYPE_CHECKING:
    import numpy as np

    from encoders.decode_pool import BoundDecoder

# The most parts a form may have: the page's forms send at most a file and three fields.
MAX_FORM_PARTS = 16


class UploadError(Exception):
    """An upload that cannot be taken; ``status`` is its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def check_image_type(content_type: str) -> None:
    if content_type not in UPLOAD_CONTENT_TYPES:
        raise UploadError(
            415, f"unsupported content type {content_type!r}; send one of {UPLOAD_CONTENT_TYPES}"
        )


async def read_bounded(stream: AsyncIterator[bytes], limit: int) -> bytes:
    """The whole body, or 413 as soon as it passes ``limit`` bytes (whatever headers claim)."""
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise UploadError(413, f"upload larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class FormPart(NamedTuple):
    """One part of a multipart form: its field name, declared content type, filename, bytes."""

    name: str
    content_type: str
    filename: str | None
    data: bytes


def multipart_parts(body: bytes, content_type_header: str) -> list[FormPart]:
    """Every part of a multipart/form-data body, in order (parsed in memory); 400 for a
    malformed body or one of more than ``MAX_FORM_PARTS`` parts (refused at the first extra
    part, before the rest is parsed). Blocking: async code calls ``parse_form``."""
    _, options = parse_options_header(content_type_header.encode("latin-1"))
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadError(400, "a multipart body needs a boundary in its Content-Type")
    parts: list[dict] = []
    current: dict = {}

    def on_part_begin() -> None:
        if len(parts) >= MAX_FORM_PARTS:
            raise UploadError(400, f"a form may have at most {MAX_FORM_PARTS} parts")
        current.clear()
        current.update(headers={}, data=bytearray(), name=b"", value=b"")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        current["name"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        current["value"] += data[start:end]

    def on_header_end() -> None:
        current["headers"][current["name"].lower()] = current["value"]
        current["name"], current["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        current["data"] += data[start:end]

    def on_part_end() -> None:
        parts.append({"headers": current["headers"], "data": bytes(current["data"])})

    parser = MultipartParser(
        boundary,
        callbacks={
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except UploadError:
        raise
    except Exception as exc:  # python-multipart raises its own error types for bad bodies
        raise UploadError(400, f"malformed multipart body: {exc}") from exc
    found = []
    for part in parts:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition", b""))
        content_type = part["headers"].get(b"content-type", b"").decode("latin-1")
        filename = disposition.get(b"filename")
        found.append(
            FormPart(
                disposition.get(b"name", b"").decode("utf-8", "replace"),
                content_type.split(";")[0].strip().lower(),
                None if filename is None else filename.decode("utf-8", "replace"),
                part["data"],
            )
        )
    return found


async def parse_form(body: bytes, content_type_header: str) -> list[FormPart]:
    """``multipart_parts`` in a worker thread, so parsing never stalls the event loop."""
    return await run_in_threadpool(multipart_parts, body, content_type_header)


def file_part(parts: list[FormPart], field: str = "file") -> tuple[str, bytes]:
    """``(content type, bytes)`` of the form's ``field`` part."""
    for part in parts:
        if part.name == field:
            return part.content_type, part.data
    raise UploadError(400, f"the form has no {field!r} part")


async def read_upload(
    content_type_header: str, stream: AsyncIterator[bytes], max_bytes: int
) -> bytes:
    """The uploaded image's bytes: 415 for a non-image type, 413 over ``max_bytes``, 400 empty."""
    data, _ = await read_upload_form(content_type_header, stream, max_bytes)
    return data


async def read_upload_form(
    content_type_header: str, stream: AsyncIterator[bytes], max_bytes: int
) -> tuple[bytes, list[FormPart]]:
    """``read_upload``'s bytes and the form's parts, for routes that read other fields of the
    form too ([] for a raw-body upload)."""
    content_type = content_type_header.split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        body = await read_bounded(stream, max_bytes + FORM_OVERHEAD)
        parts = await parse_form(body, content_type_header)
        content_type, data = file_part(parts)
    else:
        check_image_type(content_type)  # before reading a body that would be refused anyway
        data, parts = await read_bounded(stream, max_bytes), []
    check_image_type(content_type)
    if len(data) > max_bytes:
        raise UploadError(413, f"upload larger than {max_bytes} bytes")
    if not data:
        raise UploadError(400, "empty upload")
    return data, parts


def decode_upload(
    data: bytes, decode: BoundDecoder, size: tuple[int, int]
) -> tuple[np.ndarray, dict]:
    """An uploaded image decoded as indexing decodes it (``decode`` at the encoder's input
    ``size``) -> its pixels and the answer's echo of it; QueryError 422 when it is not a usable
    image (not an image, a bomb, too small, ...)."""
    try:
        pixels, width, height = decode(data, size)
    except ValueError as exc:  # ImageRejected
        raise QueryError(422, f"image rejected: {exc}") from exc
    return pixels, {"bytes": len(data), "width": width, "height": height}
