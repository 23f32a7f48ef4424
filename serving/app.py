"""The search server: JSON API, search page, health, metrics and hot reload in one FastAPI app.

``create_app(config)`` loads the models and the current index version before it returns (a bad
index or model is a start-up error, not a first-request error) and, for a publish root, starts a
``Reloader`` with the app's lifespan -- unless it is a worker of ``serving.supervisor``, which
serves the one version it was started on and shows the supervisor's reload status. Handlers
are plain ``def`` functions: FastAPI runs them in its thread pool, and ScaNN/NumPy release the
GIL while they search.
"""

# No `from __future__ import annotations`: FastAPI must see the real Annotated query types of
# handlers defined inside create_app (their bounds come from the config).

import contextlib
import logging
import time
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from encoders.decode_pool import DecodeBusy
from ranking.filter_syntax import MAX_FILTER_CHARS
from serving import event_routes, queries, uploads
from serving.batch_routes import add_batch_routes
from serving.config import UPLOAD_CONTENT_TYPES, ServeConfig
from serving.describe import Describers, describe_upload
from serving.docs_routes import add_docs_routes
from serving.explain_routes import add_explain_routes
from serving.focus_routes import (
    Focus,
    add_focus_routes,
    image_page,
    read_page_upload,
    similar_page,
)
from serving.http_hygiene import (
    ApiKeyAuth,
    BodyBudget,
    HeadAsGet,
    SecurityHeaders,
    new_nonce,
    page_csp,
    read_api_keys,
)
from serving.hybrid_search import DEFAULT_HYBRID_WEIGHT
from serving.metrics import ServerMetrics
from serving.mixed_routes import add_mixed_routes
from serving.paging import PageRequest
from serving.redaction import public_text, public_uri
from serving.reloader import (
    FirstVersion,
    Reloader,
    ReloadView,
    VersionHolder,
    load_first_version,
)
from serving.responses import json_response
from serving.row_filters import FILTER_HELP
from serving.state import IndexBundle, QueryModels, load_bundle
from serving.text_batcher import BatchingTextEncoder
from serving.thumbnails import ThumbnailCache, ThumbnailError
from serving.word_routes import add_word_routes, word_suggestions

logger = logging.getLogger(__name__)

# The image-query body in the OpenAPI schema (read by hand, so FastAPI cannot infer it).
_BINARY_BODY = {t: {"schema": {"type": "string", "format": "binary"}} for t in UPLOAD_CONTENT_TYPES}
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
# The error answers each route may give ({"detail": "..."}), so the OpenAPI schema tells clients
# (and schema fuzzers) every status they can get, not only 200 and FastAPI's own 422.
_ERRORS = {
    400: "Bad request (empty query or upload, malformed form, a query past the length limit)",
    404: "No such image in the serving index version",
    413: "Upload too large",
    415: "Upload is not an image type",
    422: "Invalid parameter, or the image was rejected (bomb, too small, not an image)",
    429: "Every image decoder is busy: retry after Retry-After seconds",
    503: "Not available on this server (text search without a model, no index loaded)",
}


def _errors(*codes: int) -> dict:
    return {code: {"description": _ERRORS[code]} for code in codes}


CLIENT_CLOSED = 499


