"""``POST /api/search/batch``: up to ``MAX_BATCH_QUERIES`` text or image-id queries at once."""

# No `from __future__ import annotations`: FastAPI must see the real types of the request
# models defined inside add_batch_routes (their bounds come from the config).

from typing import Annotated

from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ranking.filter_syntax import MAX_FILTER_CHARS
from serving.batch_search import MAX_BATCH_QUERIES, BatchItem, batch_query
from serving.config import ServeConfig
from serving.paging import PageRequest
from serving.reloader import VersionHolder
from serving.responses import json_response
from serving.row_filters import FILTER_HELP
from serving.state import QueryModels

_MAX_ID_CHARS = 256


def add_batch_routes(
    app: FastAPI, holder: VersionHolder, models: QueryModels, config: ServeConfig
) -> None:
    class Item(BaseModel):
        """One query: ``q`` (text) or ``image_id`` (more like an indexed image)."""

        model_config = ConfigDict(extra="forbid")
        q: Annotated[str, Field(min_length=1, max_length=config.max_query_chars)] | None = None
        image_id: Annotated[str, Field(min_length=1, max_length=_MAX_ID_CHARS)] | None = None

        @model_validator(mode="after")
        def _one_kind(self):
            if (self.q is None) == (self.image_id is None):
                raise ValueError("each query needs exactly one of 'q' and 'image_id'")
            return self

    class BatchRequest(BaseModel):
        """Queries answered in order, each page cut by the same k, offset and filter."""

        model_config = ConfigDict(extra="forbid")
        queries: Annotated[list[Item], Field(min_length=1, max_length=MAX_BATCH_QUERIES)]
        k: Annotated[int, Field(ge=1, le=config.max_k)] = config.default_k
        offset: Annotated[int, Field(ge=0, le=config.max_offset)] = 0
        min_score: Annotated[float, Field(ge=-1e6, le=1e6)] | None = None
        filter: (
            Annotated[str, Field(max_length=MAX_FILTER_CHARS, description=FILTER_HELP)] | None
        ) = None
        dedupe: bool = True

    @app.post(
        "/api/search/batch",
        tags=["search"],
        summary="Batch of text and image-id queries",
        responses={
            400: {"description": "Empty batch, a bad filter, or a q past the length limit"},
            422: {"description": f"Malformed body, or more than {MAX_BATCH_QUERIES} queries"},
        },
        description=(
            f"Up to {MAX_BATCH_QUERIES} queries, each {{'q': text}} or {{'image_id': id}}; the "
            "answer's 'results' holds one search answer per query, in order (as /api/search "
            "and /api/similar give them, without per-word contributions in 'why'), or "
            "{'error': {'status', 'detail'}} for a query that cannot be answered. All text "
            "queries are embedded together and every query vector searched in one ScaNN batch."
        ),
    )
    def search_batch(body: BatchRequest) -> Response:
        bundle = holder.current
        page = PageRequest(body.k, body.offset, body.min_score, body.filter, body.dedupe)
        items = [BatchItem(item.q, item.image_id) for item in body.queries]
        answers = batch_query(bundle, items, page, models.text_off_reason)
        return json_response({"version": bundle.version, "results": answers})
