"""HTTP routes of mixed queries and relevance feedback (``serving.mixed_search`` does the work).

- ``POST /api/search/mixed``: a form with an image (``file``, or an indexed ``image_id``) and/or
  ``q`` in the query syntax (``ranking.query_syntax``), ``image_weight`` (default 1).
- ``POST /api/feedback/search``: JSON ``{"q", "relevant", "not_relevant", "k", "offset"}`` ->
  the Rocchio-refined ranking.
- ``GET /feedback?q=&relevant=...``: the search page's "search again with these" form (plain
  HTML, so it works without JavaScript), rendered by the page's own ``render``.

Answers have the shape of every search answer (``serving.queries``); refusals are
``{"detail": ...}`` with the statuses each route's ``responses`` lists.
"""

# No `from __future__ import annotations`: FastAPI must see the real Annotated types of the
# handlers and of the request model defined inside add_mixed_routes (bounds from the config).

import math
import time
import urllib.parse
from typing import Annotated

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from serving import mixed_search, queries, uploads
from serving.config import ServeConfig
from serving.mixed_search import MAX_FEEDBACK_IDS
from serving.paging import PageRequest
from serving.reloader import VersionHolder
from serving.responses import json_response
from serving.state import QueryModels

MAX_IMAGE_WEIGHT = 100.0
_MAX_ID_CHARS = 256
# As serving.app's: that module imports this one, so they cannot be shared from there.
_ERRORS = {
    400: "Bad request (malformed query syntax, nothing to search for, a malformed form)",
    404: "No such image in the serving index version",
    413: "Upload too large",
    415: "Upload is not an image type, or the body is not a form",
    422: "Invalid parameter, or the image was rejected (bomb, too small, not an image)",
    429: "Every image decoder is busy: retry after Retry-After seconds",
    503: "Not available on this server (no joint model)",
}
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
_MIXED_BODY = {
    "multipart/form-data": {
        "schema": {
            "type": "object",
            "properties": {
                "file": {"type": "string", "format": "binary"},
                "image_id": {"type": "string", "maxLength": _MAX_ID_CHARS},
                "q": {"type": "string"},
                "image_weight": {"type": "number", "default": 1.0},
            },
        }
    }
}


def _errors(*codes: int) -> dict:
    return {code: {"description": _ERRORS[code]} for code in codes}


def _http(exc: queries.QueryError) -> HTTPException:
    return HTTPException(exc.status, exc.message)


async def _read_form(request: Request, config: ServeConfig) -> dict[str, uploads.FormPart]:
    """The form's fields by name (the first of each), bounded like image uploads."""
    header = request.headers.get("content-type", "")
    content_type = header.split(";")[0].strip().lower()
    if content_type not in _FORM_TYPES:
        raise HTTPException(415, f"send a form ({' or '.join(_FORM_TYPES)}), not {content_type!r}")
    try:
        body = await uploads.read_bounded(request.stream(), config.max_body_bytes)
        if content_type == "multipart/form-data":
            parts = await uploads.parse_form(body, header)
        else:
            pairs = urllib.parse.parse_qsl(
                body.decode("latin-1"), keep_blank_values=True, errors="replace"
            )
            parts = [uploads.FormPart(k, "text/plain", None, v.encode()) for k, v in pairs]
    except uploads.UploadError as exc:
        raise HTTPException(exc.status, exc.message) from exc
    fields: dict[str, uploads.FormPart] = {}
    for part in parts:
        fields.setdefault(part.name, part)
    return fields


def _text_field(fields: dict[str, uploads.FormPart], name: str, max_chars: int) -> str:
    part = fields.get(name)
    if part is None:
        return ""
    try:
        value = part.data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(400, f"form field {name!r} is not UTF-8") from exc
    if len(value) > max_chars:
        raise HTTPException(400, f"form field {name!r} is longer than {max_chars} characters")
    return value


def _image_weight(fields: dict[str, uploads.FormPart]) -> float:
    raw = _text_field(fields, "image_weight", 32).strip()
    if not raw:
        return 1.0
    try:
        weight = float(raw)
    except ValueError as exc:
        raise HTTPException(422, f"image_weight must be a number, got {raw!r}") from exc
    if not (math.isfinite(weight) and 0 < abs(weight) <= MAX_IMAGE_WEIGHT):
        raise HTTPException(
            422, f"image_weight must be non-zero, between -{MAX_IMAGE_WEIGHT:g} and "
            f"{MAX_IMAGE_WEIGHT:g}, got {raw}"
        )  # fmt: skip
    return weight


def _upload(fields: dict[str, uploads.FormPart], config: ServeConfig) -> bytes | None:
    """The ``file`` part's bytes; None when absent or empty (a form with no file chosen)."""
    part = fields.get("file")
    if part is None or not part.data:
        return None
    try:
        uploads.check_image_type(part.content_type)
    except uploads.UploadError as exc:
        raise HTTPException(exc.status, exc.message) from exc
    if len(part.data) > config.max_upload_bytes:
        raise HTTPException(413, f"upload larger than {config.max_upload_bytes} bytes")
    return part.data