class _MetricsMiddleware:
    """Counts and times every request by its route template (pure ASGI: no per-request task)."""

    def __init__(self, app, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_and_record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        except ClientDisconnect:
            # The client went away mid-request (an aborted upload): nobody to answer and nothing
            # broken on this side, so one log line and 499 (nginx's "client closed request"),
            # never a 5xx that anyone could fire alerts with.
            status["code"] = CLIENT_CLOSED
            logger.info("client closed %s %s before its request was read", scope["method"],
                        scope.get("path", ""))  # fmt: skip
        finally:
            route = scope.get("route")
            # Unmatched paths share one label, so scanners cannot blow up the label set.
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.latency.labels(route=name).observe(time.perf_counter() - started)
            self.metrics.requests.labels(route=name, status=str(status["code"])).inc()


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """Starlette's answer to an HTTPException, its detail first made fit for the public
    (``serving.redaction``: no local paths, URL credentials or heap addresses)."""
    if isinstance(exc.detail, str):
        detail = public_text(exc.detail, request.app.state.config.expose_uris)
        exc = StarletteHTTPException(exc.status_code, detail, headers=exc.headers)
    return await http_exception_handler(request, exc)


async def _query_error(request: Request, exc: queries.QueryError) -> Response:
    """A refused query (``serving.queries.QueryError``) answers like any HTTPException."""
    return await _http_error(request, HTTPException(exc.status, exc.message))


async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's 422 for an invalid parameter -- except a query text past the server's length
    limit, which is a 400 naming the limit: the request is well-formed but asks for more than
    this server does (``ServeConfig.max_query_chars``; the schema shows it as the parameter's
    maxLength)."""
    errors = exc.errors()
    if errors and all(
        error.get("type") == "string_too_long" and tuple(error.get("loc", ()))[-1:] == ("q",)
        for error in errors
    ):
        limit = errors[0].get("ctx", {}).get("max_length")
        detail = f"the query is longer than {limit} characters, this server's limit"
        return JSONResponse({"detail": detail}, status_code=400)
    return await request_validation_exception_handler(request, exc)


async def _decode_busy(request: Request, exc: DecodeBusy) -> Response:
    """Every decode worker stayed busy for the request's whole wait: 429, retry later."""
    headers = {"Retry-After": str(exc.retry_after_s)}
    return await http_exception_handler(request, HTTPException(429, str(exc), headers=headers))


async def _read_upload(request: Request, config: ServeConfig) -> bytes:
    """The uploaded image (``serving.uploads``; a Content-Length past any upload form was
    refused before the route, by ``BodyBudget``)."""
    try:
        return await uploads.read_upload(
            request.headers.get("content-type", ""), request.stream(), config.max_upload_bytes
        )
    except uploads.UploadError as exc:
        raise HTTPException(exc.status, exc.message) from exc


def create_app(
    config: ServeConfig,
    models: QueryModels | None = None,
    pinned: tuple[str, str] | None = None,
    reload_view: ReloadView | None = None,
) -> FastAPI:
    """Load the models and the index ``config.index`` names, and build the app around them.

    ``pinned`` (index folder, version) and ``reload_view``: a worker of ``serving.supervisor``,
    which serves that one version of the publish root ``config.index`` and shows the
    supervisor's reload status; the supervisor does the reloading (in another worker).
    """
    if models is None:
        models = QueryModels.load(config.models_dir, config.joint_model, config.text_batching)
    fused_models = config.models_dir if config.fused else None

    def load(index_dir: str, version: str | None) -> IndexBundle:
        return load_bundle(
            index_dir,
            models,
            version,
            config.verify,
            fused_models,
            config.page_depth,
            config.image_search,
            config.hamming_rerank,
            config.expose_uris,
            config.vector_precision,
        )

    if pinned is None:
        # The pointer's version, or the newest one servers have served when that cannot load.
        first = load_first_version(config.index, load)
    else:
        first = FirstVersion(load(*pinned), publish_root=False)
    bundle = first.bundle
    holder = VersionHolder(bundle)
    metrics = ServerMetrics()
    if isinstance(models.text_encoder, BatchingTextEncoder):
        metrics.follow_text_batching(models.text_encoder.stats)
    metrics.serving(bundle.version, len(bundle.images))
    thumbnails = ThumbnailCache(
        config.thumbnail_max_side, config.thumbnail_cache_entries, make=config.thumbnailer()
    )

    def on_reload(result: str) -> None:
        metrics.reloads.labels(result=result).inc()
        if result == "swapped":
            metrics.serving(holder.current.version, len(holder.current.images))

    # Only a publish root has a pointer to follow; a plain index folder is served as is.
    reloader: Reloader | ReloadView | None = reload_view
    if reload_view is not None:
        reload_view.subscribe(on_reload)
        metrics.follow(reload_view)
    elif first.publish_root:
        reloader = Reloader(config.index, holder, load, config.poll_interval_s, on_reload,
                            first, config.verify)  # fmt: skip
        reloader.record_served(bundle.version)
        metrics.follow(reloader)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        if isinstance(reloader, Reloader):
            reloader.start()
        event_routes.start_events(_app)
        yield
        event_routes.stop_events(_app)  # writes every accepted event before the process ends
        if isinstance(reloader, Reloader):
            reloader.stop()

    app = FastAPI(
        title="imgsearch",
        summary="Semantic image search over a published index version",
        version="1",
        lifespan=lifespan,
        # Starlette's slash redirect builds its Location from the request's Host header, so a
        # forged Host is echoed back as a redirect target: an unknown path is a 404 instead.
        redirect_slashes=False,
        # FastAPI's pages load their scripts from a CDN: /docs is served locally instead
        # (serving.docs_routes), ReDoc not at all.
        docs_url=None,
        redoc_url=None,
    )
    add_docs_routes(app)
    app.state.config, app.state.holder, app.state.reloader = config, holder, reloader
    app.state.metrics, app.state.models, app.state.thumbnails = metrics, models, thumbnails
    limits = config.connection_limits
    app.add_middleware(BodyBudget, max_body_bytes=config.max_body_bytes,
                       max_buffered_bytes=limits.max_buffered_bytes)  # fmt: skip
    if config.api_key_file:  # before any body is buffered; its 401s counted in /metrics
        app.add_middleware(ApiKeyAuth, keys=read_api_keys(config.api_key_file))
    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    # Outermost (added last): every answer, errors and 404s included, carries the headers.
    app.add_middleware(HeadAsGet)
    app.add_middleware(SecurityHeaders)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(queries.QueryError, _query_error)
    app.add_exception_handler(DecodeBusy, _decode_busy)
    app.add_exception_handler(RequestValidationError, _invalid_request)

    K = Annotated[int, Query(ge=1, le=config.max_k, description="results per page")]
    Offset = Annotated[int, Query(ge=0, le=config.max_offset, description="results to skip")]
    MinScore = Annotated[
        float | None,
        Query(ge=-1e6, le=1e6, description="leave out results scoring below this (the "
              "answer's 'score': cosine, or the fused score with mode=fused)"),
    ]  # fmt: skip
    Filter = Annotated[
        str | None,
        Query(max_length=MAX_FILTER_CHARS, description=FILTER_HELP),
    ]
    Dedupe = Annotated[
        bool, Query(description="one result per near-duplicate group (false: show them all)")
    ]

    def page_request(
        k: K = config.default_k,
        offset: Offset = 0,
        min_score: MinScore = None,
        filter: Filter = None,
        dedupe: Dedupe = True,
    ) -> PageRequest:
        """The page parameters every search route takes, as one ``PageRequest``."""
        return PageRequest(k, offset, min_score, filter, dedupe)

    Page = Annotated[PageRequest, Depends(page_request)]

    # Image ids may hold "/" (a manifest's own ids): links quote it, the server decodes it, so
    # id routes take the rest of the path ({image_id:path}). /api/images/{id}/words is added
    # first, so it is tried before /api/images/{id} (an id ending in "/words" is the one
    # ambiguity).
    add_word_routes(app, holder, models, config)

    @app.get("/api/search", tags=["search"], summary="Text query", responses=_errors(400, 422, 503))
    def search_text(
        q: Annotated[str, Query(min_length=1, max_length=config.max_query_chars)],
        page: Page,
        mode: Annotated[
            Literal["joint", "fused", "hybrid"] | None,
            Query(
                description="ranking: the joint model; fused (the default with --fused); "
                "or hybrid: BM25 over each image's caption, tags and metadata text fused "
                "with the joint cosine, 'why' giving both parts"
            ),
        ] = None,
        hybrid_weight: Annotated[
            float | None,
            Query(
                ge=0.0,
                le=1.0,
                description="mode=hybrid: the keyword share of the score "
                f"(0: the vector alone, 1: BM25 alone; default {DEFAULT_HYBRID_WEIGHT})",
            ),
        ] = None,
    ) -> Response:
        current = holder.current
        return json_response(
            queries.text_query(current, q, page, models.text_off_reason, mode, hybrid_weight)
        )

    @app.post(
        "/api/search/image",
        tags=["search"],
        summary="Image query",
        responses=_errors(400, 413, 415, 422, 429, 503),
        description=(
            "Send the image as the raw body (Content-Type image/jpeg, image/png, ...) or as the "
            f"'file' part of a multipart form; at most {config.max_upload_bytes} bytes."
        ),
        openapi_extra={"requestBody": {"content": _BINARY_BODY}},
    )
    async def search_image(request: Request, page: Page, focus: Focus = None):
        data = await _read_upload(request, config)
        current = holder.current
        if focus:  # serving.focus_routes: pooled towards a class before the search
            result = await run_in_threadpool(image_page, app, current, data, focus, page, config)
            return json_response(result)
        # Decoding and encoding are CPU work: off the event loop, like the sync handlers.
        result = await run_in_threadpool(
            queries.image_query, current, data, page, config.query_decoder()
        )
        return json_response(result)

    describers = app.state.describers = Describers(config.models_dir)

    @app.post(
        "/api/describe",
        tags=["images"],
        summary="Generated captions and tags of an uploaded photo",
        responses=_errors(400, 413, 415, 422, 429, 503),
        description=(
            "The captions (the models directory's captioner, top beams, mean log-probability "
            "per word) and ImageNet tags the index job would give this photo; 'missing' says "
            "why either is absent. The image goes as for /api/search/image."
        ),
        openapi_extra={"requestBody": {"content": _BINARY_BODY}},
    )
    async def describe(request: Request):
        data = await _read_upload(request, config)
        current = holder.current
        result = await run_in_threadpool(
            describe_upload, current, data, describers, config.query_decoder()
        )
        return json_response(result)

    @app.get(
        "/api/similar/{image_id:path}",
        tags=["search"],
        summary="More like an indexed image",
        responses=_errors(400, 404, 422, 503),
    )
    def similar(image_id: str, page: Page, focus: Focus = None) -> Response:
        if focus:  # serving.focus_routes: pooled towards a class before the search
            return json_response(similar_page(app, holder.current, image_id, focus, page))
        return json_response(queries.similar_query(holder.current, image_id, page))

    @app.get(
        "/api/images/{image_id:path}",
        tags=["images"],
        summary="Details of an indexed image",
        responses=_errors(404),
    )
    def details(image_id: str) -> Response:
        return json_response(queries.image_details(holder.current, image_id))

    @app.get(
        "/thumbnails/{image_id:path}",
        tags=["images"],
        summary="Thumbnail of an indexed image (JPEG); ids only, never paths",
        responses=_errors(404),
        response_class=Response,
    )
    def thumbnail(image_id: str) -> Response:
        uri = holder.current.details.uri_of(image_id)
        if uri is None:
            raise HTTPException(404, f"image {image_id!r} is not in the serving index version")
        hits_before = thumbnails.hits
        try:
            data = thumbnails.get(uri)
        except ThumbnailError as exc:
            raise HTTPException(404, str(exc)) from exc
        cached = thumbnails.hits > hits_before
        metrics.thumbnail_cache.labels(result="hit" if cached else "miss").inc()
        return Response(
            data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"}
        )

    # Why text search is off (a models folder that failed to load), as answers may show it.
    text_off = models.text_off_reason and public_text(models.text_off_reason, config.expose_uris)

    # The probes are coroutines: answered on the event loop, they never queue behind the worker
    # threads that decode, encode and search (a busy server still says it is alive and ready).
    @app.get("/health", tags=["ops"], summary="Liveness and what is being served")
    async def health() -> dict:
        expose = config.expose_uris
        serving = holder.current.summary()
        serving["index_dir"] = public_uri(serving["index_dir"], expose)
        reload = reloader.status().to_json() if reloader is not None else None
        if reload is not None:
            reload["watching"] = public_uri(reload["watching"], expose)
            reload["refused"] = {
                v: public_text(why, expose) for v, why in reload["refused"].items()
            }
            for key in ("pointer_error", "marker_error"):
                reload[key] = public_text(reload[key], expose) if reload[key] else None
        return {
            "status": "ok",
            "serving": serving,
            "text_search": {"enabled": holder.current.text is not None, "reason": text_off},
            "reload": reload,
        }

    @app.get(
        "/ready",
        tags=["ops"],
        summary="Readiness: an index version is loaded",
        responses=_errors(503),
    )
    async def ready() -> JSONResponse:
        current = holder.current
        answer = {"ready": len(current.images) > 0, "version": current.version}
        if reloader is not None:
            status = reloader.status()
            answer["published"] = status.published
            behind = reloader.behind_s()
            if behind is not None and behind > config.ready_grace_s:
                # Serving an old version long after a new one was published (refused, or a
                # pointer that cannot be read): not ready, so it shows instead of hiding.
                why = status.refused.get(status.published or "") or status.pointer_error
                answer["ready"] = False
                answer["reason"] = public_text(
                    f"serving {current.version}, {status.published or 'the pointer'} "
                    f"published {behind:.0f} s ago is not served: {why}",
                    config.expose_uris,
                )[:500]
        return JSONResponse(answer, status_code=200 if answer["ready"] else 503)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    event_routes.add_event_routes(app, holder, config)
    add_mixed_routes(app, holder, models, config)
    add_batch_routes(app, holder, models, config)
    add_explain_routes(app, holder, models, config)
    add_focus_routes(app, holder, models, config)
    _add_page_routes(app, config, holder, models, text_off)
    return app


def _add_page_routes(
    app: FastAPI,
    config: ServeConfig,
    holder: VersionHolder,
    models: QueryModels,
    text_off: str | None,
) -> None:
    """The HTML search page: server-rendered results, so it works without JavaScript.
    ``text_off``: why text search is off, as the page may show it."""

    def render(request: Request, bundle: IndexBundle, **context) -> HTMLResponse:
        status = context.pop("status", 200)
        if context.get("error"):
            context["error"] = public_text(context["error"], config.expose_uris)
        nonce = new_nonce()  # the page's inline script and styles carry it (page_csp)
        return TEMPLATES.TemplateResponse(
            request,
            "search.html",
            {
                "csp_nonce": nonce,
                "version": bundle.version,
                "images": len(bundle.images),
                "hamming": bundle.images.hamming,
                "hamming_rerank": bundle.images.hamming_rerank if bundle.images.hamming else 0,
                "text_enabled": bundle.text is not None,
                "text_off_reason": text_off,
                "k": config.default_k,
                "max_upload_bytes": config.max_upload_bytes,
                "accept": ",".join(UPLOAD_CONTENT_TYPES),
                "q": "",
                "filter": "",
                "dedupe": True,
                "mode": "",
                "filter_fields": bundle.filters.fields() if bundle.filters else {},
                "title": None,
                "result": None,
                "reference": None,
                "description": None,
                "error": None,
                "suggestions": word_suggestions(request.app, context.get("q", "")),
                "events_on": config.events_dir is not None,
                **context,
            },
            status_code=status,
            headers={"Content-Security-Policy": page_csp(nonce)},
        )

    app.state.render_page = render  # for page routes added elsewhere (serving.mixed_routes)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(
        request: Request,
        q: Annotated[str, Query(max_length=config.max_query_chars)] = "",
        similar: Annotated[str, Query(max_length=256)] = "",
        offset: Annotated[int, Query(ge=0, le=config.max_offset)] = 0,
        filter: Annotated[str, Query(max_length=MAX_FILTER_CHARS)] = "",
        dedupe: bool = True,
        mode: Literal["", "hybrid"] = "",
    ) -> HTMLResponse:
        bundle = holder.current
        page = PageRequest(config.default_k, offset, None, filter or None, dedupe)
        form = {"q": q, "filter": filter, "dedupe": dedupe, "mode": mode}
        try:
            if similar:
                result = queries.similar_query(bundle, similar, page)
                reference = queries.image_details(bundle, similar)
                return render(request, bundle, result=result, reference=reference,
                              title="More like this", **form)  # fmt: skip
            if q.strip():
                result = queries.text_query(bundle, q, page, models.text_off_reason, mode or None)
                return render(request, bundle, result=result, title=f"Results for “{q}”", **form)
        except queries.QueryError as exc:
            return render(request, bundle, error=exc.message, status=exc.status, **form)
        return render(request, bundle, **form)

    @app.post("/upload", response_class=HTMLResponse, include_in_schema=False)
    async def upload_page(request: Request) -> HTMLResponse:
        bundle = holder.current
        try:
            data, focus, action = await read_page_upload(request, config)  # and form fields
        except HTTPException as exc:
            return render(request, bundle, error=str(exc.detail), status=exc.status_code)
        if action == "describe":  # the Describe button: captions and tags, no search
            try:
                description = await run_in_threadpool(
                    describe_upload, bundle, data, app.state.describers, config.query_decoder()
                )
            except queries.QueryError as exc:
                return render(request, bundle, error=exc.message, status=exc.status)
            return render(request, bundle, description=description,
                          title="What your upload shows")  # fmt: skip
        # Decoding and encoding are CPU work: off the event loop, like the sync handlers.
        try:
            page = PageRequest(config.default_k)
            if focus:
                result = await run_in_threadpool(
                    image_page, request.app, bundle, data, focus, page, config
                )
            else:
                result = await run_in_threadpool(
                    queries.image_query, bundle, data, page, config.query_decoder()
                )
        except queries.QueryError as exc:
            return render(request, bundle, error=exc.message, status=exc.status, focus=focus)
        title = f"Images like your upload, focused on “{focus}”" if focus else None
        return render(request, bundle, result=result, title=title or "Images like your upload",
                      focus=focus)  # fmt: skip
