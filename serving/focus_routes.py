"""The focus parameter of the image routes, and ``GET /api/focus`` to check a focus word.

``GET /api/similar/{image_id}?focus=cat`` and ``POST /api/search/image?focus=cat`` (their
handlers in ``serving.app`` delegate here when ``focus`` is given) pool the query image's feature
map towards the focus classes (``serving.focus_search``); the search page's upload form sends
``focus`` as a form field. 400: no label matches (the nearest labels in the message), or the
index's encoder cannot focus (no spatial map, or a head that does not fit); 404: no such image.
"""

# No `from __future__ import annotations`: FastAPI must see the real Annotated query types.

from typing import Annotated

from fastapi import FastAPI, HTTPException, Query, Request

from serving import uploads
from serving.config import ServeConfig
from serving.focus_search import FocusService, focused_image_page, focused_similar_page
from serving.paging import PageRequest
from serving.reloader import VersionHolder
from serving.state import IndexBundle, QueryModels

MAX_FOCUS_CHARS = 100
Focus = Annotated[
    str | None,
    Query(
        max_length=MAX_FOCUS_CHARS,
        description="focus the query image on a class: an ImageNet label or a word such as cat",
    ),
]


def add_focus_routes(
    app: FastAPI, holder: VersionHolder, models: QueryModels, config: ServeConfig
) -> None:
    """The process' ``FocusService`` (``app.state.focus``) and ``GET /api/focus``."""
    del models  # the index's image encoder comes with each bundle
    service = FocusService(glove=config.glove)
    app.state.focus = service

    @app.get(
        "/api/focus",
        tags=["search"],
        summary="What a focus word resolves to (ImageNet labels)",
        responses={400: {"description": "No label matches, or this index cannot focus"}},
    )
    def resolve_focus(
        focus: Annotated[str, Query(min_length=1, max_length=MAX_FOCUS_CHARS)],
    ) -> dict:
        reason = service.off_reason(holder.current.images)
        if reason is not None:
            raise HTTPException(400, reason)
        return service.target(focus).to_json()  # QueryError 400 -> the app's handler


def similar_page(
    app: FastAPI, bundle: IndexBundle, image_id: str, focus: str, page: PageRequest
) -> dict:
    return focused_similar_page(
        app.state.focus, bundle, image_id, focus, page, app.state.config.query_decoder()
    )


def image_page(app: FastAPI, bundle: IndexBundle, data: bytes, focus: str, page: PageRequest,
               config: ServeConfig) -> dict:  # fmt: skip
    return focused_image_page(app.state.focus, bundle, data, focus, page, config.query_decoder())


async def read_page_upload(request: Request, config: ServeConfig) -> tuple[bytes, str, str]:
    """The search page's upload: the image (as ``uploads.read_upload`` checks it), the form's
    ``focus`` field ("" when absent; a raw-body upload may pass ``?focus=``) and the button
    pressed (``action``: "describe", else "")."""
    header = request.headers.get("content-type", "")
    try:
        data, parts = await uploads.read_upload_form(
            header, request.stream(), config.max_upload_bytes
        )
    except uploads.UploadError as exc:
        raise HTTPException(exc.status, exc.message) from exc
    focus, action = request.query_params.get("focus", ""), ""
    for part in parts:
        if part.name == "focus" and part.filename is None:
            focus = part.data.decode("utf-8", "replace")
        elif part.name == "action" and part.filename is None:
            action = part.data.decode("utf-8", "replace").strip()
    return data, focus.strip()[:MAX_FOCUS_CHARS], action