def add_mixed_routes(
    app: FastAPI, holder: VersionHolder, models: QueryModels, config: ServeConfig
) -> None:
    """Add the mixed-query and feedback routes (API and page) to ``app``."""
    K = Annotated[int, Query(ge=1, le=config.max_k, description="results per page")]
    Offset = Annotated[int, Query(ge=0, le=config.max_offset, description="results to skip")]
    Dedupe = Annotated[
        bool, Query(description="one result per near-duplicate group (false: show them all)")
    ]
    text_off = models.text_off_reason

    @app.post(
        "/api/search/mixed",
        tags=["search"],
        summary="Mixed query: an image and weighted text terms",
        responses=_errors(400, 404, 413, 415, 422, 429, 503),
        description=(
            "A multipart form (or a urlencoded one without a file): an image as 'file' (at most "
            f"{config.max_upload_bytes} bytes) or an indexed 'image_id', and/or 'q' in the "
            "query syntax (e.g. '\"2:golden retriever\" + beach - snow'), and 'image_weight' "
            "(default 1, negative subtracts the image). Each hit's 'why' gives every part's "
            "similarity and contribution to the score."
        ),
        openapi_extra={"requestBody": {"content": _MIXED_BODY}},
    )
    async def search_mixed(
        request: Request, k: K = config.default_k, offset: Offset = 0, dedupe: Dedupe = True
    ):
        fields = await _read_form(request, config)
        q = _text_field(fields, "q", config.max_query_chars)
        image_id = _text_field(fields, "image_id", _MAX_ID_CHARS).strip() or None
        image_weight = _image_weight(fields)
        upload = _upload(fields, config)
        bundle, started = holder.current, time.perf_counter()

        def search(n: int) -> mixed_search.Found:
            return mixed_search.mixed(
                bundle, q, n, text_off, upload=upload, image_id=image_id,
                image_weight=image_weight, decode=config.query_decoder(),
            )  # fmt: skip

        page = PageRequest(k, offset, dedupe=dedupe)
        # Decoding and encoding are CPU work: off the event loop, like the sync handlers.
        try:
            result = await run_in_threadpool(queries.combined_query, search, bundle, page, started)
        except queries.QueryError as exc:
            raise _http(exc) from exc
        return json_response(result)

    IdList = Annotated[
        list[Annotated[str, Field(min_length=1, max_length=_MAX_ID_CHARS)]],
        Field(max_length=MAX_FEEDBACK_IDS),
    ]

    class FeedbackRequest(BaseModel):
        """A query and the images judged on its results."""

        model_config = ConfigDict(extra="forbid")
        q: Annotated[str, Field(max_length=config.max_query_chars)] = ""
        relevant: IdList = []
        not_relevant: IdList = []
        k: Annotated[int, Field(ge=1, le=config.max_k)] = config.default_k
        offset: Annotated[int, Field(ge=0, le=config.max_offset)] = 0
        dedupe: bool = True

    @app.post(
        "/api/feedback/search",
        tags=["search"],
        summary="Relevance feedback: refine a query with images judged relevant or not",
        responses=_errors(400, 404, 422, 503),
        description=(
            "Rocchio in the joint space: alpha * q + beta * mean(relevant) - gamma * "
            "mean(not_relevant), re-normalised (alpha 1, beta 0.75, gamma 0.15). 'q' (query "
            "syntax allowed) may be empty when 'relevant' is not; at most "
            f"{MAX_FEEDBACK_IDS} ids in all."
        ),
    )
    def feedback_search(body: FeedbackRequest) -> Response:
        bundle, started = holder.current, time.perf_counter()

        def search(n: int) -> mixed_search.Found:
            return mixed_search.feedback(bundle, body.q, body.relevant, body.not_relevant, n,
                                         text_off)  # fmt: skip

        page = PageRequest(body.k, body.offset, dedupe=body.dedupe)
        return json_response(queries.combined_query(search, bundle, page, started))

    @app.get("/feedback", response_class=HTMLResponse, include_in_schema=False)
    def feedback_page(
        request: Request,
        q: Annotated[str, Query(max_length=config.max_query_chars)] = "",
        relevant: Annotated[list[str] | None, Query(max_length=MAX_FEEDBACK_IDS)] = None,
    ) -> HTMLResponse:
        relevant = relevant or []
        render = request.app.state.render_page  # the search page's (serving.app)
        bundle, started = holder.current, time.perf_counter()
        if not relevant:
            return render(request, bundle, q=q, status=400,
                          error="tick the results you like, then search again")  # fmt: skip

        def search(n: int) -> mixed_search.Found:
            return mixed_search.feedback(bundle, q, relevant, [], n, text_off)

        try:
            result = queries.combined_query(search, bundle, PageRequest(config.default_k), started)
        except queries.QueryError as exc:
            return render(request, bundle, q=q, error=exc.message, status=exc.status)
        result["next_offset"] = None  # one refined page; tick again to refine further
        title = f"Refined with {len(result['query']['relevant'])} image(s)"
        if q.strip():
            title += f" for “{q.strip()}”"
        return render(request, bundle, q=q, result=result, relevant=relevant, title=title)
