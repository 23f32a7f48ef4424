"""The JSON answer every API route sends (its own module: serving.app and the route modules it
imports both need it)."""

from __future__ import annotations

import orjson
from fastapi import Response


def json_response(payload: dict) -> Response:
    """Serialize an answer with orjson, skipping FastAPI's per-field validation and encoding.

    The query functions already build plain JSON types; on a 2-core machine the default
    encoder was a noticeable share of a ~3 ms text query.
    """
    return Response(orjson.dumps(payload), media_type="application/json")
